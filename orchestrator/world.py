"""What the core sees of a text-to-speech world: a model family, a codec, an ASR,
a speaker verifier and the data. The mini world and the real models (LLaSA with
X-Codec2, CosyVoice 2) each provide these; nothing in prune/, distill/ or
evaluate/ knows which world it is working in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import transformers
from torch import nn

from orchestrator.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Sample:
    """One utterance of a corpus, already turned into speech codes."""

    text: str
    speaker: str
    codes: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class EvalItem:
    """One line of an evaluation list: speak `target_text` in the voice of the prompt."""

    name: str
    prompt_text: str
    prompt_codes: tuple[int, ...]
    target_text: str
    prompt_audio: str = ""  # the recorded prompt (real worlds): the reference for speaker similarity
    target_audio: str = ""  # the ground-truth recording of the target, where the list has one (report only)
    target_codes: tuple[int, ...] = ()  # the ground truth as codes (the mini world speaks it; report only)


class Family(Protocol):
    """How a model family lays out text and speech tokens (LLaSA, CosyVoice 2, mini)."""

    pad_id: int
    end_id: int  # ends the generated speech
    speech_ids: torch.Tensor  # vocabulary ids that carry speech (codes and the end token)
    stop_ids: tuple[int, ...]  # generation ends at any of these (end_id among them)
    sampling: Any  # a generation.sampling.Sampler: the family's sampler kind and its fixed constants

    def length_bounds(self, prompt_text: str, target_text: str) -> tuple[int, int | None]:
        """(fewest, most) speech tokens to generate for this text (None: no bound of the family's own)."""

    def prompt_ids(self, prompt_text: str, target_text: str, prompt_codes: Sequence[int]) -> list[int]: ...

    def training_ids(self, prompt: Sample, target: Sample) -> tuple[list[int], list[int]]:
        """Token ids and labels (-100 outside the speech span) for one training pair."""

    def codes_of(self, generated_ids: Sequence[int]) -> list[int]:
        """Speech codes of a generated continuation, up to the end token."""

    def load_model(self, path: str, **kwargs: Any) -> torch.nn.Module: ...


def speech_codes(generated_ids: Sequence[int], end_id: int, first_id: int, n_codes: int) -> list[int]:
    """The codes in a generated continuation, up to the end token: ids first_id..first_id+n_codes-1
    are codes 0..n_codes-1, any other id (text, fill tokens) is skipped."""
    codes = []
    for t in generated_ids:
        t = int(t)
        if t == end_id:
            break
        if first_id <= t < first_id + n_codes:
            codes.append(t - first_id)
    return codes


class Codec(Protocol):
    token_rate: float  # codes per second of audio

    def encode(self, audio: Any) -> list[int]: ...

    def decode(self, codes: Sequence[int], prompt: str | None = None) -> Any:
        """Audio of `codes` (None when this codec cannot make audio: token-level metrics only).
        `prompt`: the prompt recording, for codecs whose decoder takes the voice from it."""


class ASR(Protocol):
    def transcribe(self, audios: Sequence[Any]) -> list[str]: ...


class SpeakerVerifier(Protocol):
    def similarity(self, audio: Any, reference: Any) -> float:
        """Cosine of speaker embeddings; `reference` is a waveform or an audio file's path."""


@dataclasses.dataclass
class World:
    """Everything the method needs, bundled by `build_world`."""

    name: str
    family: Family
    codec: Codec
    asr: ASR
    verifier: SpeakerVerifier
    train_pairs: Sequence[tuple[Sample, Sample]]
    dev_items: Sequence[EvalItem]
    test_items: Sequence[EvalItem]
    language: str = "en"  # of the texts: WER normalisation, per character for "zh"
    # codes -> a waveform to listen to (the report page); None: the codec's decode is the audio
    vocoder: Any = None


# ---------------------------------------------------------------- a world's models on disk


def load_model(world: World, path: str | Path, device: torch.device) -> nn.Module:
    p = Path(path)
    if world.name == "mini" and not (p / "config.json").is_file():  # real families explain their own failures
        raise ConfigError(
            f"{p} holds no model (no config.json): pass a directory written by prun-tts or save_pretrained"
        )
    transformers.logging.disable_progress_bar()  # one bar per load is noise in a sweep's many processes
    model = world.family.load_model(str(p)).to(device).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    return model


def save_student(world: World, model: nn.Module, out: str | Path) -> None:
    """A student as a Hugging Face checkpoint, plus its family's own format where it has one
    (CosyVoice 2: `native/llm.pt` + `native/CosyVoice-BlankEN`, loadable by CosyVoice's code)."""
    model.save_pretrained(out)
    native = getattr(world.family, "save_native", None)
    if native is not None:
        native(model, Path(out) / "native")
