"""Recipe: prune the teacher to a layer set and distil it back, on a data budget.

The budget is a fraction of the teacher's training data, counted in tokens
(or `data_hours` of speech):
`data_fraction: 0.05` gives the student distinct training pairs holding at most
5% of the tokens the teacher was trained on (the paper's "less than 5% of the
original training data"). `epochs` passes over that data; the tokens processed
(data x epochs, the compute) are reported beside it.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from orchestrator.builders import save_student
from orchestrator.config import Config, ConfigError
from orchestrator.distill.data import batches
from orchestrator.distill.loop import (
    LossSpec,
    TrainState,
    load_checkpoint,
    loss_spec,
    make_state,
    save_checkpoint,
    train_step,
)
from orchestrator.prune.surgery import decoder_layers, drop_layers, resolve_keep
from orchestrator.world import World


@dataclasses.dataclass
class DataBudget:
    tokens_allowed: int
    pairs: int  # distinct training pairs used
    unique_tokens: int
    epochs: int
    hours: float  # speech in those pairs (prompt and target), at the codec's token rate

    @property
    def tokens(self) -> int:
        return self.unique_tokens * self.epochs


def plan_budget(cfg: Config, world: World, teacher_tokens: int | None) -> DataBudget:
    """Pairs taken in order while they fit: `distill.data_hours` of speech, else
    `distill.data_fraction` of the teacher's training tokens (all tokens of a pair count)."""
    d = cfg.distill
    if d.data_hours is None and not teacher_tokens:
        raise ConfigError(
            "distill.data_fraction needs the teacher's training token count, which this teacher "
            "does not record; give distill.data_hours instead"
        )
    if not len(world.train_pairs):
        raise ConfigError(
            f"the {world.name} world has no training pairs: make the speech-token shards first "
            "(`prun-tts shards --config CFG`, from world.real.train_manifest)"
        )
    rate = world.codec.token_rate
    if d.data_hours is not None:
        allowed = int(d.data_hours * 3600 * rate)
        measure = lambda ids, p, t: len(p.codes) + len(t.codes)  # noqa: E731
    else:
        allowed = int(teacher_tokens * d.data_fraction)
        measure = lambda ids, p, t: len(ids)  # noqa: E731
    lengths: list[int] = []  # tokens of each pair
    speech: list[int] = []  # speech codes of each pair
    total = 0
    while len(lengths) < len(world.train_pairs):
        prompt, target = world.train_pairs[len(lengths)]
        ids, _ = world.family.training_ids(prompt, target)
        size = measure(ids, prompt, target)
        if total + size > allowed:
            break
        total += size
        lengths.append(len(ids))
        speech.append(len(prompt.codes) + len(target.codes))
    n = len(lengths) - len(lengths) % d.batch_size  # whole batches only
    if n == 0:
        what = (
            f"distill.data_hours={d.data_hours}"
            if d.data_hours is not None
            else f"distill.data_fraction={d.data_fraction}"
        )
        raise ConfigError(
            f"{what} allows {allowed} tokens, less than one batch of {d.batch_size} pairs; raise it "
            f"or lower distill.batch_size"
        )
    n_batches = n // d.batch_size * d.epochs
    if n_batches < d.grad_accum:  # prepare_distill's steps: pairs x epochs // (batch_size x grad_accum)
        raise ConfigError(
            f"distill.grad_accum={d.grad_accum}: the budget's {n} pairs make {n_batches} batch(es) of "
            f"{d.batch_size} over {d.epochs} epoch(s) and one optimizer step takes {d.grad_accum}, so there is "
            "not one step to train; lower distill.grad_accum or distill.batch_size, or raise distill.epochs "
            "or the budget (distill.data_fraction / distill.data_hours)"
        )
    return DataBudget(allowed, n, sum(lengths[:n]), d.epochs, sum(speech[:n]) / rate / 3600)


@dataclasses.dataclass
class DistillRun:
    """A student ready to train: its training state, the loss terms, its data and the steps to take."""

    state: TrainState
    spec: LossSpec
    budget: DataBudget
    pairs: list
    steps: int


