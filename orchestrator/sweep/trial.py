"""One sweep trial = one Ray Train run of the pipeline's student stage.

`run_trial` is the Tune trainable (a small driver process): it picks the trial's layer
set, opens the trial's MLflow child run, and runs a `TorchTrainer` whose workers each
execute `train_loop_per_worker`, a plain PyTorch distillation loop over their share of
the data (DDP, or FSDP2 with `train.strategy: fsdp`; gloo on CPUs, NCCL on GPUs). Every
worker then synthesizes its share of the test batches with the whole student, and rank 0
gathers them, scores the student with the pipeline's `evaluate_student` and reports the
final quality metrics, which Tune (and Optuna) see as the trial's result.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import tempfile
from pathlib import Path

import ray.train
import ray.train.torch
import torch.distributed as dist
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator import tracking
from orchestrator.builders import build_world
from orchestrator.config import Config
from orchestrator.distill.budget import DataBudget, budget_record
from orchestrator.distill.engine import finished_student, prepare_distill, training_steps
from orchestrator.distill.loop import (
    TrainState,
    load_checkpoint,
    load_sharded_checkpoint,
    save_checkpoint,
    save_sharded_checkpoint,
)
from orchestrator.distill.sharding import is_sharded, shard_student
from orchestrator.distill.teacher_cache import TeacherCache
from orchestrator.distributed.stream import data_config, dataset_name, pairs_datasets, streamed_batches
from orchestrator.files import StateError
from orchestrator.pipeline.stages import (
    BUDGET_METRICS,
    METRICS,
    Plan,
    TeacherInfo,
    evaluate_student,
    student_fingerprint,
)
from orchestrator.prune.surgery import label
from orchestrator.sweep.space import trial_plan
from orchestrator.world import load_model, save_student

STATE = "state.pt"  # a DDP run's training state (rank 0's)
SHARDED_STATE = "sharded-state"  # an FSDP run's: every worker's shards
TRIAL_TAG = "prun_tts.trial_id"  # finds a trial's MLflow run again (resumes, the trade-off)


@dataclasses.dataclass(frozen=True)
class SweepPayload:
    """What every trial of a sweep shares (handed to Tune once, by reference)."""

    cfg: Config
    teacher: TeacherInfo
    plans: list[Plan]  # every plan of the sweep's space
    baseline: dict
    budget: DataBudget  # the training pairs every trial takes (streamed to its workers)
    teacher_cache: str | None
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    train_storage: str


@dataclasses.dataclass(frozen=True)
class TrialPayload:
    """What each Train worker of one trial needs."""

    cfg: Config
    teacher: TeacherInfo
    drop: tuple[int, ...]
    baseline: dict
    budget: DataBudget
    teacher_cache: str | None
    tracking_uri: str
    run_id: str
    fingerprint: dict  # of the student: a checkpoint of other settings is never resumed


def train_loop_per_worker(config: dict) -> None:
    job: TrialPayload = config["job"]
    ctx = ray.train.get_context()
    rank, size = ctx.get_world_rank(), ctx.get_world_size()
    cfg = job.cfg
    world = build_world(cfg)
    device = ray.train.torch.get_device()
    teacher_model = load_model(world, job.teacher.path, device)
    # Ray's prepare_model shards with FSDP1 and on GPUs only: FSDP2 is applied by hand (`sharding`)
    sharded = cfg.train.strategy == "fsdp"
    wrap = functools.partial(shard_student, device=device) if sharded else ray.train.torch.prepare_model
    run = prepare_distill(cfg, world, teacher_model, job.teacher.train_tokens, job.drop, size, wrap, budget=job.budget)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a resumed trial continues where its last checkpoint stopped
        with checkpoint.as_directory() as d:
            _load_state(run.state, Path(d), job.fingerprint)
    source = TeacherCache(job.teacher_cache, teacher_model) if job.teacher_cache else teacher_model
    curves = None
    if rank == 0:  # one worker logs the curves, thinned to about tracking.curve_points points
        curves = tracking.CurveLogger(job.tracking_uri, job.run_id, run.steps, cfg.tracking.curve_points)
    last: dict = {}
    # this worker's batches, streamed by Ray Data (its own rank's dataset: the same batches whatever the timing)
    pairs = ray.train.get_dataset_shard(dataset_name(rank))
    stream = functools.partial(streamed_batches, pairs, world.family, cfg.distill.batch_size // size)
    for m in training_steps(run, cfg, world, source, rank, size, stream):
        last = {k: v for k, v in m.items() if k != "step"}
        if curves:
            curves.add({f"train/{k}": v for k, v in last.items()}, m["step"])
        if m["step"] % cfg.train.report_every == 0 and m["step"] < run.steps:
            if curves:
                curves.flush()
            writes = rank == 0 or sharded  # every worker writes its shards
            _report({**last, "step": m["step"]}, run.state if writes else None, job.fingerprint)
    if curves:
        curves.flush()

    student = finished_student(run)
    # every worker synthesizes its share of the test batches; rank 0 gathers them and scores the whole
    final, items = evaluate_student(cfg, world, teacher_model, student, job.baseline, (rank, size), _gather_on_rank0)
    final = final or {}
    with tempfile.TemporaryDirectory(prefix="student-") as files:
        if sharded:
            _save_state(run.state, Path(files), job.fingerprint)
        if rank == 0:
            # the data budget, beside the quality it bought
            final.update(data_pairs=run.budget.pairs, data_hours=run.budget.hours, data_tokens=run.budget.unique_tokens)
            if isinstance(source, TeacherCache):
                final["teacher_cache_hits"] = source.served
            save_student(world, student, Path(files) / "student")
            (Path(files) / "evaluation.json").write_text(json.dumps({**final, "items": items}, indent=2))
            budget = budget_record(run.budget, job.teacher.train_tokens)
            (Path(files) / "budget.json").write_text(json.dumps(budget, indent=2))
            if not sharded:
                _save_state(run.state, Path(files), job.fingerprint)
        ray.train.report(
            {**last, "step": run.state.step, **final},
            checkpoint=ray.train.Checkpoint.from_directory(files) if rank == 0 or sharded else None,
        )


def _gather_on_rank0(rows: list) -> list | None:
    """Every worker's rows, on rank 0 (None on the others)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return rows
    parts = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(rows, parts, dst=0)
    return [row for part in parts for row in part] if parts is not None else None


