"""CosyVoice 2's LLM (`Qwen2LM` of FunAudioLLM/CosyVoice, shipped as CosyVoice2-0.5B's `llm.pt`)
as a Hugging Face causal LM over one combined token-id space, so the generic core
(input_ids, attention_mask, `.logits`, `.hidden_states`, `generate`) runs it unchanged.

Submodules and state-dict keys are Qwen2LM's: `llm_embedding` (row 0 sos/eos, row 1
task id), `llm.model` (a Qwen2ForCausalLM: `llm.model.model.layers.N...`), `llm_decoder`
(hidden -> S + 3 speech logits) and `speech_embedding` (S + 3 rows), S = speech_token_size
(6561). Combined ids:

    0 .. S-1     speech codes            (speech_embedding rows 0 .. S-1)
    S            end of speech (eos)     (speech_embedding row S)
    S+1, S+2     fill tokens             (speech_embedding rows S+1, S+2; S+1 pads batches)
    S+3          sos                     (llm_embedding row 0)
    S+4          task id                 (llm_embedding row 1)
    S+5+t        Qwen text token t       (llm.model.model.embed_tokens row t)

The logits cover ids 0 .. S+2 only, so `generate` appends speech ids that feed back
through `speech_embedding`, exactly as CosyVoice's own decoding loop does.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationMixin,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import slice_logits_to_keep
from transformers.utils import can_return_tuple
from transformers.utils.deprecation import deprecate_kwarg

from orchestrator.generation.sampling import Sampler
from orchestrator.hub import MissingPiece, load_pretrained, require_file
from orchestrator.world import Sample, speech_codes

SPEECH_TOKEN_SIZE = 6561  # CosyVoice 2's FSQ codes (3^8)
BLANK = "CosyVoice-BlankEN"  # the Qwen2 config, tokenizer and weights beside llm.pt
HUB_ID = "FunAudioLLM/CosyVoice2-0.5B"


def _download_hint(model_dir: Path) -> str:
    return f"download it where there is network (`huggingface-cli download {HUB_ID} --local-dir {model_dir}`)"


class CosyVoice2LMConfig(Qwen2Config):
    """Qwen2's config plus the speech vocabulary; one object serves the wrapper and the inner
    Qwen2 model, so layer surgery that edits it edits both."""

    model_type = "prun_tts_cosyvoice2_lm"
    speech_token_size: int = SPEECH_TOKEN_SIZE


class Qwen2Encoder(nn.Module):
    """CosyVoice's `llm` submodule: only a holder, so the Qwen2 keys read `llm.model.*`."""

    def __init__(self, config: CosyVoice2LMConfig):
        super().__init__()
        self.model = Qwen2ForCausalLM(config)  # its lm_head is unused, kept for CosyVoice's strict load


