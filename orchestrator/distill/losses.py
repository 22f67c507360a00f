"""Distillation losses: logits, latents (SPADE's layer mapping), attention, embeddings,
and the ground-truth next-token loss on the speech span.

All take plain tensors, so each term can be checked against a hand-computed value.
Positions: logits at t predict the token at t+1, so a position counts when the
*next* label is a speech label (labels != -100).

Every term is a mean over tokens (`reduction="mean"`, the default) or, with
`reduction="sum"`, the same quantity summed over those tokens instead, so that gradient
accumulation can divide by the token count of a whole step (`token_counts`, `COUNTED_OVER`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


def latent_targets(kept: Sequence[int], n_teacher: int) -> list[int]:
    """For each student layer, the teacher layer whose output it should reproduce.

    Student layer i is a copy of teacher layer kept[i]; it stands for the whole block
    up to the next kept layer, so it is matched to the teacher's output at the last
    teacher layer before kept[i+1] (the teacher's last layer for the last student layer).
    """
    kept = list(kept)
    return [kept[i + 1] - 1 if i + 1 < len(kept) else n_teacher - 1 for i in range(len(kept))]


def speech_positions(labels: torch.Tensor) -> torch.Tensor:
    """Mask (B, T-1) of positions whose next token is a speech label."""
    return labels[:, 1:] != -100


# the tokens each term is a mean over: "speech" (positions whose next label is a speech label,
# `speech_positions`) or "mask" (real input positions, the attention mask)
COUNTED_OVER = {"ce": "speech", "kl": "speech", "latent": "mask", "attention": "mask", "embedding": "mask"}


def token_counts(batch: dict[str, torch.Tensor]) -> dict[str, int]:
    """How many tokens of `batch` each kind of term averages over (see `COUNTED_OVER`)."""
    return {
        "speech": int(speech_positions(batch["labels"]).sum()),
        "mask": int(batch["attention_mask"].sum()),
    }


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction {reduction!r}: use 'mean' or 'sum'")


def speech_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    kind: str = "forward",
    beta: float = 0.5,
    reduction: str = "mean",
) -> torch.Tensor:
    """Divergence between teacher (T) and student (S) over the speech-token distribution, times
    T^2 (Hinton). Both logits are (N, speech ids): the head's speech-id rows at the N positions
    whose next label is speech (`speech_head.speech_outputs`). `forward`: KL(T||S), mass-covering;
    `reverse`: KL(S||T), mode-seeking (a small student stops spreading mass over what it cannot
    model); `jsd`: GKD's generalised Jensen-Shannon, beta KL(T||M) + (1-beta) KL(S||M) with
    M = beta T + (1-beta) S. `reduction`: the mean over speech positions, or their sum."""
    _check_reduction(reduction)
    s = F.log_softmax(student_logits.float() / temperature, -1)
    t = F.log_softmax(teacher_logits.float() / temperature, -1)
    # kl(log q, log p) = KL(p||q), per position (rows), averaged or summed over positions
    kl = partial(F.kl_div, log_target=True, reduction="batchmean" if reduction == "mean" else "sum")
    if kind == "forward":
        d = kl(s, t)
    elif kind == "reverse":
        d = kl(t, s)
    elif kind == "jsd":
        if not 0 < beta < 1:
            raise ValueError(f"jsd beta {beta}: use a value strictly between 0 and 1")
        m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), 0)
        d = beta * kl(m, t) + (1 - beta) * kl(m, s)
    else:
        raise ValueError(f"kl kind {kind!r}: use 'forward', 'reverse' or 'jsd'")
    return d * temperature**2


# logits held at once by `speech_terms`: 2^27 (512 MiB in fp32) per chunk of positions, about 690
# of LLaSA's; beyond one chunk the head runs again in backward (measured: benchmarks/README.md)
CHUNK_ELEMENTS = 2**27


def speech_terms(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    speech_ids: torch.Tensor | None = None,
    ce: bool = True,
    temperature: float = 1.0,
    kind: str = "forward",
    beta: float = 0.5,
    reduction: str = "mean",
    chunk_rows: int | None = None,
) -> dict[str, torch.Tensor]:
    """The terms the output head feeds, from the student's final hidden states at the N speech
    positions (`hidden` (N, H), their next labels `targets` (N,)) and its head (`weight`, `bias`):
    "ce", the next-token cross-entropy over the whole vocabulary (`ce`), and "kl", `speech_kl`
    against `teacher_logits` (N, len(speech_ids)) when given.

    The head runs on `chunk_rows` positions at a time (default: about `CHUNK_ELEMENTS` logits),
    both terms reading the same logits, and when there is more than one chunk and gradients are
    wanted, again in backward (activation checkpointing): no N x vocabulary tensor is ever held.
    Without "ce" only the speech ids' rows of the head run. `reduction`: mean over positions, or sum."""
    _check_reduction(reduction)
    ids = None if speech_ids is None else speech_ids.to(hidden.device)
    if not ce:  # the divergence alone: the speech rows of the head are all it reads
        weight, bias = weight[ids], None if bias is None else bias[ids]
        ids = torch.arange(len(ids), device=hidden.device)
    names = (["ce"] if ce else []) + (["kl"] if teacher_logits is not None else [])
    rows = chunk_rows or max(1, CHUNK_ELEMENTS // weight.shape[0])

    def summed(h: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        logits = F.linear(h, weight, bias)
        out = []
        if ce:
            out.append(F.cross_entropy(logits.float(), y, reduction="sum"))
        if t is not None:
            out.append(speech_kl(logits[:, ids], t, temperature, kind, beta, reduction="sum"))
        return tuple(out)

    if hidden.shape[0] == 0:  # no speech position: zeros that still reach the head (DDP waits for its gradient)
        return dict.fromkeys(names, (hidden.sum() + weight.sum()).float() * 0.0)
    recompute = torch.is_grad_enabled() and hidden.shape[0] > rows  # one chunk: nothing to save
    totals = [hidden.new_zeros((), dtype=torch.float32) for _ in names]
    for a in range(0, hidden.shape[0], rows):
        part = (
            hidden[a : a + rows],
            targets[a : a + rows],
            None if teacher_logits is None else teacher_logits[a : a + rows],
        )
        sums = checkpoint(summed, *part, use_reentrant=False) if recompute else summed(*part)
        totals = [x + y for x, y in zip(totals, sums)]
    n = max(hidden.shape[0], 1) if reduction == "mean" else 1
    return {k: v / n for k, v in zip(names, totals)}


def speech_targets(labels: torch.Tensor) -> torch.Tensor:
    """The next labels at the speech positions, in the order `speech_positions` takes them: (N,)."""
    return labels[:, 1:][speech_positions(labels)]


def latent_loss(
    student_hidden: Sequence[torch.Tensor],
    teacher_hidden: Sequence[torch.Tensor],
    targets: Sequence[int],
    attention_mask: torch.Tensor,
    kind: str = "mse",
    reduction: str = "mean",
) -> torch.Tensor:
    """Mean over student layers of the distance between student layer i's output and
    the teacher's output at layer targets[i].

    `*_hidden` are layer outputs indexed by layer (not including the embeddings).
    The distance is per real position (mse: averaged over the hidden size), then averaged
    over positions (`reduction="mean"`) or summed over them (`"sum"`; still averaged over layers).
    """
    _check_reduction(reduction)
    mask = attention_mask.bool()
    losses = []
    for i, j in enumerate(targets):
        s, t = student_hidden[i][mask].float(), teacher_hidden[j][mask].float()
        if kind == "mse":
            losses.append(F.mse_loss(s, t) if reduction == "mean" else (s - t).square().mean(-1).sum())
        elif kind == "cosine":
            d = 1 - F.cosine_similarity(s, t, dim=-1)
            losses.append(d.mean() if reduction == "mean" else d.sum())
        else:
            raise ValueError(f"latent loss kind {kind!r}: use 'mse' or 'cosine'")
    return torch.stack(losses).mean()


def attention_loss(
    student_attn: Sequence[torch.Tensor],
    teacher_attn: Sequence[torch.Tensor],
    targets: Sequence[int],
    attention_mask: torch.Tensor,
    eps: float = 1e-8,
    reduction: str = "mean",
) -> torch.Tensor:
    """KL(teacher || student) between attention distributions (B, H, T, T) of mapped
    layers, averaged over heads and layers, and averaged (or, `reduction="sum"`, summed)
    over real query positions."""
    _check_reduction(reduction)
    mask = attention_mask.bool()
    losses = []
    for i, j in enumerate(targets):
        s, t = student_attn[i].float(), teacher_attn[j].float()
        kl = (t * (torch.log(t + eps) - torch.log(s + eps))).sum(-1)  # (B, H, T)
        per_query = kl.mean(1)[mask]
        losses.append(per_query.mean() if reduction == "mean" else per_query.sum())
    return torch.stack(losses).mean()


def embedding_loss(
    student_embeds: torch.Tensor, teacher_embeds: torch.Tensor, attention_mask: torch.Tensor, reduction: str = "mean"
) -> torch.Tensor:
    """Squared distance of the input embeddings, averaged over the hidden size and averaged
    (or, `reduction="sum"`, summed) over real positions."""
    _check_reduction(reduction)
    mask = attention_mask.bool()
    s, t = student_embeds[mask].float(), teacher_embeds[mask].float()
    return F.mse_loss(s, t) if reduction == "mean" else (s - t).square().mean(-1).sum()


class AdaptiveWeights:
    """Divide each term by a running mean of its own magnitude, so every term
    contributes about its configured weight whatever its natural scale."""

    def __init__(self, momentum: float = 0.9, eps: float = 1e-8):
        self.momentum, self.eps = momentum, eps
        self.scale: dict[str, float] = {}

    def __call__(self, name: str, value: torch.Tensor) -> torch.Tensor:
        v = float(value.detach())
        divisor = self.divisor(name, v)
        self.update(name, v)
        return value / divisor

    def divisor(self, name: str, value: float) -> float:
        """What `name` would be divided by once `value` entered its running mean (nothing is stored)."""
        old = self.scale.get(name)
        return (value if old is None else self.momentum * old + (1 - self.momentum) * value) + self.eps

    def update(self, name: str, value: float) -> None:
        """Enter `value` into the running mean of `name`."""
        old = self.scale.get(name)
        self.scale[name] = value if old is None else self.momentum * old + (1 - self.momentum) * value

    def state_dict(self) -> dict:
        return dict(self.scale)

    def load_state_dict(self, state: dict) -> None:
        self.scale = dict(state)
