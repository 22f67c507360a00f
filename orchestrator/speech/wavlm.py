"""A WavLM x-vector model as the `SpeakerVerifier` of the evaluation.

Seed-TTS-eval scores speaker similarity with WavLM-large fine-tuned with an ECAPA-TDNN head (a
checkpoint of its own code, not a transformers class), so its absolute numbers are not reproduced here.
Any `WavLMForXVector` checkpoint plugs in; the default, microsoft/wavlm-base-plus-sv, is the stock
substitute. Compare scores only within one verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMForXVector

from orchestrator.hub import load_pretrained
from orchestrator.speech.audio import as_waveform


class WavLMVerifier:
    def __init__(self, model: WavLMForXVector, feature_extractor: Wav2Vec2FeatureExtractor, batch_size: int = 16):
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.sample_rate = feature_extractor.sampling_rate
        self.batch_size = batch_size
        self.min_samples = min_samples(model.config)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "microsoft/wavlm-base-plus-sv",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        batch_size: int = 16,
    ) -> WavLMVerifier:
        def load(path: str) -> WavLMVerifier:
            model = WavLMForXVector.from_pretrained(path, dtype=dtype).to(device)
            return cls(model, Wav2Vec2FeatureExtractor.from_pretrained(path), batch_size)

        return load_pretrained(load, name_or_path, "the WavLM speaker verifier", "world.real.verifier")

    @torch.no_grad()
    def embed(self, audios: Sequence[Any], sample_rate: int | None = None) -> torch.Tensor:
        """Unit-length x-vectors, (len(audios), dim) float32 on the CPU, `batch_size` clips at a time.

        Clips in one batch are padded to the longest; with a checkpoint whose feature extractor gives no
        attention mask (group-norm WavLMs) that changes the shorter clips' vectors, so `similarity`
        embeds each clip on its own.
        """
        model = self.model
        waves = [self._fit(as_waveform(a, self.sample_rate, sample_rate)) for a in audios]
        vectors = []
        for start in range(0, len(waves), self.batch_size):
            inputs = self.feature_extractor(
                [w.numpy() for w in waves[start : start + self.batch_size]],
                sampling_rate=self.sample_rate,
                padding=True,
                return_tensors="pt",
            )
            inputs = {
                k: v.to(model.device, model.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()
            }
            vectors.append(model(**inputs).embeddings.float().cpu())
        return F.normalize(torch.cat(vectors), dim=-1)

    def similarity(self, audio: Any, reference: Any, sample_rate: int | None = None) -> float:
        """Cosine similarity in [-1, 1] of the two clips' x-vectors (waveforms at `sample_rate` or paths)."""
        a, b = self.embed([audio], sample_rate), self.embed([reference], sample_rate)
        return float((a[0] @ b[0]).clamp(-1.0, 1.0))

    def _fit(self, wav: torch.Tensor) -> torch.Tensor:
        # Clips too short for the x-vector head (e.g. an empty generation) are padded with silence.
        return F.pad(wav, (0, self.min_samples - len(wav))) if len(wav) < self.min_samples else wav


def min_samples(config: WavLMConfig) -> int:
    """The shortest clip the x-vector head takes: two frames after its TDNN layers (the pooling takes a
    standard deviation), traced back through the TDNN and the convolutional feature encoder."""
    frames = 2 + sum((k - 1) * d for k, d in zip(config.tdnn_kernel, config.tdnn_dilation))
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        frames = (frames - 1) * stride + kernel
    return frames