def _report(metrics: dict, state, fingerprint: dict) -> None:
    """Every worker reports (Train needs the same number of reports from each); those given the
    `state` add the checkpoint (rank 0 under DDP, every worker under FSDP: Ray Train merges their
    folders into one)."""
    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        _save_state(state, Path(d), fingerprint)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def _save_state(state: TrainState, folder: Path, fingerprint: dict) -> None:
    if is_sharded(state.model):
        save_sharded_checkpoint(state, folder / SHARDED_STATE, fingerprint=fingerprint)
    else:
        save_checkpoint(state, folder / STATE, fingerprint=fingerprint)


def _load_state(state: TrainState, folder: Path, fingerprint: dict) -> None:
    sharded = is_sharded(state.model)
    if not (folder / (SHARDED_STATE if sharded else STATE)).exists():
        saved, now = ("fsdp", "ddp") if (folder / SHARDED_STATE).exists() else ("ddp", "fsdp")
        raise StateError(
            f"the trial's checkpoint {folder} was saved with train.strategy={saved}, this run uses {now}: "
            f"resume it with train.strategy={saved}, or start the sweep afresh"
        )
    if sharded:
        load_sharded_checkpoint(state, folder / SHARDED_STATE, fingerprint=fingerprint)
    else:
        load_checkpoint(state, folder / STATE, fingerprint=fingerprint)


def trial_run_id(sweep: SweepPayload, trial_id: str, plan: Plan, n_layers: int, searched: dict) -> str:
    """The trial's MLflow child run: found again when the trial is resumed, else created. Its
    params: the layers and what chose them, and the trial's searched settings (`searched`: its
    Tune config), each a plain value the UI's parallel-coordinates and scatter views can compare."""
    uri, tags = sweep.tracking_uri, {TRIAL_TAG: trial_id, tracking.PARENT: sweep.parent_run_id}
    kept = [i for i in range(n_layers) if i not in plan.drop]
    return tracking.find_run(uri, sweep.experiment_id, tags) or tracking.start_run(
        uri,
        sweep.experiment_id,
        f"drop {plan.label} ({len(kept)} layers)",
        "trial",
        sweep.parent_run_id,
        params={
            "dropped_layers": plan.label,
            "kept_layers": label(kept),
            "scorer": plan.scorer,
            "strategy": plan.strategy,
            "ratio": round(len(plan.drop) / n_layers, 4),
            "n_drop": len(plan.drop),
            "trial_id": trial_id,
            **searched,
        },
        tags=tags,
    )


def run_trial(config: dict, sweep: SweepPayload) -> None:
    """The Tune trainable: one student of the sweep, distilled by a Ray Train run."""
    cfg, n = sweep.cfg, sweep.teacher.n_layers
    plan = trial_plan(config, sweep.plans)
    trial_id = tune.get_context().get_trial_id()
    uri = sweep.tracking_uri
    run_id = trial_run_id(sweep, trial_id, plan, n, config)
    t = cfg.train
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.use_gpu else {})}
    job = TrialPayload(
        cfg,
        sweep.teacher,
        plan.drop,
        sweep.baseline,
        sweep.budget,
        sweep.teacher_cache,
        uri,
        run_id,
        student_fingerprint(cfg, sweep.teacher, plan.drop),
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": job},
        datasets=pairs_datasets(cfg, sweep.budget, t.num_workers),
        dataset_config=data_config(),
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=sweep.train_storage,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=t.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    try:
        with tracking.SystemMetrics(uri, run_id, cfg.tracking.system_metrics):  # this trial's node, while it trains
            result = trainer.fit()
        metrics = {k: v for k, v in result.metrics.items() if not isinstance(v, (dict, list, str))}
        tracking.log_metrics(uri, run_id, {k: metrics[k] for k in (*METRICS, *BUDGET_METRICS) if k in metrics})
        if result.checkpoint is not None:
            with result.checkpoint.as_directory() as d:
                tracking.log_artifacts(uri, run_id, Path(d) / "student", "student")
                for name in ("evaluation.json", "budget.json"):
                    tracking.log_artifacts(uri, run_id, Path(d) / name)
    except BaseException as e:
        tracking.finish_run(uri, run_id, "FAILED")
        tracking.set_tag(uri, run_id, "prun_tts.error", f"{e.__class__.__name__}: {e}"[-4000:])
        raise
    tracking.finish_run(uri, run_id)
