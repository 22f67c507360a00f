"""The training step: multi-level distillation of a pruned student from its frozen
teacher (or plain next-token training when there is no teacher).

Plain PyTorch, one process; a distributed trainer wraps the student in DDP and
calls the same `train_step` per worker.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import torch
from torch import nn

from orchestrator.config import DistillConfig
from orchestrator.distill import data, losses


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


def compute_losses(
    student_out, teacher_out, batch: dict[str, torch.Tensor], spec: LossSpec, ground_truth: bool = True
) -> dict[str, torch.Tensor]:
    """Every weighted term, unweighted (no ground-truth loss on the student's own rollouts)."""
    w, labels, mask = spec.weights, batch["labels"], batch["attention_mask"]
    terms: dict[str, torch.Tensor] = {}
    if "ce" in w and ground_truth:
        terms["ce"] = losses.speech_ce(student_out.logits, labels)
    if teacher_out is None:
        return terms
    if "kl" in w:
        terms["kl"] = losses.speech_kl(
            student_out.logits,
            teacher_out.logits,
            labels,
            spec.speech_ids,
            spec.temperature,
            spec.kl_kind,
            spec.jsd_beta,
        )
    if "latent" in w:
        terms["latent"] = losses.latent_loss(
            student_out.hidden_states[1:], teacher_out.hidden_states[1:], spec.targets, mask, spec.latent_kind
        )
    if "attention" in w:
        terms["attention"] = losses.attention_loss(student_out.attentions, teacher_out.attentions, spec.targets, mask)
    if "embedding" in w:
        terms["embedding"] = losses.embedding_loss(student_out.hidden_states[0], teacher_out.hidden_states[0], mask)
    return terms


def train_step(
    state: TrainState,
    micro_batches: Sequence[dict[str, torch.Tensor]],
    spec: LossSpec,
    teacher=None,
    clip: float = 1.0,
    precision: str = "auto",
) -> dict[str, float]:
    """One optimizer step over `micro_batches` (gradient accumulation); returns the mean terms.
    `teacher`: the frozen model, or a `TeacherCache` in front of it."""
    model = state.model
    device = next(model.parameters()).device
    dtype = autocast_dtype(precision, device)
    amp = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
    model.train()
    totals: dict[str, float] = {}
    on_policy = teacher is not None and is_on_policy_step(state.step, spec.on_policy)
    for batch in micro_batches:
        if on_policy:
            batch = data.student_rollouts(
                model, batch, spec.pad_id, spec.end_id, spec.rollout_temperature, spec.speech_ids, spec.stop_ids
            )
        batch = {k: v.to(device) for k, v in batch.items()}
        inputs = dict(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            output_hidden_states=spec.needs_hidden,
            output_attentions=spec.needs_attention,
            use_cache=False,
        )
        with amp:
            teacher_out = None
            if teacher is not None:
                with torch.no_grad():
                    teacher_out = teacher.outputs(batch, inputs) if hasattr(teacher, "outputs") else teacher(**inputs)
            student_out = model(**inputs)
            terms = compute_losses(student_out, teacher_out, batch, spec, ground_truth=not on_policy)
            loss = sum(spec.weights[k] * (state.adaptive(k, v) if state.adaptive else v) for k, v in terms.items())
        loss = loss / len(micro_batches)
        if not torch.is_tensor(loss):
            continue  # an on-policy step with only the ground-truth term weighted: nothing to learn
        (state.scaler.scale(loss) if state.scaler else loss).backward()
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + float(v.detach()) / len(micro_batches)
        totals["loss"] = totals.get("loss", 0.0) + float(loss.detach())
        state.tokens += int(batch["attention_mask"].sum())
    if state.scaler:
        state.scaler.unscale_(state.optimizer)
    totals["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(model.parameters(), clip))
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


def save_checkpoint(state: TrainState, path: str | Path) -> None:
    """Model, optimizer, scheduler, step and token count; written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = getattr(state.model, "module", state.model)  # unwrap DDP
    blob = {
        "model": model.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler else None,
        "adaptive": state.adaptive.state_dict() if state.adaptive else None,
        "ema": state.ema.state_dict() if state.ema else None,
        "step": state.step,
        "tokens": state.tokens,
    }
    tmp = path.with_suffix(".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)


def load_checkpoint(state: TrainState, path: str | Path) -> None:
    blob = torch.load(path, map_location=next(state.model.parameters()).device, weights_only=False)
    getattr(state.model, "module", state.model).load_state_dict(blob["model"])
    state.optimizer.load_state_dict(blob["optimizer"])
    state.scheduler.load_state_dict(blob["scheduler"])
    if state.scaler and blob["scaler"]:
        state.scaler.load_state_dict(blob["scaler"])
    if state.adaptive and blob["adaptive"]:
        state.adaptive.load_state_dict(blob["adaptive"])
    if state.ema and blob.get("ema"):
        state.ema.load_state_dict(blob["ema"])
    state.step, state.tokens = blob["step"], blob["tokens"]
