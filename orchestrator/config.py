"""The experiment config: typed, loaded from YAML, overridable with `--set key=value`.

An invalid config is refused before any work starts, with the field and the
allowed values in the message (`ConfigError`, exit code 2 from the CLI).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCORERS = ("wli", "block_influence", "angular", "loss_delta", "last_n", "random")  # prune.importance.SCORERS' names
DECODE_PATHS = ("auto", "compiled", "static", "eager", "generate")  # generation.decode's paths
STRATEGIES = ("lowest", "contiguous", "iterative")  # prune.select's strategies


class ConfigError(ValueError):
    """A config the user has to change; the message says what to change."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class MiniWorldConfig(Section):
    seed: int = 0
    n_speakers: int = Field(8, ge=1)
    n_timbres: int = Field(4, ge=1)
    max_run: int = Field(3, ge=1)
    n_sentences: int = Field(6000, ge=10)
    dev_sentences: int = Field(200, ge=2)
    test_sentences: int = Field(1500, ge=2)


class TeacherConfig(Section):
    """The teacher. Real worlds: `path` only (a hub id or a directory). The mini world: a
    LlamaForCausalLM in LLaSA's token layout, trained by `train-teacher` with the settings below."""

    path: str = "orchestrator/assets/mini-teacher"
    layers: int = Field(16, ge=2)
    hidden: int = Field(96, ge=8)
    heads: int = Field(4, ge=1)
    kv_heads: int = Field(2, ge=1)
    mlp: int = Field(288, ge=8)
    steps: int = Field(1600, ge=1)
    batch_size: int = Field(24, ge=1)
    lr: float = Field(3e-3, gt=0)
    warmup: int = Field(100, ge=0)
    seed: int = 0


class RealWorldConfig(Section):
    """LLaSA (with X-Codec2) or CosyVoice 2: where the models and the data are. Each entry is
    a model-hub id or a local directory; `world.teacher.path` names the TTS model itself."""

    codec: str = Field(
        "hf-audio/xcodec2",
        description="llasa: the X-Codec2 checkpoint; cosyvoice2: the "
        "CosyVoice2-0.5B directory whose flow and HiFT models turn tokens into audio",
    )
    asr: str = Field("openai/whisper-large-v3", description="any Whisper checkpoint")
    asr_batch_size: int = Field(16, ge=1)
    verifier: str = Field("microsoft/wavlm-base-plus-sv", description="any WavLMForXVector checkpoint")
    language: Literal["en", "zh"] = "en"
    prompt_join: str = Field(
        "",
        description="llasa: put between prompt text and target text; the model card "
        "joins them with nothing (a space here departs from the card)",
    )
    dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"
    train_manifest: str | None = Field(None, description="JSONL, one utterance a line: audio, text, speaker")
    shards: str = Field(
        "data/shards",
        description="speech-token shards made from train_manifest by `prun-tts shards`, read by every trial",
    )
    shard_size: int = Field(2000, ge=1, description="utterances per shard file")
    encode_actors: int = Field(1, ge=1, description="Ray Data actors encoding audio (one GPU each with train.use_gpu)")
    teacher_hours: float = Field(
        250_000, gt=0, description="hours of speech the teacher was trained on (LLaSA: 250k), for distill.data_fraction"
    )
    dev_list: str | None = Field(
        None, description="Seed-TTS-eval meta.lst for scoring and dev (name|prompt text|prompt audio|target text)"
    )
    test_list: str | None = Field(None, description="Seed-TTS-eval meta.lst for the final evaluation")


class WorldConfig(Section):
    name: Literal["mini", "llasa", "cosyvoice2"] = "mini"
    mini: MiniWorldConfig = MiniWorldConfig()
    teacher: TeacherConfig = TeacherConfig()
    real: RealWorldConfig = RealWorldConfig()


class ScoreConfig(Section):
    scorers: list[Literal[SCORERS]] = Field(list(SCORERS), min_length=1)  # type: ignore[valid-type]
    n_items: int = Field(64, ge=1, description="held-out (dev) items synthesized per WLI evaluation")
    n_pairs: int = Field(64, ge=1, description="calibration pairs for hidden-state and loss scorers")
    batch_size: int = Field(32, ge=1)
    seed: int = 0


