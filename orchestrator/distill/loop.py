"""The training step: multi-level distillation of a pruned student from its frozen
teacher (or plain next-token training when there is no teacher).

Plain PyTorch, one process; a distributed trainer wraps the student in DDP or shards it
(`sharding.shard_student`, FSDP2) and calls the same `train_step` per worker.

Gradient accumulation is exact (as in torchtune and nanoGPT): a step's gradient is that of
the per-token mean loss over all its micro-batches on all ranks, whatever their sizes, and
DDP all-reduces the gradients once per step, on the last micro-batch.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import random
import zipfile
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from orchestrator.config import DistillConfig
from orchestrator.distill import data, losses, sharding
from orchestrator.distill.speech_head import SpeechOutputs, speech_outputs
from orchestrator.files import StateError, atomic_write, differing_keys


@dataclasses.dataclass
class TrainState:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None
    adaptive: losses.AdaptiveWeights | None
    ema: WeightAverage | None = None
    step: int = 0
    tokens: int = 0


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """Which terms to compute and how: built once from the config and the layer sets."""

    weights: dict[str, float]
    temperature: float
    latent_kind: str
    speech_ids: torch.Tensor
    targets: tuple[int, ...] = ()  # student layer i -> teacher layer targets[i]
    on_policy: float = 0.0  # share of steps trained on the student's own continuations
    rollout_temperature: float = 1.0
    pad_id: int = 0
    end_id: int = 0
    kl_kind: str = "forward"
    jsd_beta: float = 0.5
    stop_ids: tuple[int, ...] = ()  # on-policy rollouts stop at any of these (default: end_id)

    @property
    def needs_hidden(self) -> bool:
        return self.weights.get("latent", 0) > 0 or self.weights.get("embedding", 0) > 0

    @property
    def needs_attention(self) -> bool:
        return self.weights.get("attention", 0) > 0


def loss_spec(
    cfg: DistillConfig,
    speech_ids: torch.Tensor,
    kept: Sequence[int] = (),
    n_teacher: int = 0,
    pad_id: int = 0,
    end_id: int = 0,
    stop_ids: Sequence[int] = (),
) -> LossSpec:
    weights = {k: v for k, v in cfg.weights.model_dump().items() if v > 0}
    if not weights:
        raise ValueError("distill.weights: every weight is 0; give at least one term a positive weight")
    targets = tuple(losses.latent_targets(kept, n_teacher)) if kept else ()
    return LossSpec(
        weights,
        cfg.temperature,
        cfg.latent_loss,
        speech_ids,
        targets,
        cfg.on_policy,
        cfg.rollout_temperature,
        pad_id,
        end_id,
        cfg.kl_kind,
        cfg.jsd_beta,
        tuple(stop_ids),
    )


def is_on_policy_step(step: int, share: float) -> bool:
    """Exactly `share` of the steps, spread evenly."""
    return share > 0 and math.floor((step + 1) * share) > math.floor(step * share)


def lm_spec(speech_ids: torch.Tensor) -> LossSpec:
    """Plain next-token training on the speech span (how the mini teacher is trained)."""
    return LossSpec({"ce": 1.0}, 1.0, "mse", speech_ids)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """Mixed precision where the device supports it: bf16 (or fp16) on CUDA, fp32 on CPU."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


