"""Next-token samplers, batched: one row per sequence, plain functions of the scores.

- `plain`: transformers' own temperature, top-k and top-p warpers, then a draw (what
  `generate(do_sample=True)` does), or the argmax when not sampling;
- `ras`: CosyVoice's repetition-aware sampling (`cosyvoice/utils/common.py: ras_sampling,
  nucleus_sampling, random_sampling` of FunAudioLLM/CosyVoice at ace7c47), each row as
  CosyVoice samples its one sequence.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


@dataclasses.dataclass(frozen=True)
class Sampler:
    """How a family draws the next token. `kind="ras"` uses CosyVoice's window and threshold."""

    kind: Literal["plain", "ras"] = "plain"
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k
    top_p: float = 1.0
    do_sample: bool = True
    win_size: int = 10  # ras: how many of the row's last tokens are checked for repeats
    tau_r: float = 0.1  # ras: a draw repeated win_size * tau_r times or more is drawn again


def plain_sample(scores: torch.Tensor, s: Sampler) -> torch.Tensor:
    """[B, V] logits -> [B] ids, as transformers' sampling: temperature, top-k, top-p, draw."""
    if not s.do_sample:
        return scores.argmax(-1)
    scores = scores.float()
    if s.temperature != 1.0:
        scores = TemperatureLogitsWarper(s.temperature)(None, scores)
    if s.top_k:
        scores = TopKLogitsWarper(min(s.top_k, scores.shape[-1]))(None, scores)
    if s.top_p < 1.0:
        scores = TopPLogitsWarper(s.top_p)(None, scores)
    return torch.multinomial(scores.softmax(-1), 1).squeeze(1)


def nucleus_sample(weighted_scores: torch.Tensor, top_p: float, top_k: int) -> torch.Tensor:
    """CosyVoice's `nucleus_sampling` per row: walk the probabilities from the largest (stable
    sort), keep token i while the mass kept before it is < top_p and fewer than top_k are kept,
    draw among the kept in proportion to their probabilities."""
    probs, order = weighted_scores.float().softmax(-1).sort(dim=-1, descending=True, stable=True)
    before = probs.cumsum(-1) - probs  # the mass kept before token i (CosyVoice's cum_prob)
    rank = torch.arange(probs.shape[-1], device=probs.device)
    kept = torch.where((before < top_p) & (rank < (top_k or probs.shape[-1])), probs, 0.0)
    return order.gather(-1, torch.multinomial(kept, 1)).squeeze(1)


def ras_sample(weighted_scores: torch.Tensor, history: torch.Tensor, filled: torch.Tensor, s: Sampler) -> torch.Tensor:
    """CosyVoice's `ras_sampling` per row. `history` [B, T] holds each row's generated tokens,
    `filled` [B] how many of them are real. A nucleus draw that already appears win_size * tau_r
    times or more among the row's last win_size tokens is excluded, and the row draws again
    from the whole distribution (`random_sampling`)."""
    top = nucleus_sample(weighted_scores, s.top_p, s.top_k)
    if history.shape[1] == 0:
        return top
    t = torch.arange(history.shape[1], device=history.device)
    window = (t < filled[:, None]) & (t >= filled[:, None] - s.win_size)  # decoded_tokens[-win_size:]
    repeats = ((history == top[:, None]) & window).sum(1)
    again = repeats >= s.win_size * s.tau_r
    if again.any():
        scores = weighted_scores[again].float().clone()
        scores[torch.arange(len(scores)), top[again]] = -float("inf")  # ace7c47: the repeated draw is excluded
        top = top.clone()
        top[again] = torch.multinomial(scores.softmax(-1), 1).squeeze(1)
    return top
