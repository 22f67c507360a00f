"""Layer importance: named, pluggable scorers, one score per layer (higher = matters
more) plus the evidence behind it.

- wli: the paper's WER-based Layer Importance, WER(without l) - WER(full), on a
  synthesized and transcribed held-out set;
- block_influence: 1 - cos(layer input, layer output) (ShortGPT);
- angular: angular distance between the hidden states n layers apart (Gromov et
  al.); per layer for n = 1, and per contiguous block of the size to remove;
- loss_delta: teacher-forced speech-token loss without the layer minus with it;
- last_n, random: baselines.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from orchestrator.config import ConfigError, EvalConfig
from orchestrator.distill.data import collate
from orchestrator.distill.losses import speech_ce
from orchestrator.evaluate.synthesis import evaluate_model
from orchestrator.prune.surgery import decoder_layers, layers_removed
from orchestrator.world import World


@dataclasses.dataclass
class LayerScores:
    scorer: str
    scores: list[float]
    evidence: dict = dataclasses.field(default_factory=dict)
    block_scores: dict[int, float] | None = None  # start -> score of the block of `block_size` layers
    block_size: int | None = None


@dataclasses.dataclass
class ScoringContext:
    """What a scorer may use: the world, held-out items, calibration pairs, how many
    layers will be removed (for block scorers), and the evaluation settings."""

    world: World
    eval_cfg: EvalConfig
    n_items: int
    n_pairs: int
    n_drop: int
    batch_size: int = 32
    seed: int = 0
    progress: bool = False

    def calibration_batches(self) -> list[dict[str, torch.Tensor]]:
        pairs = [self.world.train_pairs[i] for i in range(min(self.n_pairs, len(self.world.train_pairs)))]
        return [collate(self.world.family, pairs[i:i + self.batch_size]) for i in range(0, len(pairs), self.batch_size)]


Scorer = Callable[[nn.Module, ScoringContext], LayerScores]


def _n_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def wer_without(model: nn.Module, ctx: ScoringContext, layers: Sequence[int] = ()) -> float:
    """WER on the held-out items with `layers` removed (none: the full model)."""
    with layers_removed(model, layers):
        wer = evaluate_model(model, ctx.world, ctx.world.dev_items[: ctx.n_items], ctx.eval_cfg).wer
    if math.isnan(wer):
        raise ConfigError("wli needs audio to transcribe, and this world's codec makes none here (CosyVoice 2 "
                          "without CosyVoice's code on PYTHONPATH); install it, or use a scorer that needs no "
                          "audio: block_influence, angular or loss_delta")
    return wer


def wli_from_wers(full_wer: float, wer_without_layer: Sequence[float], n_items: int) -> LayerScores:
    return LayerScores("wli", [w - full_wer for w in wer_without_layer],
                       {"full_wer": full_wer, "wer_without": list(wer_without_layer), "n_items": n_items})


def wli_scores(model: nn.Module, ctx: ScoringContext) -> LayerScores:
    base = wer_without(model, ctx)
    layers = tqdm(range(_n_layers(model)), desc="wli", disable=not ctx.progress, leave=False)
    return wli_from_wers(base, [wer_without(model, ctx, [l]) for l in layers], min(ctx.n_items, len(ctx.world.dev_items)))


@torch.no_grad()
def layer_io(model: nn.Module, batch: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """[input of layer 0, output of layer 0, ..., output of layer L-1], before the final norm."""
    device = next(model.parameters()).device
    layers = decoder_layers(model)
    states: list[torch.Tensor] = []

    def keep_input(_module, args, kwargs):
        states.append((args[0] if args else kwargs["hidden_states"]).detach())

    def keep_output(_module, _args, output):
        states.append((output[0] if isinstance(output, tuple) else output).detach())

    hooks = [layers[0].register_forward_pre_hook(keep_input, with_kwargs=True)]
    hooks += [layer.register_forward_hook(keep_output) for layer in layers]
    try:
        model.eval()
        model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return states


def _mean_cos(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a[mask].float(), b[mask].float(), dim=-1).clamp(-1, 1).mean())


def _pairwise_cos(model: nn.Module, ctx: ScoringContext, gap: int) -> list[float]:
    """Mean cosine between the hidden state entering layer l and the one leaving layer l+gap-1."""
    sums, count = None, 0
    for batch in ctx.calibration_batches():
        states = layer_io(model, batch)
        mask = batch["attention_mask"].bool().to(states[0].device)
        cos = [_mean_cos(states[l], states[l + gap], mask) for l in range(len(states) - gap)]
        sums = cos if sums is None else [s + c for s, c in zip(sums, cos)]
        count += 1
    return [s / count for s in sums]


def block_influence_scores(model: nn.Module, ctx: ScoringContext) -> LayerScores:
    cos = _pairwise_cos(model, ctx, 1)
    return LayerScores("block_influence", [1 - c for c in cos], {"cos_in_out": cos})


def angular_scores(model: nn.Module, ctx: ScoringContext) -> LayerScores:
    per_layer = [math.acos(c) / math.pi for c in _pairwise_cos(model, ctx, 1)]
    n = max(1, ctx.n_drop)
    block = {l: math.acos(c) / math.pi for l, c in enumerate(_pairwise_cos(model, ctx, n))}
    return LayerScores("angular", per_layer, {"block_distance": block}, block_scores=block, block_size=n)


@torch.no_grad()
def _speech_loss(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> float:
    device = next(model.parameters()).device
    model.eval()
    total = 0.0
    for b in batches:
        logits = model(input_ids=b["input_ids"].to(device), attention_mask=b["attention_mask"].to(device), use_cache=False).logits
        total += float(speech_ce(logits, b["labels"].to(device)))
    return total / len(batches)


def loss_delta_scores(model: nn.Module, ctx: ScoringContext) -> LayerScores:
    batches = ctx.calibration_batches()
    base = _speech_loss(model, batches)
    without = []
    for layer in tqdm(range(_n_layers(model)), desc="loss_delta", disable=not ctx.progress, leave=False):
        with layers_removed(model, [layer]):
            without.append(_speech_loss(model, batches))
    return LayerScores("loss_delta", [w - base for w in without], {"full_loss": base, "loss_without": without})


def last_n_scores(model: nn.Module, ctx: ScoringContext) -> LayerScores:
    n = _n_layers(model)
    return LayerScores("last_n", [float(n - 1 - l) for l in range(n)])


def random_scores(model: nn.Module, ctx: ScoringContext) -> LayerScores:
    rng = np.random.default_rng(ctx.seed)
    return LayerScores("random", rng.random(_n_layers(model)).tolist(), {"seed": ctx.seed})


SCORERS: dict[str, Scorer] = {
    "wli": wli_scores,
    "block_influence": block_influence_scores,
    "angular": angular_scores,
    "loss_delta": loss_delta_scores,
    "last_n": last_n_scores,
    "random": random_scores,
}


def score_layers(name: str, model: nn.Module, ctx: ScoringContext) -> LayerScores:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}")
    return SCORERS[name](model, ctx)
