"""LLaSA's token layout over the mini world's phone text.

Ids: text tokens first (here pad, bos, eos, space and one per phone), then
LLaSA's eight special tokens in LLaSA's order, then one token per speech code
(`<|s_k|>` = first speech id + k). A prompt reads
`bos TEXT_UNDERSTANDING_START prompt-text target-text TEXT_UNDERSTANDING_END
SPEECH_GENERATION_START prompt-codes`, and generation stops at
SPEECH_GENERATION_END, exactly as for Llasa-1B.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from orchestrator.families.llasa import SPECIAL_TOKENS  # LLaSA's order; the mini world copies its layout
from orchestrator.generation.sampling import Sampler
from orchestrator.world import Sample, speech_codes


class MiniFamily:
    def __init__(self, phones: Sequence[str], n_codes: int):
        self.text_vocab = ["<|pad|>", "<|bos|>", "<|eos|>", " ", *phones]
        self._text_id = {t: i for i, t in enumerate(self.text_vocab)}
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        n_text = len(self.text_vocab)
        self.special = {name: n_text + i for i, name in enumerate(SPECIAL_TOKENS)}
        self.speech_offset = n_text + len(SPECIAL_TOKENS)
        self.n_codes = n_codes
        self.vocab_size = self.speech_offset + n_codes
        self.end_id = self.special["SPEECH_GENERATION_END"]
        self.speech_ids = torch.tensor([*range(self.speech_offset, self.vocab_size), self.end_id])
        self.stop_ids = (self.end_id,)
        self.sampling = Sampler()  # plain temperature / top-k / top-p, as LLaSA's model card

    def length_bounds(self, prompt_text: str, target_text: str) -> tuple[int, int | None]:
        return 0, None  # as LLaSA: only evaluate.max_new_tokens bounds a row

    def text_ids(self, text: str) -> list[int]:
        try:
            return [self._text_id[ch] for ch in text]
        except KeyError as e:
            raise ValueError(f"text {text!r} has {e.args[0]!r}, which is not a mini-world phone") from None

    def prompt_ids(self, prompt_text: str, target_text: str, prompt_codes: Sequence[int]) -> list[int]:
        return [
            self.bos_id,
            self.special["TEXT_UNDERSTANDING_START"],
            *self.text_ids(f"{prompt_text} {target_text}"),
            self.special["TEXT_UNDERSTANDING_END"],
            self.special["SPEECH_GENERATION_START"],
            *(self.speech_offset + c for c in prompt_codes),
        ]

    def training_ids(self, prompt: Sample, target: Sample) -> tuple[list[int], list[int]]:
        ids = self.prompt_ids(prompt.text, target.text, prompt.codes)
        ids += [self.speech_offset + c for c in target.codes] + [self.end_id]
        start = ids.index(self.special["SPEECH_GENERATION_START"]) + 1
        labels = [-100] * start + ids[start:]  # loss on the speech span only
        return ids, labels

    def codes_of(self, generated_ids: Sequence[int]) -> list[int]:
        return speech_codes(generated_ids, self.end_id, self.speech_offset, self.n_codes)

    def load_model(self, path: str, **kwargs: Any) -> torch.nn.Module:
        kwargs.setdefault("dtype", torch.float32)  # tiny model: train and run it in fp32 everywhere
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
