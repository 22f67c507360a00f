"""Whisper as the `ASR` of the evaluation (Seed-TTS-eval scores English with Whisper-large-v3).

Greedy decoding of clips up to 30 s (longer clips are cut at 30 s: TTS test utterances are far shorter).
Seed-TTS-eval scores Chinese with Paraformer-zh, which is not a transformers model; Whisper with
language "zh" is the stand-in. Text normalisation (case, punctuation) is left to the WER scorer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    PreTrainedTokenizerBase,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)

from orchestrator.hub import load_pretrained
from orchestrator.speech.audio import as_waveform


class WhisperASR:
    def __init__(
        self,
        model: WhisperForConditionalGeneration,
        feature_extractor: WhisperFeatureExtractor,
        tokenizer: PreTrainedTokenizerBase,
        language: str = "en",
        batch_size: int = 16,
    ):
        self.model = model.eval()
        self.feature_extractor = feature_extractor
        self.tokenizer = tokenizer
        self.sample_rate = feature_extractor.sampling_rate
        self.batch_size = batch_size
        gen = model.generation_config
        # Multilingual checkpoints take the language and task as prompt tokens; English-only ones (and
        # configs without language tokens) reject them, so they get neither.
        multilingual = getattr(gen, "lang_to_id", None) and getattr(gen, "is_multilingual", True)
        self.generate_kwargs = {"language": language, "task": "transcribe"} if multilingual else {}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str = "openai/whisper-large-v3",
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = None,
        language: str = "en",
        batch_size: int = 16,
    ) -> WhisperASR:
        def load(path: str) -> WhisperASR:
            model = WhisperForConditionalGeneration.from_pretrained(path, dtype=dtype).to(device)
            processor = WhisperProcessor.from_pretrained(path)
            return cls(model, processor.feature_extractor, processor.tokenizer, language, batch_size)

        return load_pretrained(load, name_or_path, "the Whisper ASR", "world.real.asr")

    @torch.no_grad()
    def transcribe(self, audios: Sequence[Any], sample_rate: int | None = None) -> list[str]:
        """The text of each clip (a waveform at `sample_rate`, default 16 kHz, or a file path)."""
        model = self.model
        texts: list[str] = []
        for start in range(0, len(audios), self.batch_size):
            waves = [
                as_waveform(a, self.sample_rate, sample_rate).numpy() for a in audios[start : start + self.batch_size]
            ]
            features = self.feature_extractor(waves, sampling_rate=self.sample_rate, return_tensors="pt")
            ids = model.generate(
                features.input_features.to(model.device, model.dtype),
                do_sample=False,
                num_beams=1,
                **self.generate_kwargs,
            )
            texts += [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return texts