class WeightAverage:
    """Exponential moving average of the trainable weights (decay per optimizer step):
    the averaged student is less at the mercy of the last few noisy steps."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                self.shadow[n].lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        for n, p in model.named_parameters():
            if n in self.shadow:
                p.copy_(self.shadow[n])

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.shadow = state["decay"], state["shadow"]


def make_state(
    model: nn.Module,
    lr: float,
    warmup: int,
    total_steps: int,
    precision: str = "auto",
    adaptive: bool = False,
    weight_decay: float = 0.01,
    ema: float = 0.0,
) -> TrainState:
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=lr, betas=(0.9, 0.95), weight_decay=weight_decay
    )

    def schedule(step: int) -> float:  # linear warm-up, cosine decay to 10%
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))

    scaler = torch.amp.GradScaler("cuda") if autocast_dtype(precision, device) == torch.float16 else None
    return TrainState(
        model,
        opt,
        torch.optim.lr_scheduler.LambdaLR(opt, schedule),
        scaler,
        losses.AdaptiveWeights() if adaptive else None,
        WeightAverage(getattr(model, "module", model), ema) if ema else None,
    )


def term_names(spec: LossSpec, with_teacher: bool, ground_truth: bool = True) -> list[str]:
    """The terms `compute_losses` returns (no ground-truth loss on the student's own rollouts)."""
    names = ["ce"] if "ce" in spec.weights and ground_truth else []
    if with_teacher:
        names += [k for k in ("kl", "latent", "attention", "embedding") if k in spec.weights]
    return names


def compute_losses(
    student_out: SpeechOutputs,
    teacher_out: SpeechOutputs | None,
    batch: dict[str, torch.Tensor],
    spec: LossSpec,
    ground_truth: bool = True,
    reduction: str = "mean",
) -> dict[str, torch.Tensor]:
    """Every weighted term, unweighted (no ground-truth loss on the student's own rollouts), from
    the models' `speech_head.speech_outputs` (`model_outputs`).
    `reduction="sum"`: each term summed over the tokens it is a mean over (`losses.COUNTED_OVER`)."""
    w, labels, mask = spec.weights, batch["labels"], batch["attention_mask"]
    ce = "ce" in w and ground_truth
    kl = "kl" in w and teacher_out is not None
    terms: dict[str, torch.Tensor] = {}
    if ce or kl:  # both from one pass of the student's head over the speech positions
        head = student_out.head
        terms = losses.speech_terms(
            student_out.final,
            head.weight,
            head.bias,
            losses.speech_targets(labels).to(head.weight.device),
            teacher_out.speech_logits if kl else None,
            spec.speech_ids,
            ce=ce,
            temperature=spec.temperature,
            kind=spec.kl_kind,
            beta=spec.jsd_beta,
            reduction=reduction,
        )
    if teacher_out is None:
        return terms
    if "latent" in w:
        terms["latent"] = losses.latent_loss(
            student_out.hidden_states[1:],
            teacher_out.hidden_states[1:],
            spec.targets,
            mask,
            spec.latent_kind,
            reduction,
        )
    if "attention" in w:
        terms["attention"] = losses.attention_loss(
            student_out.attentions, teacher_out.attentions, spec.targets, mask, reduction=reduction
        )
    if "embedding" in w:
        terms["embedding"] = losses.embedding_loss(
            student_out.hidden_states[0], teacher_out.hidden_states[0], mask, reduction
        )
    return terms


def model_outputs(model, inputs: dict, batch: dict[str, torch.Tensor], spec: LossSpec, role: str) -> SpeechOutputs:
    """What the weighted terms read from `model` on `batch` (`role` "student" or "teacher"): the
    final hidden states at the speech positions and, for the teacher, the logits of the speech ids
    there; a `TeacherCache` serves the teacher's from disk where it can."""
    if hasattr(model, "outputs"):  # a TeacherCache
        return model.outputs(batch, inputs, spec.speech_ids)
    ids = spec.speech_ids if role == "teacher" and "kl" in spec.weights else None
    return speech_outputs(model, inputs, batch["labels"], ids)


def data_parallel_group(model: nn.Module) -> tuple[object, int]:
    """The process group over which `model`'s gradients are averaged, and its size.

    A data-parallel model (DDP: what has `no_sync`; FSDP2: sharded over its mesh) in an
    initialised process group averages its gradients over that group; anything else keeps each
    process's own gradients: (None, 1), and token counts stay local to the process."""
    if not (dist.is_available() and dist.is_initialized()):
        return None, 1
    if sharding.is_sharded(model):
        group = sharding.mesh_group(model)
        return group, dist.get_world_size(group)
    if not hasattr(model, "no_sync"):
        return None, 1
    group = getattr(model, "process_group", None)
    return group, dist.get_world_size(group)


def _sum_over_ranks(values: list[float], group, world_size: int, device: torch.device) -> list[float]:
    if world_size == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, group=group)
    return t.tolist()