class PruneConfig(Section):
    """Which students to make. One value each for one student; lists make a sweep (every
    ratio x scorer x strategy), run by `prun-tts sweep` on Ray or by `prun-tts demo` in one process."""

    ratio: list[float] = Field([0.25, 0.5], min_length=1, description="fraction(s) of decoder layers to remove")
    scorer: list[Literal[SCORERS + ("best",)]] = Field(  # type: ignore[valid-type]
        ["best"], min_length=1, description="best: the score.scorers choice whose pruned-only dev WER is lowest"
    )
    strategy: list[Literal[STRATEGIES]] = Field(["lowest"], min_length=1)  # type: ignore[valid-type]

    @field_validator("ratio", "scorer", "strategy", mode="before")
    @classmethod
    def _one_or_many(cls, v):
        return v if isinstance(v, list) else [v]  # `ratio: 0.5` is `ratio: [0.5]`

    @model_validator(mode="after")
    def _check(self) -> PruneConfig:
        if any(not 0 < r < 1 for r in self.ratio):
            raise ValueError(f"prune.ratio: {self.ratio}; every ratio must be between 0 and 1 (exclusive)")
        return self


class LossWeights(Section):
    kl: float = Field(1.0, ge=0)
    latent: float = Field(0.1, ge=0)
    attention: float = Field(0.0, ge=0)
    embedding: float = Field(0.0, ge=0)
    ce: float = Field(0.5, ge=0)

    @model_validator(mode="after")
    def _check(self) -> LossWeights:
        if not any(self.model_dump().values()):
            raise ValueError("every distillation weight is 0: give at least one term a positive weight, e.g. kl: 1.0")
        return self


class DistillConfig(Section):
    data_fraction: float = Field(
        0.05, gt=0, le=1, description="distinct student training tokens / teacher training tokens"
    )
    data_hours: float | None = Field(
        None,
        gt=0,
        description="a budget in hours of speech instead (prompt and target "
        "audio of the pairs); overrides data_fraction",
    )
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(8, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-3, gt=0)
    warmup: int = Field(10, ge=0)
    clip: float = Field(1.0, gt=0)
    temperature: float = Field(2.0, gt=0)
    latent_loss: Literal["mse", "cosine"] = "mse"
    kl_kind: Literal["forward", "reverse", "jsd"] = Field(
        "forward", description="forward KL(T||S), reverse KL(S||T) or GKD's generalised JSD"
    )
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="the JSD's mixture weight of the teacher")
    weights: LossWeights = LossWeights()
    adaptive: bool = False
    ema: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="decay of an exponential moving average of the student's "
        "weights, used as the final student (0: off)",
    )
    on_policy: float = Field(0.5, ge=0, le=1, description="share of steps on the student's own continuations")
    rollout_temperature: float = Field(1.0, gt=0, description="sampling temperature of those continuations")
    extra_texts: int = Field(
        0,
        ge=0,
        description="texts (transcripts only, no speech) of training pairs beyond the budget: on on-policy steps "
        "the student speaks them in the budgeted prompts' voices and the teacher grades it (0: the pairs' own texts)",
    )
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    teacher_cache: bool = Field(
        False,
        description="in sweeps: compute the teacher's logits and hidden states on the "
        "training pairs once, shared by every trial (on-policy steps still run the teacher)",
    )
    seed: int = 0


