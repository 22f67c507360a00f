"""X-Codec2, LLaSA's speech tokenizer, through transformers' native `Xcodec2Model`.

16 kHz audio, one FSQ codebook of 65,536 codes, 50 codes a second (hop 320). The encoder sees the
waveform twice: an acoustic convolution stack on the raw samples and a w2v-BERT 2.0 semantic encoder on
log-mel features; `Xcodec2FeatureExtractor` prepares both.

The original `xcodec2` package on PyPI is not supported here: it pins torch 2.5.0 / torchaudio 2.5.0,
cannot be installed next to the torch this project uses, and its `from_pretrained` fails on
transformers 5.x. Whether its checkpoint (`HKUSTAudio/xcodec2`) and the converted native one
(`hf-audio/xcodec2`) give identical codes has not been checked here (no network).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import Xcodec2FeatureExtractor, Xcodec2Model

from orchestrator.hub import load_pretrained
from orchestrator.speech.audio import as_waveform


class Xcodec2Codec:
    """The `Codec` protocol over an `Xcodec2Model`.

    Codes are computed in the model's dtype (`from_pretrained(dtype=None)` keeps the checkpoint's:
    float32 for hf-audio/xcodec2); float32 is the reference, half precision can flip a few codes.
    """

    def __init__(
        self, model: Xcodec2Model, feature_extractor: Xcodec2FeatureExtractor | None = None, batch_size: int = 16
    ):
        self.model = model.eval()
        cfg = model.config
        self.sample_rate = cfg.sampling_rate
        self.hop_length = cfg.hop_length
        self.token_rate = self.sample_rate / self.hop_length
        # Without one (tests), built from its defaults, with the model's rate and hop.
        self.feature_extractor = feature_extractor or Xcodec2FeatureExtractor(
            sampling_rate=self.sample_rate, hop_length=self.hop_length
        )
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "hf-audio/xcodec2",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        batch_size: int = 16,
    ) -> Xcodec2Codec:
        def load(path: str) -> Xcodec2Codec:
            model = Xcodec2Model.from_pretrained(path, dtype=dtype).to(device)
            return cls(model, Xcodec2FeatureExtractor.from_pretrained(path), batch_size)

        return load_pretrained(load, name_or_path, "the X-Codec2 codec", "world.real.codec")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def n_codes(self, n_samples: int) -> int:
        """Codes for a clip of `n_samples`: like the original X-Codec2, every clip is padded by at least
        one sample up to a multiple of the hop, so a clip of exactly 1 s gives 51 codes."""
        return n_samples // self.hop_length + 1

    def encode(self, audio: Any, sample_rate: int | None = None) -> list[int]:
        """Codes (0..65535) of one clip: a waveform at `sample_rate` (default 16 kHz) or a file path."""
        return self.encode_batch([audio], sample_rate)[0]

    @torch.no_grad()
    def encode_batch(self, audios: Sequence[Any], sample_rate: int | None = None) -> list[list[int]]:
        """Codes of each clip, computed `batch_size` clips at a time.

        Clips are batched in order of length to keep padding small. The semantic encoder masks the
        padding, but the acoustic convolutions see it: the last few codes of a clip shorter than its
        batch's longest can differ from `encode` of that clip alone (the other codes are identical).
        """
        waves = [as_waveform(a, self.sample_rate, sample_rate) for a in audios]
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))
        codes: list[list[int]] = [[] for _ in waves]
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            inputs = self.feature_extractor(
                [waves[i] for i in chunk], sampling_rate=self.sample_rate, return_tensors="pt"
            )
            out = self.model.encode(
                input_values=inputs["input_values"].to(self.device, self.model.dtype),
                input_features=inputs["input_features"].to(self.device, self.model.dtype),
                input_features_mask=inputs["input_features_mask"].to(self.device),
            )
            batch_codes = out.audio_codes[:, 0].cpu()  # (batch, 1 codebook, frames) -> (batch, frames)
            for row, i in enumerate(chunk):
                codes[i] = batch_codes[row, : self.n_codes(len(waves[i]))].tolist()
        return codes

    @torch.no_grad()
    def decode(self, codes: Sequence[int], prompt: str | None = None) -> torch.Tensor:
        """A 1-D float32 waveform at 16 kHz, `hop` samples per code (empty for no codes). X-Codec2
        codes carry the voice themselves: the prompt is not needed."""
        if len(codes) == 0:
            return torch.zeros(0)
        ids = torch.as_tensor(list(codes), dtype=torch.long, device=self.device).view(1, 1, -1)
        return self.model.decode(audio_codes=ids).audio_values[0, 0].float().cpu()
