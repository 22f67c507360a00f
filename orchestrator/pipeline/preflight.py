"""Every check of what a user can get wrong, in one place, run before any work starts.

`preflight(cfg, command, ...)` is called once per command (the CLI, and `run_sweep` for
callers that skip the CLI). It reads small files and asks servers whether they answer; it
loads no weights, trains nothing, starts no Ray and writes nothing. Each refusal is a
`ConfigError` whose message says what to change: the CLI prints it and exits 2.

What is checked, by command:
- every command with a config: the teacher's folder (tokenizer, test lists), `--model`, `--out`,
  `output_dir`;
- score, distill, demo, sweep: `prune.ratio` against the teacher's depth;
- distill: one student (`--drop`/`--keep`, or one value of each `prune.*`), a layer set that
  removes something;
- distill, demo, sweep: the data budget (at least one batch and one optimizer step, shards present);
- sweep: the layer sets of its space, the batch split over the Train workers, the storage
  folders, one trial against a private cluster's size, the ASHA metric, the MLflow server or
  sqlite path, the Ray address, and a sweep of the same name made with other settings;
- evaluate --shards, shards: the Ray address.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import urllib.error
import urllib.request
from pathlib import Path

import torch

from orchestrator.builders import build_world, configured_teacher, teacher_layers
from orchestrator.config import Config, ConfigError
from orchestrator.distill.budget import check_batch_split
from orchestrator.files import differing_keys, read_json
from orchestrator.model_checks import check_model_dir, check_output_dir, check_tokenizer_dir, check_vocab_size
from orchestrator.pipeline import stages
from orchestrator.prune.surgery import LayerSetError, parse_label, resolve_keep


@dataclasses.dataclass(frozen=True)
class Checked:
    """What the checks resolved, for the command to use."""

    drop: tuple[int, ...] | None = None  # distill --drop/--keep, as the layers to remove
    tracking_uri: str | None = None  # sweep
    address: str | None = None  # the Ray cluster to join (None: a private local Ray)


def preflight(
    cfg: Config,
    command: str,
    *,
    model: str | None = None,
    out: str | None = None,
    drop: list[int] | None = None,
    keep: list[int] | None = None,
    address: str | None = None,
    address_setting: str = "--address",
    shards: int = 1,
) -> Checked:
    """All the checks of `command` (see the module's docstring); raises ConfigError at the first."""
    check_paths(cfg, command, model, out)
    n_layers = teacher_layers(cfg) if command in ("score", "distill", "demo", "sweep") else 0
    resolved = None
    if command in ("score", "demo", "sweep"):
        stages.drop_counts(cfg, n_layers)  # a ratio that removes no layer, or all of them
    if command == "distill":
        resolved = check_one_student(cfg, n_layers, drop, keep)
    if command == "sweep":
        check_sweep_settings(cfg, n_layers, address)
    if command in ("distill", "demo", "sweep"):
        stages.budget_stage(cfg, stages.teacher_for_checks(cfg))  # a budget under one batch, missing shards
    uri = None
    if command == "sweep":
        uri = tracking_uri(cfg.tracking.uri, cfg.output_dir)
        from_env = not cfg.tracking.uri and os.environ.get("MLFLOW_TRACKING_URI")
        check_tracking(uri, setting="MLFLOW_TRACKING_URI" if from_env else "tracking.uri")
    if command == "shards" and cfg.world.name == "mini":
        raise ConfigError(
            "shards encodes a real world's recordings (world.real.train_manifest); the mini world makes its own "
            "training data: set world.name=llasa or world.name=cosyvoice2"
        )
    if address and (command in ("sweep", "shards") or (command == "evaluate" and shards > 1)):
        check_address(address, setting=address_setting)
    if command == "sweep":
        check_same_sweep(cfg, Path(cfg.sweep.storage_path) / cfg.sweep.name)
    return Checked(resolved, uri, address)


# ---------------------------------------------------------------- paths a user names


def check_paths(cfg: Config, command: str, model: str | None = None, out: str | None = None) -> None:
    """The teacher, --model, --out and output_dir: folders that exist and hold what they should,
    output locations that can be written."""
    if cfg.world.name == "mini":
        teacher = configured_teacher(cfg)
        if teacher.exists():  # a missing mini teacher is trained on first use
            check_model_dir(str(teacher), "world.teacher.path", "mini")
    else:
        check_model_dir(cfg.world.teacher.path, "world.teacher.path", cfg.world.name)
        if cfg.world.name == "llasa":  # the world's family is built from the teacher's tokenizer
            check_tokenizer_dir(cfg.world.teacher.path, "world.teacher.path", "a LLaSA teacher")
        if command != "shards":  # every other command reads the lists it names
            for key in ("dev_list", "test_list"):
                listed = getattr(cfg.world.real, key)
                if listed and not Path(listed).is_file():
                    raise ConfigError(
                        f"world.real.{key}={listed} does not exist; download the Seed-TTS-eval test sets "
                        f"(https://github.com/BytedanceSpeech/seed-tts-eval) and set world.real.{key} to a meta.lst"
                    )
    if model:
        check_model_dir(model, "--model", cfg.world.name)
        if cfg.world.name == "mini":  # the mini family's vocabulary, known without loading anything
            check_vocab_size(model, "--model", build_world(cfg).family.vocab_size, "mini")
    if out:
        check_output_dir(out, "--out")
    check_output_dir(cfg.output_dir, "output_dir")


def check_one_student(cfg: Config, n_layers: int, drop: list[int] | None, keep: list[int] | None):
    """`prun-tts distill` makes one student: the layers it removes (None: prune.* picks them)."""
    keys = len(cfg.prune.ratio) * len(cfg.prune.scorer) * len(cfg.prune.strategy)
    if drop is None and keep is None:
        if keys != 1:
            raise ConfigError(
                f"distill makes one student, and prune.* describes {keys} (ratio {cfg.prune.ratio}, scorer "
                f"{cfg.prune.scorer}, strategy {cfg.prune.strategy}); pass --drop/--keep, or one value "
                "each, e.g. --set prune.ratio=0.5 (`prun-tts demo` makes them all)"
            )
        stages.plan_keys(cfg, n_layers)  # prune.ratio removing no layer (or all)
        return None
    kept = resolve_keep(n_layers, keep, drop)
    removed = tuple(i for i in range(n_layers) if i not in kept)
    if not removed:
        raise ConfigError(
            f"--keep {keep} keeps all {n_layers} layers, so it would remove none: nothing to prune; "
            f"keep fewer, or --drop the layers to remove"
        )
    return removed


# ---------------------------------------------------------------- sweeps


def check_sweep_settings(cfg: Config, n_layers: int, address: str | None) -> None:
    """The sweep's own settings: its layer sets, the batch split, the storage folders, one trial
    against a private cluster, the ASHA metric."""
    if cfg.sweep.space == "layer_sets":
        check_layer_sets(cfg, n_layers)
    check_batch_split(cfg.distill.batch_size, cfg.train.num_workers)
    check_output_dir(cfg.sweep.storage_path, "sweep.storage_path")
    if not address:  # a private local Ray: its size is known before it starts
        concurrent_trials(cfg, {"CPU": cfg.sweep.local_cpus, "GPU": torch.cuda.device_count()})
    check_asha_metric(cfg)


def check_layer_sets(cfg: Config, n_layers: int) -> None:
    for text in cfg.sweep.layer_sets:
        try:
            resolve_keep(n_layers, drop=parse_label(text))
        except (LayerSetError, ValueError) as e:
            raise ConfigError(f"sweep.layer_sets: {text!r}: {e}") from None


def trial_resources(cfg: Config) -> dict[str, float]:
    t = cfg.train
    need = {"CPU": t.driver_cpus + t.data_cpus + t.num_workers * t.cpus_per_worker}
    if t.use_gpu:
        need["GPU"] = t.num_workers * t.gpus_per_worker
    return need


def concurrent_trials(cfg: Config, cluster: dict[str, float]) -> int:
    """How many trials the cluster holds at once; refuses a trial larger than the cluster."""
    need = trial_resources(cfg)
    fits = min(math.floor(cluster.get(r, 0) / amount + 1e-9) for r, amount in need.items() if amount > 0)
    if fits < 1:
        have = ", ".join(f"{cluster.get(r, 0):g} {r}" for r in need)
        want = ", ".join(f"{v:g} {r}" for r, v in need.items())
        fix = (
            "train.gpus_per_worker"
            if "GPU" in need and cluster.get("GPU", 0) < need["GPU"]
            else "train.cpus_per_worker"
        )
        raise ConfigError(
            f"train.num_workers={cfg.train.num_workers}: one trial needs {want} (driver + data reader + workers); "
            f"the cluster has {have}. Lower train.num_workers or {fix}, or add nodes"
        )
    return min(fits, cfg.sweep.max_concurrent_trials) if cfg.sweep.max_concurrent_trials else fits


def check_asha_metric(cfg: Config) -> None:
    """sweep.scheduler=asha stops trials on a metric every training report holds (Tune would fail
    the sweep only once trials report, a typo minutes in)."""
    if cfg.sweep.scheduler != "asha":
        return
    d = cfg.distill
    terms = [k for k, w in d.weights.model_dump().items() if w > 0 and (k != "ce" or d.on_policy == 0)]
    reported = ["loss", *terms, "grad_norm"]  # train_step's per-step metrics (no "ce" on on-policy steps)
    if cfg.sweep.asha_metric not in reported:
        raise ConfigError(
            f"sweep.asha_metric={cfg.sweep.asha_metric!r}: the trials do not report it while they train; ASHA "
            f"(minimising) can stop them on {', '.join(reported)}, e.g. sweep.asha_metric=loss"
        )


def comparable(cfg: Config) -> dict:
    """The settings a resumed sweep must share with the one it resumes (the sweep's config.json)."""
    d = cfg.model_dump()
    d["sweep"].pop("max_concurrent_trials")  # a resumed sweep keeps the concurrency Tune saved with it
    d["sweep"].pop("local_cpus")
    return d


def check_same_sweep(cfg: Config, base: Path) -> None:
    saved = base / "config.json"
    keys = differing_keys(read_json(saved, "the sweep's config"), comparable(cfg)) if saved.is_file() else []
    if keys != []:
        raise ConfigError(
            f"sweep {cfg.sweep.name!r} in {base} was started with a different config (differing: "
            f"{', '.join(keys or ['all of it'])}); resume it with the same settings, or give this one a new sweep.name"
        )


# ---------------------------------------------------------------- servers


def tracking_uri(configured: str | None, default_dir: str | Path = "runs") -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI (MLflow's own convention), else a local sqlite file."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{(Path(default_dir) / 'mlflow.db').resolve()}"


def check_tracking(uri: str, timeout: float = 5.0, setting: str = "tracking.uri") -> None:
    """Refuse an unreachable server or an unwritable sqlite location before any work starts.
    `setting`: where the URI came from (`tracking.uri`, or `MLFLOW_TRACKING_URI` in the environment)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as r:
                if r.status == 200:
                    return
                reason = f"HTTP {r.status}"
        except (urllib.error.URLError, OSError) as e:
            reason = str(getattr(e, "reason", e))
        raise ConfigError(
            f"{setting} {uri}: the MLflow server does not answer ({reason}); start it "
            "(mlflow server --backend-store-uri sqlite:///mlflow.db --port 5000) or point "
            "tracking.uri / MLFLOW_TRACKING_URI at a running one"
        )
    if uri.startswith("sqlite:///"):
        check_output_dir(str(Path(uri.removeprefix("sqlite:///")).parent), f"{setting} {uri}")  # creates nothing
    elif uri.startswith("file:") or "://" not in uri:
        raise ConfigError(
            f"{setting} {uri}: MLflow 3 no longer accepts file stores; use sqlite:///ABS/PATH/mlflow.db "
            f"or an http:// server{' (or unset it)' if setting == 'MLFLOW_TRACKING_URI' else ''}"
        )


def ray_address(given: str | None) -> tuple[str | None, str]:
    """The Ray address to join and the setting it came from: --address, else $RAY_ADDRESS
    (None: a private local Ray)."""
    if given:
        return given, "--address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


def check_address(address: str, timeout: float = 5.0, setting: str = "--address") -> None:
    """Refuse a Ray address nothing answers on, before connecting (ray.init would wait long).
    `setting`: where the address came from (`--address`, `RAY_ADDRESS`), named in the message."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        fix = (
            "leave --address out for a private local Ray"
            if setting == "--address"
            else "unset RAY_ADDRESS (left over in this shell?) for a private local Ray"
        )
        named = f"--address {address}" if setting == "--address" else f"{setting}={address}"
        raise ConfigError(
            f"{named}: no Ray cluster answers there ({e}); give the head node's HOST:PORT (6379 by default), or {fix}"
        ) from None


def check_trial_memory(cfg: Config, estimate, device_bytes: int) -> None:
    """Refuse a trial whose estimated memory per Train worker (`distill.memory`) is more than one
    device holds, with what would make it fit."""
    if estimate.total <= device_bytes:
        return
    t, d = cfg.train, cfg.distill
    fixes = []
    if t.strategy == "ddp":
        fixes.append(
            "train.strategy=fsdp (each worker then holds 1/train.num_workers of the student's weights, "
            "gradients and optimizer state)"
        )
    else:
        fixes.append(f"more train.num_workers (now {t.num_workers}: each holds 1/num_workers of the student's state)")
    fixes.append(
        f"a smaller distill.batch_size (now {d.batch_size}) or a larger distill.grad_accum (now "
        f"{d.grad_accum}): fewer tokens per micro-batch, fewer activations"
    )
    device = "GPU" if t.use_gpu else "worker's share of its node's memory"
    raise ConfigError(
        f"one Train worker would need about {estimate.describe()}; a {device} holds "
        f"{device_bytes / 2**30:.2f} GiB. Try " + "; or ".join(fixes)
    )
