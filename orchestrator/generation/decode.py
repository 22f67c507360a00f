"""Speech generation for every model of a family, batched with left padding, one function
(`decode`) behind evaluation, WLI scoring, speed measurements and on-policy rollouts.

- The family's rules (`DecodingRules`): its stop ids, the sampler, and per-row length bounds.
- The speech-only head: logits only for the rows a speech token can take (the family's
  speech ids and stop ids), from a contiguous slice of the head's weight (a view, no copy);
  ids inside the slice that are neither are masked. Sampling is then exactly the full head's
  distribution renormalised over those ids.
- Paths: `eager` (a KV cache allocated once and read back up to what it holds: transformers'
  dynamic cache concatenates every layer's keys at every step, half of a small model's decode
  time), `static` (a static KV cache sized from the batch's longest prompt plus its longest
  allowance, attended over whole), `compiled` (static cache, the one-token step compiled with
  torch.compile; CUDA graphs on a GPU) and `generate` (transformers' `generate` over the full
  head: the reference, plain samplers and the end id only).
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

import torch
from torch import nn
from transformers import StaticCache
from transformers.cache_utils import Cache, StaticLayer

from orchestrator.batching import left_pad
from orchestrator.config import DECODE_PATHS
from orchestrator.generation.sampling import Sampler, plain_sample, ras_sample

if TYPE_CHECKING:
    from orchestrator.config import EvalConfig
    from orchestrator.world import Family

Path = Literal[DECODE_PATHS]  # type: ignore[valid-type]


@dataclasses.dataclass(frozen=True)
class DecodingRules:
    """How a family's speech is decoded: generation ends at any of `stop_ids`; `eos_id` is the
    one stop id masked while a row is shorter than its minimum (CosyVoice's ignore_eos);
    `head_ids` are the vocabulary ids a speech position can take (speech and stop ids)."""

    stop_ids: tuple[int, ...]
    eos_id: int
    head_ids: tuple[int, ...]
    pad_id: int
    sampler: Sampler


def decoding_rules(family: Family, cfg: EvalConfig, **sampler: object) -> DecodingRules:
    """The family's rules with the evaluation's sampling settings (`sampler` overrides them)."""
    settings = dict(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p) | sampler
    head = sorted({*map(int, family.speech_ids.tolist()), *family.stop_ids})
    return DecodingRules(
        tuple(family.stop_ids),
        family.end_id,
        tuple(head),
        family.pad_id,
        dataclasses.replace(family.sampling, **settings),
    )


def length_bounds(family: Family, items: Sequence, max_new_tokens: int) -> tuple[list[int], list[int]]:
    """Each item's (fewest, most) new tokens: the family's own bounds, capped by max_new_tokens."""
    lo, hi = [], []
    for it in items:
        a, b = family.length_bounds(it.prompt_text, it.target_text)
        hi.append(min(b, max_new_tokens) if b is not None else max_new_tokens)
        lo.append(min(a, hi[-1]))
    return lo, hi


@dataclasses.dataclass(frozen=True)
class Generated:
    tokens: list[int]  # up to, not including, the stop token
    stopped: bool  # ended at a stop id (not at its length allowance)


def decoder_parts(model: nn.Module) -> tuple[nn.Module, nn.Module, nn.Linear]:
    """(input embedding, decoder body returning normed hidden states, output head) of a causal LM;
    models whose ids are not a plain embedding lookup provide `speech_decoder_parts()`."""
    model = getattr(model, "module", model)  # DDP
    if hasattr(model, "speech_decoder_parts"):
        return model.speech_decoder_parts()
    return model.get_input_embeddings(), model.get_decoder(), model.get_output_embeddings()


def head_slice(head: nn.Linear, head_ids: Sequence[int] | None) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """(weight rows, bias, first id) of the rows from the smallest to the largest head id: a view
    of the weight, nothing copied whatever the vocabulary size. Ids inside the slice that are not
    head ids get a bias of -inf, so they are never sampled."""
    if head_ids is None:
        return head.weight, head.bias, 0
    lo, hi = min(head_ids), max(head_ids) + 1
    weight = head.weight[lo:hi]
    blocked = torch.ones(hi - lo, dtype=torch.bool, device=weight.device)
    blocked[torch.as_tensor(sorted(head_ids), device=weight.device) - lo] = False
    if head.bias is None and not blocked.any():
        return weight, None, lo
    bias = head.bias[lo:hi].detach().clone() if head.bias is not None else weight.new_zeros(hi - lo)
    return weight, bias.masked_fill(blocked, -float("inf")), lo


class GrowingLayer(StaticLayer):
    """A static cache layer read back only up to what it holds: no copy per step, and attention
    over the real length (not compilable: the length is read on the host)."""

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        keys, values = super().update(key_states, value_states)
        n = int(self.cumulative_length)
        return keys[:, :, :n], values[:, :, :n]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return int(self.cumulative_length) + query_length, 0


def growing_cache(model: nn.Module, length: int) -> Cache:
    return Cache(layers=[GrowingLayer(max_cache_len=length) for _ in range(model.config.num_hidden_layers)])


class _Stepper:
    """One model's decode step over a static cache, compiled once per (batch, cache length)."""

    def __init__(self, model: nn.Module, batch: int, length: int, compiled: bool):
        self.embed, self.body, _ = decoder_parts(model)
        self.cache = StaticCache(config=model.config, max_cache_len=length)
        self.shape = (batch, length)
        self.run = self._step
        if compiled:
            mode = "reduce-overhead" if next(model.parameters()).is_cuda else None  # CUDA graphs on a GPU
            self.run = torch.compile(self._step, mode=mode, dynamic=False, fullgraph=False)

    def _step(self, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = self.body(
            inputs_embeds=self.embed(ids), attention_mask=mask, position_ids=positions, cache=self.cache, use_cache=True
        )
        return out.last_hidden_state[:, -1]


_steppers: weakref.WeakKeyDictionary[nn.Module, dict] = weakref.WeakKeyDictionary()


def _stepper(model: nn.Module, batch: int, length: int, compiled: bool) -> _Stepper:
    """Reuse a model's stepper (its cache and compiled graph) when the shape and depth recur."""
    key = (batch, length, compiled, len(decoder_parts(model)[1].layers))
    per_model = _steppers.setdefault(model, {})
    if key not in per_model:
        per_model.clear()  # one live cache per model: memory stays bounded
        per_model[key] = _Stepper(model, batch, length, compiled)
    stepper = per_model[key]
    stepper.cache.reset()
    return stepper


def resolve_path(path: Path, device: torch.device) -> str:
    """`auto`: compiled with CUDA graphs on a GPU; eager on a CPU, where compiling each new depth
    (every WLI candidate, every student) costs more than it saves, and a static cache attends over
    its whole length at every step (measured: benchmarks/README.md, "Decode speed of the real shapes")."""
    if path != "auto":
        return path
    return "compiled" if device.type == "cuda" else "eager"


@torch.no_grad()
def decode(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    rules: DecodingRules,
    min_new: Sequence[int],
    max_new: Sequence[int],
    path: Path = "auto",
    speech_head: bool = True,
) -> list[Generated]:
    """Continue each prompt until it samples a stop id or reaches its `max_new` tokens; before
    `min_new` tokens its eos id is masked. Rows are independent: a batch decodes exactly as its
    rows would alone, up to floating-point reassociation."""
    model = getattr(model, "module", model)
    device = next(model.parameters()).device
    path = resolve_path(path, device)
    if path == "generate":
        return _generate(model, prompts, rules, min_new, max_new)
    embed, body, head = decoder_parts(model)
    weight, bias, first_id = head_slice(head, rules.head_ids if speech_head else None)
    ids, prompt_mask = (t.to(device) for t in left_pad(prompts, rules.pad_id))
    rows, width = ids.shape
    steps = max(max_new)
    lo = torch.as_tensor(list(min_new), device=device)
    hi = torch.as_tensor(list(max_new), device=device)
    stop = torch.as_tensor(rules.stop_ids, device=device)
    eos_col = rules.eos_id - first_id
    longest_min = max(min_new)
    check_every = 16 if device.type == "cuda" else 1  # `done.all()` waits for the GPU: ask now and then

    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)  # as generate: left padding does not shift positions
    length = -(-(width + steps) // 64) * 64  # rounded up, so nearby batch shapes share one cache and graph
    if path == "eager":
        cache, mask, stepper = growing_cache(model, length), prompt_mask, None
    else:
        stepper = _stepper(model, rows, length, compiled=path == "compiled")
        cache = stepper.cache
        mask = torch.ones(rows, length, dtype=prompt_mask.dtype, device=device)  # future slots: hidden by causality
        mask[:, :width] = prompt_mask
    hidden = body(
        inputs_embeds=embed(ids), attention_mask=mask, position_ids=positions, cache=cache, use_cache=True
    ).last_hidden_state[:, -1]
    next_position = prompt_mask.sum(1, keepdim=True)

    out = torch.full((rows, steps), rules.pad_id, dtype=torch.long, device=device)
    filled = torch.zeros(rows, dtype=torch.long, device=device)
    done = hi <= 0
    stopped = torch.zeros(rows, dtype=torch.bool, device=device)
    for i in range(steps):
        logits = nn.functional.linear(hidden, weight, bias).float()
        if i < longest_min:  # a row still too short: its end is not a choice (CosyVoice's ignore_eos)
            logits[:, eos_col] = logits[:, eos_col].masked_fill(i < lo, -float("inf"))
        token = _sample(logits, rules.sampler, out, filled) + first_id
        is_stop = torch.isin(token, stop) & ~done
        keep = ~done & ~is_stop
        out[:, i] = torch.where(keep, token, rules.pad_id)
        filled += keep.long()
        stopped |= is_stop
        done = done | is_stop | (i + 1 >= hi)
        if (i + 1) % check_every == 0 and bool(done.all()):
            break
        token = torch.where(done, rules.pad_id, token)[:, None]  # finished rows feed padding, never read
        if stepper is None:
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            hidden = body(
                inputs_embeds=embed(token), attention_mask=mask, position_ids=next_position, cache=cache, use_cache=True
            ).last_hidden_state[:, -1]
        else:
            hidden = stepper.run(token, next_position, mask).clone()  # clone: CUDA-graph outputs are reused
        next_position = next_position + 1
    out, filled, stopped = out.cpu(), filled.cpu(), stopped.cpu()
    return [Generated(out[r, : filled[r]].tolist(), bool(stopped[r])) for r in range(rows)]


def _sample(logits: torch.Tensor, sampler: Sampler, history: torch.Tensor, filled: torch.Tensor) -> torch.Tensor:
    if sampler.kind == "ras" and sampler.do_sample:
        if sampler.temperature != 1.0:
            logits = logits / sampler.temperature
        return ras_sample(logits.log_softmax(-1), history, filled, sampler)  # CosyVoice samples log-probs
    return plain_sample(logits, sampler)


def _generate(
    model: nn.Module,
    prompts: Sequence[Sequence[int]],
    rules: DecodingRules,
    min_new: Sequence[int],
    max_new: Sequence[int],
) -> list[Generated]:
    """transformers' `generate` over the full head: the reference path for plain samplers (one
    minimum length for the batch, the smallest of the rows')."""
    if rules.sampler.kind != "plain" and rules.sampler.do_sample:  # greedy is the same for every sampler
        raise ValueError(
            f"evaluate.decode=generate samples plainly; this family samples with {rules.sampler.kind!r}: "
            "use decode auto, compiled, static or eager"
        )
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, rules.pad_id)
    s = rules.sampler
    sampling = dict(temperature=s.temperature, top_p=s.top_p, top_k=s.top_k or None) if s.do_sample else {}
    gen = model.generate(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        do_sample=s.do_sample,
        max_new_tokens=max(max_new),
        min_new_tokens=min(min_new),
        eos_token_id=list(rules.stop_ids),
        pad_token_id=rules.pad_id,
        **sampling,
    )[:, ids.shape[1] :].cpu()
    out = []
    for row, cap in zip(gen.tolist(), max_new):
        row = row[:cap]
        end = next((k for k, t in enumerate(row) if t in rules.stop_ids), None)
        out.append(Generated(row[:end] if end is not None else row, end is not None))
    return out
