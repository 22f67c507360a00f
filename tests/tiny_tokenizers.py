"""Tiny offline tokenizers with a real model's special-token ids, for tests.

Built with the `tokenizers` library: a word-level vocabulary of single characters,
padded with filler entries so that special tokens land on the exact ids the real
checkpoints use (e.g. LLaSA's 128256-128263).
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

CHARS = list(string.ascii_lowercase + string.ascii_uppercase + string.digits + " .,'?!:-\n")


def char_tokenizer(
    size: int, specials: dict[str, int], chat_template: str | None = None, **named_specials: str
) -> PreTrainedTokenizerFast:
    """A character tokenizer with `size` base ids (characters first, then fillers) and each
    special token at its given id (ids at or above `size` become added tokens, in order).

    `named_specials`: e.g. bos_token="<|begin_of_text|>", pad_token=... (must be in `specials`).
    """
    vocab = {c: i for i, c in enumerate(CHARS)}
    below = {tok: i for tok, i in specials.items() if i < size}
    taken = set(below.values())
    for i in range(len(CHARS), size):
        if i not in taken:
            vocab[f"<filler_{i}>"] = i
    vocab.update(below)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=f"<filler_{size - 1}>" if (size - 1) not in taken else None))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()  # decode() joins characters back without spaces
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **named_specials)
    fast.add_special_tokens({"additional_special_tokens": list(specials)})
    above = sorted((i, t) for t, i in specials.items() if i >= size)
    for expected, (i, t) in zip(range(size, size + len(above)), above):
        if i != expected or fast.convert_tokens_to_ids(t) != i:
            raise ValueError(f"special {t} should be at {i}; ids above `size` must be contiguous from {size}")
    if chat_template:
        fast.chat_template = chat_template
    return fast
