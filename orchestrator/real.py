"""The real worlds: LLaSA with X-Codec2, and CosyVoice 2's LLM with its S3 speech tokens;
Whisper for WER, a WavLM speaker verifier for similarity, Seed-TTS-eval lists for dev and
test, speech-token shards for training.

The heavy pieces (codec, ASR, verifier) load on first use: every Ray Train worker
builds the world, and only the one that evaluates needs them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from orchestrator.config import Config
from orchestrator.data.seedtts import SeedTTSItems
from orchestrator.data.shards import ShardPairs
from orchestrator.world import World

# Each world imports its own speech models and family where it builds them, not at the top: importing
# Whisper, WavLM, X-Codec2 and CosyVoice's pieces costs seconds in every process (Ray workers, CLI
# subprocesses) and a world uses only its own.

TOKEN_RATES = {"llasa": 50.0, "cosyvoice2": 25.0}  # X-Codec2: 50 codes/s; CosyVoice 2's S3 tokens: 25/s
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


class Lazy:
    """Builds its object on first attribute access; `known` attributes answer without building."""

    def __init__(self, make: Callable[[], Any], **known: Any):
        self._make, self._obj, self._known = make, None, known

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_make", "_obj", "_known"):  # copy/pickle probe before __init__
            raise AttributeError(name)
        if name in self._known:
            return self._known[name]
        if self._obj is None:
            self._obj = self._make()
        return getattr(self._obj, name)


def model_dtype(cfg: Config) -> torch.dtype:
    dtype = DTYPES[cfg.world.real.dtype]
    return torch.float32 if dtype != torch.float32 and not torch.cuda.is_available() else dtype


def speech_encoder(cfg: Config, device: str | torch.device):
    """Audio -> speech codes for training data (`encode`, `encode_batch`)."""
    if cfg.world.name == "llasa":
        from orchestrator.speech.xcodec2 import Xcodec2Codec

        return Xcodec2Codec.from_pretrained(cfg.world.real.codec, device=str(device))
    from orchestrator.speech.s3tokens import MODEL, S3Tokenizer

    onnx = Path(cfg.world.teacher.path) / "speech_tokenizer_v2.onnx"  # shipped with CosyVoice2-0.5B
    return S3Tokenizer.from_pretrained(onnx if onnx.is_file() else MODEL, device)


def check_speech_encoder(cfg: Config) -> None:
    """The training-data encoder can be loaded (cheap: a config or an import, no weights)."""
    from orchestrator.hub import load_pretrained, require

    if cfg.world.name == "llasa":
        from transformers import Xcodec2Config

        load_pretrained(Xcodec2Config.from_pretrained, cfg.world.real.codec, "the X-Codec2 codec", "world.real.codec")
    else:
        from orchestrator.speech.s3tokens import INSTALL

        require("s3tokenizer", INSTALL, "CosyVoice 2 speech tokens")


def _codec(cfg: Config, device: str):
    if cfg.world.name == "llasa":
        return speech_encoder(cfg, device)
    from orchestrator.speech.cosyvoice_vocoder import CosyVoiceCodec

    return CosyVoiceCodec(cfg.world.real.codec, device=device)


def build_real_world(cfg: Config) -> World:
    from orchestrator.speech.wavlm import WavLMVerifier
    from orchestrator.speech.whisper import WhisperASR

    r, name = cfg.world.real, cfg.world.name
    device = "cuda" if torch.cuda.is_available() and cfg.device != "cpu" else "cpu"
    if name == "llasa":
        from orchestrator.families.llasa import LlasaFamily

        family = LlasaFamily.from_pretrained(cfg.world.teacher.path, model_dtype(cfg), prompt_join=r.prompt_join)
    else:
        from orchestrator.families.cosyvoice2 import CosyVoice2Family

        family = CosyVoice2Family.from_dir(cfg.world.teacher.path, dtype=model_dtype(cfg))
    codec = Lazy(lambda: _codec(cfg, device), token_rate=TOKEN_RATES[name])
    asr = Lazy(
        lambda: WhisperASR.from_pretrained(
            r.asr, device=device, dtype=model_dtype(cfg), language=r.language, batch_size=r.asr_batch_size
        )
    )
    verifier = Lazy(lambda: WavLMVerifier.from_pretrained(r.verifier, device=device))
    return World(
        name=name,
        family=family,
        codec=codec,
        asr=asr,
        verifier=verifier,
        train_pairs=ShardPairs(r.shards),
        dev_items=SeedTTSItems(r.dev_list, codec) if r.dev_list else [],
        test_items=SeedTTSItems(r.test_list, codec) if r.test_list else [],
        language=r.language,
    )


def teacher_meta(cfg: Config) -> dict:
    """What is known of a real teacher's training: its hours of speech, as tokens."""
    return {
        "train_tokens": int(cfg.world.real.teacher_hours * 3600 * TOKEN_RATES[cfg.world.name]),
        "digest": "",
        "path": cfg.world.teacher.path,
    }


def teacher_layers(path: str | Path) -> int:
    from transformers import AutoConfig

    from orchestrator.hub import load_pretrained

    blank = Path(path) / "CosyVoice-BlankEN"  # a CosyVoice2-0.5B folder keeps its LLM's config there
    where = str(blank) if (blank / "config.json").is_file() else str(path)
    return load_pretrained(
        AutoConfig.from_pretrained, where, "the teacher's config", "world.teacher.path"
    ).num_hidden_layers