class EvalConfig(Section):
    n_items: int = Field(1500, ge=1)
    batch_size: int = Field(200, ge=1)
    temperature: float = Field(0.8, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    max_new_tokens: int = Field(200, ge=1, description="most speech tokens per item (also caps a family's own bound)")
    decode: Literal[DECODE_PATHS] = Field(
        "auto",
        description="auto (compiled on a GPU, static cache on a CPU) | compiled | "  # type: ignore[valid-type]
        "static | eager | generate (transformers' generate: the reference, plain samplers)",
    )
    speech_head: bool = Field(True, description="logits only for speech and stop ids (exact: sampling over them)")
    passes: int = Field(
        3,
        ge=1,
        description="synthesize the list this many times (other random draws each) and "
        "average: a 200-item WER moves by about half a point between draws",
    )
    seed: int = 0


class TrainConfig(Section):
    """Ray Train: the distributed distillation of each sweep trial."""

    num_workers: int = Field(2, ge=1)
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="ddp: every worker holds the whole student; fsdp: each holds 1/num_workers of its "
        "weights, gradients and optimizer state (FSDP2, on GPUs and CPUs), for students too big for one device",
    )
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, ge=0, description="used when use_gpu")
    driver_cpus: float = Field(0.5, gt=0, description="the trial driver process that starts the Train run")
    data_cpus: float = Field(
        0.25,
        gt=0,
        description="CPUs of the Ray Data tasks that read a trial's training pairs for its workers (one at a "
        "time a worker, sharing these; Ray Data stalls when the Train workers hold every CPU)",
    )
    report_every: int = Field(20, ge=1, description="optimizer steps between reports (metrics, checkpoint)")
    max_failures: int = Field(
        2, ge=0, description="restarts of a trial's Train run from its last checkpoint after a worker dies"
    )


class SweepConfig(Section):
    """Ray Tune: which students to try. `space` picks what a trial varies:
    `selected` (prune.ratio x prune.scorer x prune.strategy), `layer_sets` (explicit sets to
    drop, "2-3-4-7"), or `blocks` (a contiguous block: start and size, the size from prune.ratio).
    With search=optuna, prune.ratio's smallest and largest bound every depth in between."""

    name: str = Field("mini-sweep", pattern=r"^[A-Za-z0-9._-]+$")
    storage_path: str = "runs/sweeps"
    space: Literal["selected", "layer_sets", "blocks"] = "selected"
    search: Literal["grid", "optuna"] = "grid"
    layer_sets: list[str] = []
    num_samples: int = Field(1, ge=1, description="optuna: trials to run; grid: repeats of the grid")
    objectives: list[Literal["wer", "n_layers", "sim", "rtf"]] = ["wer", "n_layers"]
    scheduler: Literal["none", "asha"] = "none"
    asha_metric: str = "loss"
    asha_grace: int = Field(2, ge=1, description="reports before ASHA may stop a trial")
    max_concurrent_trials: int = Field(0, ge=0, description="0: as many as the cluster's resources hold")
    local_cpus: int = Field(8, ge=1, description="logical CPUs of the private Ray started when no address is given")
    seed: int = 0

    @model_validator(mode="before")
    @classmethod
    def _moved(cls, data):
        moved = [k for k in ("ratio", "scorer", "strategy") if isinstance(data, dict) and k in data]
        if moved:
            raise ValueError(
                f"sweep.{moved[0]} moved to prune.{moved[0]}: one setting for every command (a list there is "
                f"swept), e.g. prune: {{{moved[0]}: {data[moved[0]]}}}"
            )
        return data

    @model_validator(mode="after")
    def _check(self) -> SweepConfig:
        if "://" in self.storage_path:
            raise ValueError(
                f"sweep.storage_path {self.storage_path!r}: give a directory every node sees (a shared "
                "NFS/EFS mount on a cluster); object-store URIs are not supported yet"
            )
        if self.space == "layer_sets" and not self.layer_sets:
            raise ValueError("sweep.layer_sets is empty; list sets to drop, e.g. ['2-3-4-7', '4-5-6-7']")
        for s in self.layer_sets:
            if not re.fullmatch(r"\d+(-\d+)*", s):
                raise ValueError(f"sweep.layer_sets: {s!r}; write a set as layer indices joined by '-', e.g. '2-3-4-7'")
        if self.search == "optuna" and self.scheduler == "asha":
            raise ValueError(
                "sweep.scheduler=asha stops trials on one metric, which Optuna's multi-objective "
                "search cannot use; use search=grid with asha, or scheduler=none"
            )
        return self


