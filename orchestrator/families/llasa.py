"""LLaSA (HKUSTAudio/Llasa-1B, 3B, 8B): a LlamaForCausalLM whose vocabulary is Llama 3's
128,256 text tokens, eight special tokens and 65,536 X-Codec2 speech tokens.

Prompt: the "prompted" example of the HKUSTAudio/Llasa-1B model card (also Llasa-3B's;
the same chat call as zhenye234/LLaSA_training at ef5c260): chat template, user turn
"Convert the text to speech:" + `<|TEXT_UNDERSTANDING_START|>{prompt text}{target text}<|TEXT_UNDERSTANDING_END|>`
(the card's `input_text = prompt_text + target_text`: no separator), assistant turn
`<|SPEECH_GENERATION_START|>` + the prompt audio's speech tokens, left open
(`continue_final_message=True`) and continued by the model until `<|SPEECH_GENERATION_END|>`.
Speech code k is `<|s_k|>`, id 128264 + k. `world.real.prompt_join` may put a separator
between the two texts: a departure from the card, off by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from orchestrator.generation.sampling import Sampler
from orchestrator.hub import MissingPiece, load_pretrained
from orchestrator.world import Sample, speech_codes

TEXT_VOCAB = 128_256  # Llama 3's text tokens; LLaSA's special tokens follow
N_CODES = 65_536  # X-Codec2: one FSQ codebook
INSTRUCTION = "Convert the text to speech:"
# LLaSA's eight special tokens, in id order from TEXT_VOCAB (128256-128263). The mini world
# copies this layout and imports it from here: the families never import the mini world.
SPECIAL_TOKENS = (
    "TEXT_GENERATION_START",
    "TEXT_GENERATION_END",
    "TEXT_UNDERSTANDING_START",
    "TEXT_UNDERSTANDING_END",
    "SPEECH_GENERATION_START",
    "SPEECH_GENERATION_END",
    "SPEECH_UNDERSTANDING_START",
    "SPEECH_UNDERSTANDING_END",
)


class LlasaFamily:
    def __init__(
        self, tokenizer: Any, dtype: torch.dtype = torch.bfloat16, n_codes: int = N_CODES, prompt_join: str = ""
    ):
        self.tokenizer = tokenizer
        self.prompt_join = prompt_join  # between prompt text and target text; the card uses none
        self.dtype = dtype
        self.special = {name: TEXT_VOCAB + i for i, name in enumerate(SPECIAL_TOKENS)}
        for name, expected in self.special.items():
            got = tokenizer.convert_tokens_to_ids(f"<|{name}|>")
            if got != expected:
                raise MissingPiece(
                    f"the tokenizer maps <|{name}|> to {got}, LLaSA's layout has {expected}: "
                    "world.teacher.path must be a LLaSA checkpoint (e.g. HKUSTAudio/Llasa-1B)"
                )
        self.speech_offset = TEXT_VOCAB + len(SPECIAL_TOKENS)  # 128264: <|s_0|>
        self.n_codes = n_codes
        self.end_id = self.special["SPEECH_GENERATION_END"]
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad)  # left padding for batches; masked out, so any text id works
        self.speech_ids = torch.tensor([*range(self.speech_offset, self.speech_offset + n_codes), self.end_id])
        self.stop_ids = (self.end_id,)  # the card's eos_token_id
        self.sampling = Sampler()  # the card's generate(do_sample=True, temperature, top_p): plain sampling

    def length_bounds(self, prompt_text: str, target_text: str) -> tuple[int, int | None]:
        return 0, None  # the card bounds only the total length (max_length 2048); evaluate.max_new_tokens here

    @classmethod
    def from_pretrained(
        cls, name_or_path: str, dtype: torch.dtype = torch.bfloat16, prompt_join: str = ""
    ) -> LlasaFamily:
        tok = load_pretrained(AutoTokenizer.from_pretrained, name_or_path, "the LLaSA tokenizer", "world.teacher.path")
        return cls(tok, dtype, prompt_join=prompt_join)

    def prompt_ids(self, prompt_text: str, target_text: str, prompt_codes: Sequence[int]) -> list[int]:
        text = f"{prompt_text}{self.prompt_join}{target_text}" if prompt_text else target_text
        chat = [
            {"role": "user", "content": f"{INSTRUCTION}<|TEXT_UNDERSTANDING_START|>{text}<|TEXT_UNDERSTANDING_END|>"},
            {"role": "assistant", "content": "<|SPEECH_GENERATION_START|>"},
        ]
        # continue_final_message: the assistant turn stays open, as in the model card
        rendered = self.tokenizer.apply_chat_template(chat, tokenize=False, continue_final_message=True)
        ids = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        return [*ids, *(self.speech_offset + int(c) for c in prompt_codes)]

    def training_ids(self, prompt: Sample, target: Sample) -> tuple[list[int], list[int]]:
        ids = self.prompt_ids(prompt.text, target.text, prompt.codes)
        ids += [self.speech_offset + c for c in target.codes] + [self.end_id]
        start = ids.index(self.special["SPEECH_GENERATION_START"]) + 1
        return ids, [-100] * start + ids[start:]  # loss on the speech span only, as LLaSA was trained

    def codes_of(self, generated_ids: Sequence[int]) -> list[int]:
        return speech_codes(generated_ids, self.end_id, self.speech_offset, self.n_codes)

    def load_model(self, path: str, **kwargs: Any) -> torch.nn.Module:
        kwargs.setdefault("dtype", self.dtype)
        return load_pretrained(
            AutoModelForCausalLM.from_pretrained, path, "the LLaSA model", "world.teacher.path", **kwargs
        )
