"""Audio files and waveforms at the models' rate (16 kHz mono).

Files are read with soundfile: `torchaudio.load` needs torchcodec (a CUDA build plus system FFmpeg).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from orchestrator.hub import require_file

SAMPLE_RATE = 16000


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """A file as a 1-D float32 waveform: channels averaged, resampled to `sample_rate`."""
    path = require_file(path, "audio file", "check the path in the data list or the config")
    data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (frames, channels)
    return resample(torch.from_numpy(data.mean(axis=1)), rate, sample_rate)


def save_audio(path: str | Path, wav: Any, sample_rate: int = SAMPLE_RATE) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), as_waveform(wav, sample_rate).numpy(), sample_rate)
    return path


def as_waveform(audio: Any, sample_rate: int = SAMPLE_RATE, source_rate: int | None = None) -> torch.Tensor:
    """A 1-D float32 CPU waveform at `sample_rate` from a file path or an in-memory waveform.

    An in-memory waveform (tensor, array or list; 1-D, or 2-D as (channels, samples)) is taken to be at
    `source_rate`, or already at `sample_rate` when that is not given.
    """
    if isinstance(audio, (str, Path)):
        return load_audio(audio, sample_rate)
    wav = audio.detach() if isinstance(audio, torch.Tensor) else torch.as_tensor(np.asarray(audio))
    wav = wav.to("cpu", torch.float32)
    if wav.dim() == 2:
        wav = wav.mean(dim=0)
    if wav.dim() != 1:
        raise ValueError(f"expected a 1-D waveform or (channels, samples), got shape {tuple(wav.shape)}")
    return resample(wav, source_rate or sample_rate, sample_rate)


def resample(wav: torch.Tensor, rate: int, target: int) -> torch.Tensor:
    return wav if rate == target else AF.resample(wav, rate, target)