class CosyVoice2LM(PreTrainedModel, GenerationMixin):
    config_class = CosyVoice2LMConfig
    _no_split_modules = ["Qwen2DecoderLayer"]
    # the inner Qwen2ForCausalLM sits under a plain nn.Module, so its tying is declared here
    _tied_weights_keys = {"llm.model.lm_head.weight": "llm.model.model.embed_tokens.weight"}
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True

    def __init__(self, config: CosyVoice2LMConfig):
        super().__init__(config)
        hidden, s = config.hidden_size, config.speech_token_size
        self.llm_embedding = nn.Embedding(2, hidden)
        self.llm = Qwen2Encoder(config)
        self.llm_decoder = nn.Linear(hidden, s + 3)
        self.speech_embedding = nn.Embedding(s + 3, hidden)
        # the config's bos/eos/pad are Qwen text ids (kept for the exported Qwen2 config); generation
        # works in the combined space
        self.generation_config.bos_token_id = s + 3
        self.generation_config.eos_token_id = s
        self.generation_config.pad_token_id = s + 1
        self.post_init()

    def speech_decoder_parts(self) -> tuple[Any, nn.Module, nn.Linear]:
        """For generation.decode: ids -> embeddings, the Qwen2 body (normed hidden states), llm_decoder."""
        return self.embed, self.llm.model.model, self.llm_decoder

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Combined ids -> input embeddings (each table is looked up with clamped ids, then the right one picked)."""
        s = self.config.speech_token_size
        speech = self.speech_embedding(input_ids.clamp(max=s + 2))
        special = self.llm_embedding((input_ids - (s + 3)).clamp(0, 1))
        text = self.llm.model.model.embed_tokens((input_ids - (s + 5)).clamp(min=0))
        return torch.where(
            (input_ids < s + 3).unsqueeze(-1), speech, torch.where((input_ids < s + 5).unsqueeze(-1), special, text)
        )

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        out = self.llm.model.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=use_cache,
            **kwargs,
        )
        # Qwen2LM: llm_decoder(hidden_states[-1]), the final normed hidden state
        logits = self.llm_decoder(slice_logits_to_keep(out.last_hidden_state, logits_to_keep))
        return CausalLMOutputWithPast(
            logits=logits, cache=out.cache, hidden_states=out.hidden_states, attentions=out.attentions
        )


AutoConfig.register(CosyVoice2LMConfig.model_type, CosyVoice2LMConfig)
AutoModelForCausalLM.register(CosyVoice2LMConfig, CosyVoice2LM)


def load_cosyvoice_llm(model_dir: str | Path, dtype: torch.dtype | None = None) -> CosyVoice2LM:
    """Qwen2LM from a CosyVoice2-0.5B directory (`llm.pt` + `CosyVoice-BlankEN/config.json`),
    or from a student written by `save_cosyvoice_llm` (same layout)."""
    d = Path(model_dir)
    weights = require_file(d / "llm.pt", "the CosyVoice 2 LLM weights", _download_hint(d))
    config_file = require_file(d / BLANK / "config.json", "the CosyVoice 2 LLM's Qwen2 config", _download_hint(d))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if torch.is_tensor(v)}  # training checkpoints add 'epoch', 'step'
    if "speech_embedding.weight" not in state:
        raise MissingPiece(
            f"{weights} is not a CosyVoice 2 LLM state dict (no speech_embedding.weight); {_download_hint(d)}"
        )
    qwen = Qwen2Config.from_pretrained(config_file.parent).to_dict()
    qwen.pop("model_type")
    config = CosyVoice2LMConfig(**qwen, speech_token_size=state["speech_embedding.weight"].shape[0] - 3)
    lm_head, embed = state.get("llm.model.lm_head.weight"), state.get("llm.model.model.embed_tokens.weight")
    if config.tie_word_embeddings and lm_head is not None and not torch.equal(lm_head, embed):
        config.tie_word_embeddings = False  # tied storage would let lm_head overwrite the text embeddings
    model = CosyVoice2LM(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # e.g. a pruned llm.pt beside the teacher's config.json
        raise MissingPiece(
            f"{weights} does not fit {config_file} ({str(e)[:300]}); both must come from one "
            "CosyVoice2-0.5B download or one save_cosyvoice_llm"
        ) from None
    return model.to(dtype) if dtype is not None else model


def _qwen2_config(model: CosyVoice2LM, source: Path | None) -> dict:
    """The Qwen2 config.json of the (pruned) LLM. From the source's own file when there is one:
    CosyVoice pins an older transformers, which reads e.g. `rope_theta`, not `rope_parameters`."""
    cfg = model.config
    if source is not None and (source / BLANK / "config.json").is_file():
        out = json.loads((source / BLANK / "config.json").read_text())
        for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size"):
            if out.get(key) != getattr(cfg, key):
                raise ValueError(
                    f"source_dir {source}: {key}={out.get(key)} there, {getattr(cfg, key)} in the model; "
                    "pass the directory the model was loaded from"
                )
    else:
        out = cfg.to_dict()
        out.pop("speech_token_size")
        out.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
        out.setdefault("rope_theta", cfg.rope_parameters["rope_theta"])  # for transformers 4.x readers
    out["num_hidden_layers"] = cfg.num_hidden_layers
    if "layer_types" in out:
        out["layer_types"] = list(cfg.layer_types)
    if getattr(cfg, "prun_tts", None):
        out["prun_tts"] = cfg.prun_tts  # which teacher layers were kept
    return out


def save_cosyvoice_llm(model: CosyVoice2LM, out_dir: str | Path, source_dir: str | Path | None = None) -> Path:
    """Write `model` the way CosyVoice 2 ships its LLM, all or nothing: `llm.pt` (Qwen2LM's keys
    and shapes) and `CosyVoice-BlankEN/` (Qwen2 config.json with the kept layer count, the
    Qwen2 weights as model.safetensors, which CosyVoice's `Qwen2ForCausalLM.from_pretrained`
    needs before llm.pt overwrites them, and the tokenizer files copied from `source_dir`).
    Copy flow.pt, hift.pt, the yaml and onnx files beside it to run it with CosyVoice."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} already exists and is not empty; choose a new directory or remove it")
    source = Path(source_dir) if source_dir is not None else None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        blank = tmp / BLANK
        blank.mkdir()
        if source is not None:
            for f in sorted((source / BLANK).glob("*")):
                if (
                    f.is_file()
                    and f.name != "config.json"
                    and f.suffix not in (".safetensors", ".bin", ".pt")
                    and not f.name.endswith(".index.json")
                ):
                    shutil.copy2(f, blank / f.name)  # tokenizer files, generation_config.json
        (blank / "config.json").write_text(json.dumps(_qwen2_config(model, source), indent=2) + "\n")
        qwen = {k: v.detach().cpu().contiguous() for k, v in model.llm.model.state_dict().items()}
        if model.config.tie_word_embeddings:
            qwen.pop("lm_head.weight")  # shared storage; loaders tie it back
        save_file(qwen, blank / "model.safetensors", metadata={"format": "pt"})
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp / "llm.pt")
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# CosyVoice's decoding constants (FunAudioLLM/CosyVoice @ ace7c47f41bbd303aa6bf1ea80e6f9fbd595cd40):
# `Qwen2LM.inference` defaults and `examples/libritts/cosyvoice2/conf/cosyvoice2.yaml`'s ras_sampling
MIN_TOKEN_TEXT_RATIO, MAX_TOKEN_TEXT_RATIO = 2, 20
RAS = Sampler("ras", temperature=1.0, top_k=25, top_p=0.8, win_size=10, tau_r=0.1)


