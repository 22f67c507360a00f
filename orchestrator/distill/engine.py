"""The distillation engine: a student pruned from the teacher, trained on the data budget,
in one process or as one of several data-parallel workers (the same `training_steps` for both).

`distill` is the one-process form, with its on-disk contract: a finished student is read back
and never trained again, a stopped one resumes from its checkpoint, and `history.csv` holds
every optimizer step once.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from orchestrator.anatomy import decoder_layers
from orchestrator.config import Config
from orchestrator.distill import sharding
from orchestrator.distill.budget import (
    DataBudget,
    budget_record,
    check_batch_split,
    extra_texts,
    optimizer_steps,
    plan_budget,
)
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
from orchestrator.files import atomic_write_json, atomic_write_text, read_fingerprinted, write_fingerprinted
from orchestrator.prune.surgery import drop_layers, resolve_keep
from orchestrator.world import World, load_model, save_student


@dataclasses.dataclass
class DistillRun:
    """A student ready to train: its training state, the loss terms, its data and the steps to take."""

    state: TrainState
    spec: LossSpec
    budget: DataBudget
    steps: int
    cut: Callable[[], nn.Module] | None = None  # a fresh, whole copy of the student before training


def prepare_distill(
    cfg: Config,
    world: World,
    teacher: nn.Module,
    teacher_tokens: int | None,
    drop: Sequence[int],
    world_size: int = 1,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    start: nn.Module | None = None,
    budget: DataBudget | None = None,
) -> DistillRun:
    """The student (teacher minus `drop`), optimizer and data, for one process or for each of
    `world_size` data-parallel workers (`wrap`: Ray Train's `prepare_model` for DDP, or
    `sharding.shard_student` for FSDP2).
    The global batch is `distill.batch_size` whatever the number of workers. `start`: a
    teacher-shaped model to cut the student from instead of the teacher (`surgery.graft` of an
    earlier, shallower-cut student: pruning in steps). `budget`: the driver's, where it was planned
    already (a Train worker then never reads the pairs to plan it)."""
    d = cfg.distill
    check_batch_split(d.batch_size, world_size)
    n_teacher = len(decoder_layers(teacher))
    kept = resolve_keep(n_teacher, drop=drop)
    budget = budget or plan_budget(cfg, world, teacher_tokens)
    f = world.family
    spec = loss_spec(d, f.speech_ids, kept, n_teacher, f.pad_id, f.end_id, f.stop_ids)
    if spec.needs_attention:  # attention maps are only returned by the eager implementation
        teacher.set_attn_implementation("eager")

    # fp32 weights for the optimizer (a bf16 teacher's copy would round small updates away);
    # autocast still computes in bf16 on a GPU
    def cut() -> nn.Module:
        student = drop_layers(start if start is not None else teacher, drop=drop).float()
        for p in student.parameters():
            p.requires_grad_(True)
        return student

    student = cut()
    if wrap is not None:
        student = wrap(student)
    steps = optimizer_steps(budget.pairs, d)
    state = make_state(student, d.lr, d.warmup, steps, d.precision, d.adaptive, ema=d.ema)
    return DistillRun(state, spec, budget, steps, cut)


def training_steps(
    run: DistillRun,
    cfg: Config,
    world: World,
    source,
    rank: int = 0,
    world_size: int = 1,
    stream: Callable[[int], Iterator[dict]] | None = None,
) -> Iterator[dict]:
    """Take the steps left (a resumed state starts where it stopped), yielding each step's metrics.
    `source`: what answers for the teacher, the frozen model or a `TeacherCache` in front of it.
    `stream(skip)`: this rank's batches after the first `skip` (a Train worker's, from Ray Data);
    else they are read from `world.train_pairs` here, the same batches in the same order."""
    d = cfg.distill
    skip = run.state.step * d.grad_accum  # what a resumed run already trained on
    if stream is None:
        pairs = _Budgeted(world.train_pairs, run.budget.pairs)
        texts = extra_texts(world, run.budget)
        per_rank = d.batch_size // world_size
        every = batches(world.family, pairs, per_rank, d.epochs, d.seed, rank, world_size, texts)
        left = itertools.islice(every, skip, None)
    else:
        left = stream(skip)
    while run.state.step < run.steps:
        micro = [next(left) for _ in range(d.grad_accum)]
        # a seed per (run, rank, step): a resumed run draws what an uninterrupted one would
        torch.manual_seed(step_seed(d.seed, rank, run.state.step))
        metrics = train_step(run.state, micro, run.spec, source, d.clip, d.precision)
        yield {"step": run.state.step, "tokens": run.state.tokens, **metrics}


class _Budgeted(Sequence):
    """The first `n` training pairs, each read when a batch takes it."""

    def __init__(self, pairs: Sequence, n: int):
        self.pairs, self.n = pairs, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return self.pairs[i]


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
    start: nn.Module | None = None,
) -> tuple[nn.Module, DataBudget]:
    """Student with `drop` removed, distilled from `teacher` in this process; saved under out_dir/student.

    `fingerprint`: what the student is computed from. A finished student of the same fingerprint
    is loaded back, never trained again or overwritten; a stopped run resumes from
    out_dir/checkpoint.pt (the same steps, data and random draws as an uninterrupted run), and
    out_dir/history.csv holds every step once. `source`: a `TeacherCache` in front of `teacher`.
    `start`: what the student is cut from, if not the teacher (`prepare_distill`).
    """
    fingerprint = fingerprint or {}
    run = prepare_distill(cfg, world, teacher, teacher_tokens, drop, start=start)
    out = Path(out_dir)
    done = out / "done.json"
    finished = read_fingerprinted(
        done, fingerprint, "the finished student's record", "remove its folder or choose another output_dir"
    )
    if finished is not None:  # never trained again, never overwritten
        return load_model(world, out / "student", next(teacher.parameters()).device), run.budget
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
    write_fingerprinted(done, fingerprint, {"steps": run.state.step})  # last: the student is whole
    ckpt.unlink(missing_ok=True)
    return student, run.budget


def finished_student(run: DistillRun) -> nn.Module:
    """The trained student (its weight average when `distill.ema` is on), in eval mode; a sharded
    one gathered whole into a plain model on every worker (a collective: every worker calls it)."""
    student = getattr(run.state.model, "module", run.state.model)
    if run.state.ema:
        run.state.ema.copy_to(student)
    if sharding.is_sharded(student):
        weights = sharding.full_weights(student)
        student = run.cut()
        student.load_state_dict(weights)
    return student.eval()


def write_history(path: Path, rows: list[dict]) -> None:
    """The training curve, one row per optimizer step (written atomically)."""
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
