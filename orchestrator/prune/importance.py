"""Layer importance: named, pluggable scorers, one score per layer (higher = matters
more) plus the evidence behind it.

- wli: the paper's WER-based Layer Importance, WER(without l) - WER(full), on a
  synthesized and transcribed held-out set;
- block_influence: 1 - cos(layer input, layer output), the expectation over every real
  token (ShortGPT; sramshetty/ShortGPT `short_gpt/metrics.py:block_influence` at 78d9615);
- angular: arccos(cos)/pi between the last real token's hidden states n layers apart,
  averaged over sequences (Gromov et al., "The Unreasonable Ineffectiveness of the Deeper
  Layers", Sec. 3.2; as ShortGPT's `compute_bi(angular=True)` and arcee-ai/PruneMe
  `angular_distance` at faee6c9 take it); per layer for n = 1, and per contiguous block of
  the size to remove;
- loss_delta: teacher-forced speech-token loss without the layer minus with it;
- last_n, random: baselines.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from orchestrator import config
from orchestrator.anatomy import decoder_layers
from orchestrator.config import ConfigError, EvalConfig
from orchestrator.distill.data import collate
from orchestrator.distill.losses import speech_targets, speech_terms
from orchestrator.distill.speech_head import speech_outputs
from orchestrator.evaluate.synthesis import evaluate_model
from orchestrator.prune.surgery import layers_removed
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
        return [
            collate(self.world.family, pairs[i : i + self.batch_size]) for i in range(0, len(pairs), self.batch_size)
        ]


Scorer = Callable[[nn.Module, ScoringContext], LayerScores]


def _n_layers(model: nn.Module) -> int:
    return len(decoder_layers(model))


def wer_without(model: nn.Module, ctx: ScoringContext, layers: Sequence[int] = ()) -> float:
    """WER on the held-out items with `layers` removed (none: the full model)."""
    with layers_removed(model, layers):
        wer = evaluate_model(model, ctx.world, ctx.world.dev_items[: ctx.n_items], ctx.eval_cfg).wer
    if math.isnan(wer):
        raise ConfigError(
            "wli needs audio to transcribe, and this world's codec makes none here (CosyVoice 2 "
            "without CosyVoice's code on PYTHONPATH); install it, or use a scorer that needs no "
            "audio: block_influence, angular or loss_delta"
        )
    return wer


def wli_from_wers(full_wer: float, wer_without_layer: Sequence[float], n_items: int) -> LayerScores:
    return LayerScores(
        "wli",
        [w - full_wer for w in wer_without_layer],
        {"full_wer": full_wer, "wer_without": list(wer_without_layer), "n_items": n_items},
    )


def wli_scores(model: nn.Module, ctx: ScoringContext) -> LayerScores:
    base = wer_without(model, ctx)
    layers = tqdm(range(_n_layers(model)), desc="wli", disable=not ctx.progress, leave=False)
    return wli_from_wers(
        base, [wer_without(model, ctx, [l]) for l in layers], min(ctx.n_items, len(ctx.world.dev_items))
    )


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
        model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device), use_cache=False
        )
    finally:
        for h in hooks:
            h.remove()
    return states


def _cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise cosine as ShortGPT's `block_influence` takes it: x.y / (|x| |y|) in fp32, no eps;
    a zero vector's NaN becomes 0.5 (its `nan_to_num(nan=0.5)`)."""
    a, b = a.float(), b.float()
    return ((a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))).nan_to_num(nan=0.5)


def last_real_token(mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last unpadded position, for left or right padding."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    return torch.where(mask.bool(), positions, -1).max(dim=1).values


def block_influence_scores(model: nn.Module, ctx: ScoringContext) -> LayerScores:
    """ShortGPT's Block Influence, BI_l = 1 - E_{X,t}[cos(x_l,t, x_l+1,t)], the expectation over
    every real token of the calibration pairs (padding left out, so batches of any size weigh each
    token equally). Hidden states as ShortGPT's Llama wrapper takes them: the embedding output,
    then each layer's output before the final norm."""
    sums, tokens = None, 0
    for batch in ctx.calibration_batches():
        states = layer_io(model, batch)
        real = batch["attention_mask"].bool().to(states[0].device)
        # per layer: the sum of 1 - cos over the batch's real tokens (ShortGPT sums, we divide once at the end)
        bi = [float((1 - _cos(states[l][real], states[l + 1][real])).sum()) for l in range(len(states) - 1)]
        sums = bi if sums is None else [s + b for s, b in zip(sums, bi)]
        tokens += int(real.sum())
    scores = [s / tokens for s in sums]
    return LayerScores("block_influence", scores, {"cos_in_out": [1 - s for s in scores], "tokens": tokens})


def _angular_distance(model: nn.Module, ctx: ScoringContext, gap: int) -> list[float]:
    """Gromov et al.'s d(x^l, x^(l+gap)) = arccos(cos)/pi on each sequence's last real token,
    averaged over sequences; x^l enters layer l, x^(l+gap) leaves layer l+gap-1."""
    sums, sequences = None, 0
    for batch in ctx.calibration_batches():
        states = layer_io(model, batch)
        rows = torch.arange(len(batch["input_ids"]), device=states[0].device)
        last = last_real_token(batch["attention_mask"].to(states[0].device))
        d = [
            float((torch.arccos(_cos(states[l][rows, last], states[l + gap][rows, last]).clamp(-1, 1)) / math.pi).sum())
            for l in range(len(states) - gap)
        ]
        sums = d if sums is None else [s + x for s, x in zip(sums, d)]
        sequences += len(rows)
    return [s / sequences for s in sums]


def angular_scores(model: nn.Module, ctx: ScoringContext) -> LayerScores:
    per_layer = _angular_distance(model, ctx, 1)
    n = max(1, ctx.n_drop)
    block = dict(enumerate(_angular_distance(model, ctx, n)))
    return LayerScores("angular", per_layer, {"block_distance": block}, block_scores=block, block_size=n)


@torch.no_grad()
def _speech_loss(model: nn.Module, batches: Sequence[dict[str, torch.Tensor]]) -> float:
    device = next(model.parameters()).device
    model.eval()
    total = 0.0
    for b in batches:
        ids, mask = b["input_ids"].to(device), b["attention_mask"].to(device)
        inputs = dict(input_ids=ids, attention_mask=mask, use_cache=False)
        out = speech_outputs(model, inputs, b["labels"])
        targets = speech_targets(b["labels"]).to(device)
        total += float(speech_terms(out.final, out.head.weight, out.head.bias, targets)["ce"])
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
# the config's allowed names are this registry's (config cannot import torch code, so it holds the names)
assert tuple(SCORERS) == config.SCORERS, "config.SCORERS and the scorer registry must list the same names"


def score_layers(name: str, model: nn.Module, ctx: ScoringContext) -> LayerScores:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; choose one of {', '.join(SCORERS)}")
    return SCORERS[name](model, ctx)