class TrackingConfig(Section):
    uri: str | None = Field(
        None, description="MLflow tracking URI; else $MLFLOW_TRACKING_URI; else a local sqlite file"
    )
    experiment: str = "prun-tts"
    registered_model: str | None = Field(
        "prun-tts-{teacher}",
        description="the Model Registry name the sweep's chosen student is registered under ({teacher}: the "
        "teacher folder's name); null: register nothing",
    )
    curve_points: int = Field(200, ge=10, description="at most about this many points per training curve in MLflow")
    system_metrics: bool = Field(True, description="CPU, memory (and GPU) of each trial's node, in its MLflow run")

    @field_validator("experiment")
    @classmethod
    def _named(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("is empty; name the MLflow experiment the runs go to, e.g. tracking.experiment=prun-tts")
        return v

    @field_validator("registered_model")
    @classmethod
    def _model_name(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "{" in v.replace("{teacher}", "") or "/" in v):
            raise ValueError(
                f"{v!r} is not a registered model name: give a name without '/' whose only placeholder is "
                "{teacher}, e.g. tracking.registered_model=prun-tts-{teacher}, or null to register nothing"
            )
        return v


class ReportConfig(Section):
    """The listening page (`prun-tts report`, also the sweep's and the demo's last stage)."""

    n_items: int = Field(8, ge=1, description="test items in the audio table (the same ones for every system)")
    seed: int = Field(0, description="which test items: a seeded draw, and the bootstrap's seed")
    chosen: str | None = Field(
        None,
        description="the student of the key results, by its dropped layers ('1-2'); default: the smallest "
        "student, the lowest WER among the smallest",
    )
    bootstrap: int = Field(2000, ge=100, description="resamples for the 95% confidence interval of each WER")
    title: str = "Prun-TTS: pruned and distilled speech models"
    links: dict[str, str] = Field(
        default_factory=lambda: {"paper": "https://arxiv.org/abs/2509.20802"},
        description="shown under the title, name -> URL (add `code:` with your repository's address)",
    )


class Config(Section):
    world: WorldConfig = WorldConfig()
    score: ScoreConfig = ScoreConfig()
    prune: PruneConfig = PruneConfig()
    distill: DistillConfig = DistillConfig()
    evaluate: EvalConfig = EvalConfig()
    train: TrainConfig = TrainConfig()
    sweep: SweepConfig = SweepConfig()
    tracking: TrackingConfig = TrackingConfig()
    report: ReportConfig = ReportConfig()
    output_dir: str = "runs/mini"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _check(self) -> Config:
        t = self.world.teacher
        if t.hidden % t.heads or t.heads % t.kv_heads:
            raise ValueError(
                f"world.teacher: hidden ({t.hidden}) must be divisible by heads ({t.heads}) "
                f"and heads by kv_heads ({t.kv_heads})"
            )
        return self


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read YAML (or the defaults), apply `key.sub=value` overrides, validate."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist: pass an existing YAML file with --config")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        except UnicodeDecodeError:
            raise ConfigError(
                f"config file {p} is not a text file (not UTF-8: a checkpoint, an image?); "
                "pass a YAML config with --config"
            ) from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections, not {type(data).__name__}")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: write it as key.sub=value, for example --set prune.ratio=0.5")
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            problem = str(e).splitlines()[0]
            raise ConfigError(
                f"--set {item!r}: the value is not valid YAML ({problem}); quote strings and write lists as [a, b]"
            ) from None
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_explain(e)) from None


def _explain(e: ValidationError) -> str:
    lines = ["invalid config:"]
    for err in e.errors():
        field = ".".join(str(x) for x in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "value_error":  # the validator's own words, without pydantic's "Value error, "
            msg = msg.removeprefix("Value error, ")
        elif err["type"] == "extra_forbidden":
            msg = "unknown field; check the spelling against configs/mini.yaml"
        elif err["type"] == "literal_error":
            allowed = err.get("ctx", {}).get("expected", "")
            msg = f"got {err.get('input')!r}; allowed values: {allowed}"
        lines.append(f"  {field}: {msg}")
    return "\n".join(lines)