class CosyVoice2Family:
    """CosyVoice 2's layout: `sos, text(prompt_text), text(target_text), task_id, prompt codes`,
    continued by the model until eos (id S). Prompt and target text are tokenized separately
    and their tokens concatenated with no separator, as CosyVoice's `Qwen2LM.inference` does
    (`torch.concat([prompt_text, text])`). CosyVoice's text normalisation (numbers, ...) is not
    applied: texts are taken as given.

    Decoding follows `Qwen2LM.inference` / `inference_wrapper` / `TransformerLM.sampling_ids` of
    FunAudioLLM/CosyVoice at ace7c47 (non-vLLM path): generation stops at any of
    `stop_token_ids = [S, S+1, S+2]` (eos and both fill tokens); while fewer than
    int(target text tokens x 2) tokens are out, eos (S alone) is masked (`ignore_eos`); at most
    int(target text tokens x 20) are generated; each token is drawn by `ras_sampling`
    (top_p 0.8, top_k 25, win_size 10, tau_r 0.1, the yaml's values) from the log-softmax of
    llm_decoder. evaluate.top_p / top_k / temperature still apply (the CosyVoice config sets
    CosyVoice's values), and evaluate.max_new_tokens caps the length bound."""

    def __init__(self, tokenizer: Any, speech_token_size: int = SPEECH_TOKEN_SIZE, dtype: torch.dtype = torch.float32):
        self.tokenizer = tokenizer
        self.dtype = dtype  # CosyVoice runs its LLM in fp32 by default
        s = self.speech_token_size = speech_token_size
        self.end_id = s
        self.pad_id = s + 1  # a fill token, never in a unistream sequence; attention masks hide it
        self.sos_id, self.task_id = s + 3, s + 4
        self.text_offset = s + 5
        self.speech_ids = torch.arange(s + 1)  # codes and eos
        self.stop_ids = (s, s + 1, s + 2)  # Qwen2LM.stop_token_ids: eos and the two fill tokens
        self.sampling = RAS
        self.source_dir: Path | None = None  # the CosyVoice2-0.5B folder, when built from one

    @classmethod
    def from_dir(
        cls, model_dir: str | Path, speech_token_size: int = SPEECH_TOKEN_SIZE, dtype: torch.dtype = torch.float32
    ) -> CosyVoice2Family:
        """The family with the Qwen2 tokenizer of a CosyVoice2-0.5B directory."""
        d = Path(model_dir)
        blank = require_file(d / BLANK, "the CosyVoice 2 text tokenizer", _download_hint(d))
        tok = load_pretrained(
            AutoTokenizer.from_pretrained, str(blank), "the CosyVoice 2 text tokenizer", "world.teacher.path"
        )
        family = cls(tok, speech_token_size, dtype)
        family.source_dir = d
        return family

    def save_native(self, model: CosyVoice2LM, out_dir: str | Path) -> Path:
        """The student as CosyVoice loads it: llm.pt + CosyVoice-BlankEN (see save_cosyvoice_llm)."""
        return save_cosyvoice_llm(model, out_dir, self.source_dir)

    def length_bounds(self, prompt_text: str, target_text: str) -> tuple[int, int | None]:
        """Qwen2LM.inference: min_len / max_len = int((text_len - prompt_text_len) x ratio), the
        target text's token count times 2 and 20."""
        n = len(self.tokenizer.encode(target_text, add_special_tokens=False))
        return int(n * MIN_TOKEN_TEXT_RATIO), int(n * MAX_TOKEN_TEXT_RATIO)

    def text_ids(self, text: str) -> list[int]:
        return [self.text_offset + t for t in self.tokenizer.encode(text, add_special_tokens=False)]

    def _speech(self, codes: Sequence[int]) -> list[int]:
        codes = [int(c) for c in codes]
        if any(not 0 <= c < self.speech_token_size for c in codes):
            raise ValueError(
                f"speech codes must be in 0..{self.speech_token_size - 1} (CosyVoice 2's S3 tokens); "
                f"got {min(codes)}..{max(codes)}"
            )
        return codes

    def prompt_ids(self, prompt_text: str, target_text: str, prompt_codes: Sequence[int]) -> list[int]:
        return [
            self.sos_id,
            *self.text_ids(prompt_text),
            *self.text_ids(target_text),
            self.task_id,
            *self._speech(prompt_codes),
        ]

    def training_ids(self, prompt: Sample, target: Sample) -> tuple[list[int], list[int]]:
        ids = self.prompt_ids(prompt.text, target.text, prompt.codes) + self._speech(target.codes) + [self.end_id]
        start = ids.index(self.task_id) + 1
        # loss on every speech token after the task id and on eos, as in CosyVoice's training targets
        return ids, [-100] * start + ids[start:]

    def codes_of(self, generated_ids: Sequence[int]) -> list[int]:
        return speech_codes(generated_ids, self.end_id, 0, self.speech_token_size)

    def load_model(self, path: str, **kwargs: Any) -> torch.nn.Module:
        """A CosyVoice2-0.5B-style directory (llm.pt + CosyVoice-BlankEN) or a `save_pretrained` one."""
        kwargs.setdefault("dtype", self.dtype)
        if (Path(path) / "llm.pt").is_file():
            model = load_cosyvoice_llm(path, dtype=kwargs["dtype"])
        else:
            model = load_pretrained(
                CosyVoice2LM.from_pretrained, path, "the CosyVoice 2 LLM", "world.teacher.path", **kwargs
            )
        if model.config.speech_token_size != self.speech_token_size:
            raise MissingPiece(
                f"{path}: the model has {model.config.speech_token_size} speech tokens, the family "
                f"{self.speech_token_size}; world.teacher.path must be a CosyVoice 2 LLM"
            )
        return model