def prepare_distill(
    cfg: Config,
    world: World,
    teacher: nn.Module,
    teacher_tokens: int | None,
    drop: Sequence[int],
    world_size: int = 1,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> DistillRun:
    """The student (teacher minus `drop`), optimizer and data, for one process or for each of
    `world_size` data-parallel workers (`wrap`: e.g. Ray Train's `prepare_model`, for DDP).
    The global batch is `distill.batch_size` whatever the number of workers."""
    d = cfg.distill
    if d.batch_size % world_size:
        raise ConfigError(
            f"distill.batch_size={d.batch_size} does not split over {world_size} workers; "
            f"make it a multiple of train.num_workers"
        )
    n_teacher = len(decoder_layers(teacher))
    kept = resolve_keep(n_teacher, drop=drop)
    budget = plan_budget(cfg, world, teacher_tokens)
    f = world.family
    spec = loss_spec(d, f.speech_ids, kept, n_teacher, f.pad_id, f.end_id, f.stop_ids)
    if spec.needs_attention:  # attention maps are only returned by the eager implementation
        teacher.set_attn_implementation("eager")
    # fp32 weights for the optimizer (a bf16 teacher's copy would round small updates away);
    # autocast still computes in bf16 on a GPU
    student = drop_layers(teacher, drop=drop).float()
    for p in student.parameters():
        p.requires_grad_(True)
    if wrap is not None:
        student = wrap(student)
    steps = budget.pairs * d.epochs // (d.batch_size * d.grad_accum)
    state = make_state(student, d.lr, d.warmup, steps, d.precision, d.adaptive, ema=d.ema)
    return DistillRun(state, spec, budget, [world.train_pairs[i] for i in range(budget.pairs)], steps)


def training_steps(
    run: DistillRun, cfg: Config, world: World, teacher, rank: int = 0, world_size: int = 1
) -> Iterator[dict]:
    """Take the steps left (a resumed state starts where it stopped), yielding each step's metrics.
    `teacher`: the frozen model or a `TeacherCache` in front of it."""
    d = cfg.distill
    stream = batches(
        world.family,
        run.pairs,
        d.batch_size // world_size,
        epochs=d.epochs,
        seed=d.seed,
        rank=rank,
        world_size=world_size,
    )
    for _ in range(run.state.step * d.grad_accum):  # skip what a resumed run already trained on
        next(stream)
    while run.state.step < run.steps:
        micro = [next(stream) for _ in range(d.grad_accum)]
        # a seed per (run, rank, step): a resumed run draws what an uninterrupted one would
        torch.manual_seed(step_seed(d.seed, rank, run.state.step))
        metrics = train_step(run.state, micro, run.spec, teacher, d.clip, d.precision)
        yield {"step": run.state.step, "tokens": run.state.tokens, **metrics}


def step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 10_007 + step) % 2**63


def distill(
    cfg: Config,
    world: World,
    teacher: nn.Module,
    teacher_tokens: int | None,
    drop: Sequence[int],
    out_dir: str | Path,
    progress: bool = True,
    fingerprint: dict | None = None,
    source=None,
) -> tuple[nn.Module, DataBudget]:
    """Student with `drop` removed, distilled from `teacher` in this process; saved under out_dir/student.

    `fingerprint`: what the student is computed from. A finished student of the same fingerprint
    is loaded back, never trained again or overwritten; a stopped run resumes from
    out_dir/checkpoint.pt (the same steps, data and random draws as an uninterrupted run), and
    out_dir/history.csv holds every step once. `source`: a `TeacherCache` in front of `teacher`.
    """
    from orchestrator.builders import load_model
    from orchestrator.pipeline.state import atomic_write_json, read_json

    fingerprint = fingerprint or {}
    run = prepare_distill(cfg, world, teacher, teacher_tokens, drop)
    out = Path(out_dir)
    done = out / "done.json"
    if done.is_file():
        if read_json(done, "the finished student's record").get("fingerprint") != json.loads(json.dumps(fingerprint)):
            raise ConfigError(f"{out} holds a student made with other settings; remove it or choose another output_dir")
        device = next(teacher.parameters()).device
        return load_model(world, out / "student", device), run.budget
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / "checkpoint.pt"
    history: list[dict] = []
    if ckpt.is_file():
        load_checkpoint(run.state, ckpt, fingerprint=fingerprint)
        history = [r for r in read_history(out / "history.csv") if r["step"] <= run.state.step]
    bar = tqdm(total=run.steps, initial=run.state.step, desc="distill", disable=not progress)
    for metrics in training_steps(run, cfg, world, source or teacher):
        history.append(metrics)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        if run.state.step % 50 == 0 or run.state.step == run.steps:
            save_checkpoint(run.state, ckpt, fingerprint=fingerprint)
            write_history(out / "history.csv", history)  # what the checkpoint holds, step for step
    bar.close()

    student = finished_student(run)
    save_student(world, student, out / "student")
    atomic_write_json(out / "budget.json", budget_record(run.budget, teacher_tokens))
    atomic_write_json(done, {"fingerprint": fingerprint, "steps": run.state.step})  # last: the student is whole
    ckpt.unlink(missing_ok=True)
    return student, run.budget


def finished_student(run: DistillRun) -> nn.Module:
    """The trained student (its weight average when `distill.ema` is on), in eval mode."""
    student = getattr(run.state.model, "module", run.state.model)
    if run.state.ema:
        run.state.ema.copy_to(student)
    return student.eval()


def budget_record(budget: DataBudget, teacher_tokens: int | None) -> dict:
    return {**dataclasses.asdict(budget), "tokens": budget.tokens, "teacher_tokens": teacher_tokens}


def write_history(path: Path, rows: list[dict]) -> None:
    """The training curve, one row per optimizer step (written atomically)."""
    import io

    from orchestrator.pipeline.state import atomic_write_text

    if not rows:
        return
    keys = sorted({k for r in rows for k in r}, key=lambda k: (k not in ("step", "tokens"), k))
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, text.getvalue())


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open() as f:
        return [
            {k: int(float(v)) if k in ("step", "tokens") else float(v) for k, v in r.items() if v != ""}
            for r in csv.DictReader(f)
        ]
