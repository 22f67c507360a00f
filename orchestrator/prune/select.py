"""Which layers to remove, given scores: lowest-k, best contiguous block, or
iterative (remove the least important layer, re-score the smaller model, repeat)."""

from __future__ import annotations

from torch import nn

from orchestrator.anatomy import decoder_layers
from orchestrator.config import STRATEGIES  # the names the config accepts
from orchestrator.prune.importance import LayerScores, ScoringContext, score_layers
from orchestrator.prune.surgery import layers_removed


def lowest(scores: LayerScores, k: int) -> list[int]:
    """The k layers with the lowest scores (ties: earlier layer first)."""
    order = sorted(range(len(scores.scores)), key=lambda i: (scores.scores[i], i))
    return sorted(order[:k])


def contiguous(scores: LayerScores, k: int) -> list[int]:
    """The block of k adjacent layers that matters least: the scorer's own block
    scores when it has them for this size (angular), else the lowest sum of scores."""
    n = len(scores.scores)
    if k >= n:
        raise ValueError(f"cannot remove {k} of {n} layers")
    if scores.block_scores is not None and scores.block_size == k:
        start = min(scores.block_scores, key=lambda s: (scores.block_scores[s], s))
    else:
        start = min(range(n - k + 1), key=lambda s: (sum(scores.scores[s : s + k]), s))
    return list(range(start, start + k))


def iterative(scorer: str, model: nn.Module, ctx: ScoringContext, k: int) -> tuple[list[int], list[LayerScores]]:
    """Remove one layer at a time, re-scoring what is left; returns the removed
    teacher indices and the scores seen at each round."""
    dropped: list[int] = []
    rounds: list[LayerScores] = []
    n = len(decoder_layers(model))
    for _ in range(k):
        remaining = [i for i in range(n) if i not in dropped]
        with layers_removed(model, dropped):
            s = score_layers(scorer, model, ctx)
        rounds.append(s)
        dropped.append(remaining[lowest(s, 1)[0]])
    return sorted(dropped), rounds


def choose_layers(
    strategy: str, scorer: str, model: nn.Module, ctx: ScoringContext, k: int
) -> tuple[list[int], LayerScores]:
    """Layers to drop by `strategy`, and the (first round of) scores behind the choice."""
    if strategy == "iterative":
        dropped, rounds = iterative(scorer, model, ctx, k)
        return dropped, rounds[0]
    scores = score_layers(scorer, model, ctx)
    if strategy == "lowest":
        return lowest(scores, k), scores
    if strategy == "contiguous":
        return contiguous(scores, k), scores
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
