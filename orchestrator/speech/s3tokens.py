"""CosyVoice 2's speech tokens (S3 tokenizer v2: 25 tokens/s, 6561 FSQ codes) from 16 kHz audio,
for making CosyVoice 2 training pairs.

Uses the optional `s3tokenizer` package (github.com/xingchensong/S3Tokenizer), a PyTorch port
of CosyVoice's `speech_tokenizer_v2.onnx`: `load_model(name_or_onnx_path)`, then
`log_mel_spectrogram(audio, n_mels=128)`, `padding([mel])` and `model.quantize(mels, lens)`.
It is imported only when a tokenizer is built.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from orchestrator.hub import MissingPiece, require
from orchestrator.speech.audio import as_waveform

MODEL = "speech_tokenizer_v2_25hz"  # s3tokenizer's name for CosyVoice 2's tokenizer
N_MELS = 128
INSTALL = "pip install 'prun-tts[cosyvoice]' (or pip install s3tokenizer)"


class S3Tokenizer:
    token_rate = 25.0  # codes per second of audio
    sample_rate = 16_000

    def __init__(self, model: torch.nn.Module):
        """`model`: an s3tokenizer model (`from_pretrained` loads CosyVoice 2's)."""
        self._s3 = require("s3tokenizer", INSTALL, "CosyVoice 2 speech tokens")
        self.model = model.eval()
        self.device = next(model.parameters()).device

    @classmethod
    def from_pretrained(cls, model: str | Path = MODEL, device: str | torch.device = "cpu") -> S3Tokenizer:
        """`model`: s3tokenizer's model name (downloaded on first use) or, offline, the path of
        `speech_tokenizer_v2.onnx` from a CosyVoice2-0.5B download."""
        s3 = require("s3tokenizer", INSTALL, "CosyVoice 2 speech tokens")
        try:
            return cls(s3.load_model(str(model)).to(device))
        except (OSError, RuntimeError) as e:  # no network for the download, or no such file / name
            raise MissingPiece(
                f"cannot load the S3 speech tokenizer {str(model)!r} ({e}); pass the path of "
                "speech_tokenizer_v2.onnx from `huggingface-cli download FunAudioLLM/CosyVoice2-0.5B`"
            ) from None

    @torch.no_grad()
    def encode(self, audio: Any) -> list[int]:
        """Speech codes (0..6560) of one clip: a mono 16 kHz waveform or an audio file's path."""
        mel = self._s3.log_mel_spectrogram(as_waveform(audio, self.sample_rate), n_mels=N_MELS)
        mels, lens = self._s3.padding([mel])
        codes, code_lens = self.model.quantize(mels.to(self.device), lens.to(self.device))
        return codes[0, : int(code_lens[0])].tolist()

    def encode_batch(self, audios: Sequence[Any]) -> list[list[int]]:
        return [self.encode(a) for a in audios]
