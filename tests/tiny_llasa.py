"""A tiny random LLaSA: LlamaForCausalLM with LLaSA's vocabulary (193,800 ids: Llama 3's
text, the eight special tokens at 128256-128263, speech tokens from 128264) and a
character tokenizer with Llama 3's chat-template tokens at their real ids."""

from __future__ import annotations

from pathlib import Path

import torch
from tiny_tokenizers import char_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

from orchestrator.families.llasa import SPECIAL_TOKENS

LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLAMA3_SPECIALS = {
    "<|begin_of_text|>": 128000,
    "<|end_of_text|>": 128001,
    "<|start_header_id|>": 128006,
    "<|end_header_id|>": 128007,
    "<|eot_id|>": 128009,
}
VOCAB = 193_800


def llasa_tokenizer(special_offset: int = 128256):
    specials = {**LLAMA3_SPECIALS, **{f"<|{n}|>": special_offset + i for i, n in enumerate(SPECIAL_TOKENS)}}
    return char_tokenizer(
        special_offset, specials, LLAMA3_TEMPLATE, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"
    )


def save_tiny_llasa(out: Path, layers: int = 4, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=128000,
        eos_token_id=128009,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # large speech rows (tied head): a random model speaks rather than writes
        model.model.embed_tokens.weight[128264:].normal_(0, 1.0)
    model.save_pretrained(out)
    llasa_tokenizer().save_pretrained(out)
    return out