def train_step(
    state: TrainState,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    spec: LossSpec,
    teacher=None,
    clip: float = 1.0,
    precision: str = "auto",
) -> dict[str, float]:
    """One optimizer step over `micro_batches` (gradient accumulation); returns the step's mean terms.
    `teacher`: the frozen model, or a `TeacherCache` in front of it.

    The gradient is that of the per-token mean loss over the union of the micro-batches of every
    rank, whatever their token counts (torchtune's and nanoGPT's accumulation): each term is summed
    over its tokens (speech positions for "ce" and "kl", real positions for "latent", "attention",
    "embedding": `losses.COUNTED_OVER`) and divided by the step's count of those tokens over all
    micro-batches and, under DDP, all ranks (times the world size, which DDP's gradient average
    divides out). Under DDP the gradients are all-reduced once, on the last micro-batch (`no_sync`
    before it). On an on-policy step the student's continuations of every micro-batch are drawn
    first: they set the token counts.

    Returned: each term's per-token mean over this rank's micro-batches, "loss" (their weighted sum),
    "grad_norm" (before clipping), "lr" and "on_policy"; `state.tokens` grows by the real
    (attention-mask) tokens this rank processed. With adaptive weights each term is divided by one
    running scale per step (updated once per step with the step's per-token mean over all ranks;
    this step's divisor includes the first micro-batch's mean, so one micro-batch behaves as before).
    """
    model = state.model
    device = next(model.parameters()).device
    dtype = autocast_dtype(precision, device)
    amp = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    model.train()
    totals: dict[str, float] = {}
    on_policy = teacher is not None and is_on_policy_step(state.step, spec.on_policy)
    names = term_names(spec, teacher is not None, ground_truth=not on_policy)
    if names and micro_batches:  # else (say an on-policy step with only "ce" weighted) nothing to learn
        totals = _accumulate(state, micro_batches, spec, teacher, on_policy, names, device, amp)
    if state.scaler:
        state.scaler.unscale_(state.optimizer)
    totals["grad_norm"] = sharding.total_norm(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
    if state.scaler:
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    if state.ema:
        state.ema.update(getattr(model, "module", model))  # parameter names without DDP's "module."
    state.step += 1
    totals["lr"] = state.scheduler.get_last_lr()[0]
    totals["on_policy"] = float(on_policy)
    return totals


def _accumulate(
    state: TrainState,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    spec: LossSpec,
    teacher,
    on_policy: bool,
    names: list[str],
    device: torch.device,
    amp,
) -> dict[str, float]:
    """The forward and backward passes of `train_step`; returns the step's per-token mean terms and loss."""
    model = state.model
    if on_policy:  # every rollout before any count: they change the step's token counts
        with sharding.gathered(model):  # a sharded student decodes whole, each worker on its own
            micro_batches = [
                data.student_rollouts(
                    model,
                    data.text_prompts(b) if "text_input_ids" in b else b,  # new texts, where the run has them
                    spec.pad_id,
                    spec.end_id,
                    spec.rollout_temperature,
                    spec.speech_ids,
                    spec.stop_ids,
                )
                for b in micro_batches
            ]
    counts = [losses.token_counts(b) for b in micro_batches]
    kinds = ("speech", "mask")
    local = {c: sum(n[c] for n in counts) for c in kinds}
    group, world_size = data_parallel_group(model)
    # one all-reduce: the step's counts, and the first micro-batch's (for the adaptive divisors)
    summed = _sum_over_ranks([local[c] for c in kinds] + [counts[0][c] for c in kinds], group, world_size, device)
    step_count = dict(zip(kinds, summed[:2]))
    first_count = dict(zip(kinds, summed[2:]))
    # a summed term times this, on every rank, then averaged by DDP: the global per-token mean
    factor = {k: world_size / max(step_count[losses.COUNTED_OVER[k]], 1.0) for k in names}
    divisor = dict.fromkeys(names, 1.0)
    sums = dict.fromkeys(names, 0.0)  # each term summed over this rank's tokens
    last = len(micro_batches) - 1
    for i, batch in enumerate(micro_batches):
        batch = {k: v.to(device) for k, v in batch.items()}
        inputs = dict(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=spec.needs_hidden,
            output_attentions=spec.needs_attention,
            use_cache=False,
        )
        # gradients stay on this rank until the last micro-batch (forward and backward inside no_sync)
        with sharding.gradient_sync(model, i == last):
            with amp:
                teacher_out = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_out = model_outputs(teacher, inputs, batch, spec, "teacher")
                student_out = model_outputs(model, inputs, batch, spec, "student")
                terms = compute_losses(student_out, teacher_out, batch, spec, not on_policy, reduction="sum")
            if i == 0 and state.adaptive:
                divisor = _adaptive_divisors(state.adaptive, terms, first_count, group, world_size, device)
            loss = sum(spec.weights[k] * v * (factor[k] / divisor[k]) for k, v in terms.items())
            (state.scaler.scale(loss) if state.scaler else loss).backward()
        for k, v in terms.items():
            sums[k] += float(v.detach())
        state.tokens += counts[i]["mask"]
    totals = {k: sums[k] / max(local[losses.COUNTED_OVER[k]], 1) for k in names}
    totals["loss"] = sum(spec.weights[k] * totals[k] / divisor[k] for k in names)
    if state.adaptive:  # the running scales follow the step's per-token means over every rank
        summed = _sum_over_ranks([sums[k] for k in names], group, world_size, device)
        for k, v in zip(names, summed):
            state.adaptive.update(k, v / max(step_count[losses.COUNTED_OVER[k]], 1.0))
    return totals


def _adaptive_divisors(
    adaptive: losses.AdaptiveWeights,
    terms: dict[str, torch.Tensor],
    first_count: dict[str, float],
    group,
    world_size: int,
    device: torch.device,
) -> dict[str, float]:
    """One divisor per term for the whole step (the same on every rank): the running scale with
    the first micro-batch's per-token mean over all ranks entered (not stored)."""
    names = list(terms)
    summed = _sum_over_ranks([float(terms[k].detach()) for k in names], group, world_size, device)
    out = {}
    for k, v in zip(names, summed):
        n = first_count[losses.COUNTED_OVER[k]]
        # no such token in any first micro-batch: the running scale as it stands (1 before any)
        out[k] = adaptive.divisor(k, v / n) if n > 0 else adaptive.scale.get(k, 1.0) + adaptive.eps
    return out


_CHECKPOINT_KEYS = ("model", "optimizer", "scheduler", "step", "tokens")
TRAIN_STATE = "train_state.pt"  # in a sharded checkpoint's folder: what is not sharded


def save_checkpoint(state: TrainState, path: str | Path, fingerprint: dict | None = None) -> None:
    """Model, optimizer, scheduler, step, token count and this process's random number generators
    (torch CPU and CUDA, numpy's global, python's `random`), with an optional `fingerprint` of the
    settings it was trained with (checked by `load_checkpoint`); written atomically
    (a temp file beside it, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(state.model, "module", state.model)  # unwrap DDP
    blob = {
        "model": model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "ema": state.ema.state_dict() if state.ema else None,
        **_unsharded_state(state, fingerprint),
    }
    atomic_write(path, lambda f: torch.save(blob, f), binary=True)


def _unsharded_state(state: TrainState, fingerprint: dict | None) -> dict:
    return {
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler else None,
        "adaptive": state.adaptive.state_dict() if state.adaptive else None,
        "step": state.step,
        "tokens": state.tokens,
        "rng": _rng_states(),
        "fingerprint": fingerprint,
    }


def save_sharded_checkpoint(state: TrainState, folder: str | Path, fingerprint: dict | None = None) -> None:
    """`save_checkpoint` for a sharded student (`sharding.shard_student`); every worker calls it.
    Each writes its shards of the model, the optimizer state and the weight average into `folder`
    with `torch.distributed.checkpoint` (loadable on any number of workers: the shards are
    redistributed on load); rank 0 also writes the rest to `folder`/train_state.pt, atomically.
    The workers' folders may differ (one per node): their files together are the checkpoint."""
    import torch.distributed.checkpoint as dcp  # here: seconds to import (`sharding`)

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dcp.save(_sharded_state(state), checkpoint_id=folder)
    if _rank() == 0:
        blob = {**_unsharded_state(state, fingerprint), "ema_decay": state.ema.decay if state.ema else None}
        atomic_write(folder / TRAIN_STATE, lambda f: torch.save(blob, f), binary=True)


def _sharded_state(state: TrainState) -> dict:
    """The model's, optimizer's and weight average's shards, by parameter name (what DCP reads and writes)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optimizer = get_state_dict(state.model, state.optimizer)  # a fresh optimizer's state is created
    return {"model": model, "optimizer": optimizer, **({"ema": state.ema.shadow} if state.ema else {})}


def _read_blob(path: Path, fingerprint: dict | None, device: torch.device | str = "cpu") -> dict:
    """A checkpoint file's contents on `device`, checked (`load_checkpoint`'s errors)."""
    try:
        blob = torch.load(path, map_location=device, weights_only=False)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (
        OSError,
        RuntimeError,
        EOFError,
        ValueError,
        pickle.UnpicklingError,
        zipfile.BadZipFile,
        UnicodeDecodeError,
    ) as e:
        raise StateError(
            f"the distillation checkpoint {path} is damaged ({e.__class__.__name__}: {str(e)[:200]}); it was "
            "cut short or is not a checkpoint. Delete it and run again to start the student from scratch"
        ) from None
    needed = _CHECKPOINT_KEYS if path.name != TRAIN_STATE else _CHECKPOINT_KEYS[2:]
    if not isinstance(blob, dict) or any(k not in blob for k in needed):
        raise StateError(
            f"{path} is not a distillation checkpoint (no {', '.join(needed)}); delete it or point at the right file"
        )
    keys = None if fingerprint is None else differing_keys(blob.get("fingerprint"), fingerprint)
    if keys != [] and fingerprint is not None:
        what = f"other settings (differing: {', '.join(keys)})" if keys else "no fingerprint of its settings"
        raise StateError(
            f"the distillation checkpoint {path} was saved with {what}; delete it to start afresh, "
            "or resume with the settings it was saved with"
        )
    return blob


def load_checkpoint(state: TrainState, path: str | Path, fingerprint: dict | None = None) -> None:
    """Restore `state` from `save_checkpoint`'s file, and the random number generators with it, so
    that the resumed run draws the same numbers (on-policy rollouts, dropout) as an uninterrupted one.

    Call it AFTER any seeding done at start (`torch.manual_seed` and the like): it overrides the
    seed. Generators are restored only in the process of the rank that saved them (rank 0 in a
    data-parallel run; the other ranks keep their own seeding), and not at all from a checkpoint
    written before they were saved. `fingerprint`: the settings of this run; a checkpoint saved with
    other ones (or without any) is refused. Raises `StateError` for a file that is cut short, is
    not a distillation checkpoint, or does not match the fingerprint.
    """
    blob = _read_blob(Path(path), fingerprint, next(state.model.parameters()).device)
    getattr(state.model, "module", state.model).load_state_dict(blob["model"])
    state.optimizer.load_state_dict(blob["optimizer"])
    if state.ema and blob.get("ema"):
        state.ema.load_state_dict(blob["ema"])
    _restore_unsharded(state, blob)


def load_sharded_checkpoint(state: TrainState, folder: str | Path, fingerprint: dict | None = None) -> None:
    """`load_checkpoint` for `save_sharded_checkpoint`'s folder, on any number of workers; every
    worker calls it."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import CheckpointException
    from torch.distributed.checkpoint.state_dict import set_state_dict

    folder = Path(folder)
    blob = _read_blob(folder / TRAIN_STATE, fingerprint)
    shards = _sharded_state(state)
    try:
        dcp.load(shards, checkpoint_id=folder)
    except (CheckpointException, OSError, RuntimeError, ValueError) as e:
        raise StateError(
            f"the sharded distillation checkpoint {folder} cannot be read ({e.__class__.__name__}: "
            f"{str(e)[:200]}); delete it and run again to start the student from scratch"
        ) from None
    set_state_dict(state.model, state.optimizer, model_state_dict=shards["model"], optim_state_dict=shards["optimizer"])
    if state.ema and "ema" in shards:
        state.ema.decay = blob["ema_decay"]  # the shadow was loaded in place
    _restore_unsharded(state, blob)


def _restore_unsharded(state: TrainState, blob: dict) -> None:
    state.scheduler.load_state_dict(blob["scheduler"])
    if state.scaler and blob.get("scaler"):
        state.scaler.load_state_dict(blob["scaler"])
    if state.adaptive and blob.get("adaptive"):
        state.adaptive.load_state_dict(blob["adaptive"])
    state.step, state.tokens = blob["step"], blob["tokens"]
    rng = blob.get("rng")
    if rng is not None and rng.get("rank", 0) == _rank():
        _set_rng_states(rng)


def _rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _rng_states() -> dict:
    return {
        "rank": _rank(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def _set_rng_states(rng: dict) -> None:
    torch.set_rng_state(rng["torch"].cpu())  # map_location may have moved it to the model's device
    if rng.get("cuda") is not None and torch.cuda.is_available():
        for i, s in enumerate(rng["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s.cpu(), i)
    np.random.set_state(rng["numpy"])
    random.setstate(rng["python"])
