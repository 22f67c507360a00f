"""One sweep trial = one Ray Train run.

`run_trial` is the Tune trainable (a small driver process): it picks the trial's layer
set, opens the trial's MLflow child run, and runs a `TorchTrainer` whose workers each
execute `train_loop_per_worker`, a plain PyTorch distillation loop over their share of
the data (DDP: gloo on CPUs, NCCL on GPUs). Rank 0 then evaluates the student and
reports the final quality metrics, which Tune (and Optuna) see as the trial's result.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import ray.train
import ray.train.torch
from ray import tune
from ray.train.torch import TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from orchestrator import tracking
from orchestrator.builders import build_world, load_model, save_student
from orchestrator.config import Config
from orchestrator.distill.loop import load_checkpoint, save_checkpoint
from orchestrator.distill.teacher_cache import TeacherCache
from orchestrator.evaluate.synthesis import evaluate_model, speedup
from orchestrator.recipes.distill import budget_record, finished_student, prepare_distill, training_steps
from orchestrator.sweep.space import layer_set, trial_choice

STATE = "state.pt"


def train_loop_per_worker(config: dict) -> None:
    ctx = ray.train.get_context()
    rank, size = ctx.get_world_rank(), ctx.get_world_size()
    cfg = Config.model_validate(config["cfg"])
    world = build_world(cfg)
    teacher = load_model(world, cfg.world.teacher.path, ray.train.torch.get_device())
    run = prepare_distill(
        cfg, world, teacher, config["teacher_tokens"], config["drop"], size, wrap=ray.train.torch.prepare_model
    )
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:  # a resumed trial continues where its last checkpoint stopped
        with checkpoint.as_directory() as d:
            load_checkpoint(run.state, Path(d) / STATE)
    source = TeacherCache(config["teacher_cache"], teacher) if config["teacher_cache"] else teacher
    curves = tracking.CurveLogger(config["tracking_uri"], config["run_id"]) if rank == 0 else None
    last: dict = {}
    for m in training_steps(run, cfg, world, source, rank, size):
        last = {k: v for k, v in m.items() if k != "step"}
        if curves:
            curves.add({f"train/{k}": v for k, v in last.items()}, m["step"])
        if m["step"] % cfg.train.report_every == 0 and m["step"] < run.steps:
            if curves:
                curves.flush()
            _report({**last, "step": m["step"]}, run.state if rank == 0 else None)
    if curves:
        curves.flush()

    student = finished_student(run)
    final: dict = {}
    with tempfile.TemporaryDirectory(prefix="student-") as files:
        if rank == 0:
            final = _evaluate_and_save(cfg, world, teacher, student, source, run, config, Path(files))
        ray.train.report(
            {**last, "step": run.state.step, **final},
            checkpoint=ray.train.Checkpoint.from_directory(files) if rank == 0 else None,
        )


def _evaluate_and_save(cfg, world, teacher, student, source, run, config, files: Path) -> dict:
    """Rank 0, after training: the final metrics, and the student + evaluation in `files`."""
    test = world.test_items[: cfg.evaluate.n_items]
    ev = evaluate_model(student, world, test, cfg.evaluate)
    speed = speedup(teacher, student, world.family, test[: cfg.evaluate.batch_size], cfg.evaluate)
    final = trial_metrics(ev, speed, config["baseline"])
    # the data budget, beside the quality it bought
    final.update(data_pairs=run.budget.pairs, data_hours=run.budget.hours, data_tokens=run.budget.unique_tokens)
    if isinstance(source, TeacherCache):
        final["teacher_cache_hits"] = source.served
    save_student(world, student, files / "student")
    (files / "evaluation.json").write_text(json.dumps({**ev.summary(), "items": ev.items}, indent=2))
    (files / "budget.json").write_text(json.dumps(budget_record(run.budget, config["teacher_tokens"]), indent=2))
    save_checkpoint(run.state, files / STATE)
    return final


def _report(metrics: dict, state) -> None:
    """Every worker reports (Train needs the same number of reports from each); rank 0 adds the checkpoint."""
    if state is None:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory() as d:
        save_checkpoint(state, Path(d) / STATE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))


def trial_metrics(ev, speed: float, baseline: dict) -> dict:
    """The child-run contract's metrics (WER in %, deltas against the teacher's baseline run)."""
    wer = 100 * ev.wer
    return {
        "wer": wer,
        "sim": ev.sim,
        "n_layers": ev.n_layers,
        "params_m": ev.params / 1e6,
        "rtf": ev.rtf,
        "speedup": speed,
        "wer_delta": wer - baseline["wer"],
        "sim_delta": ev.sim - baseline["sim"],
        "peak_mem_mb": ev.peak_mem_mb,
    }


def run_trial(config: dict, sweep: dict) -> None:
    """The Tune trainable. `sweep`: what every trial shares (config, plans, baseline, MLflow ids, paths)."""
    cfg = Config.model_validate(sweep["cfg"])
    n = sweep["n_layers"]
    drop, scorer, strategy = trial_choice(config, sweep["plans"], n)
    kept = [i for i in range(n) if i not in drop]
    trial_id = tune.get_context().get_trial_id()
    uri, exp_id, parent = sweep["tracking_uri"], sweep["experiment_id"], sweep["parent_run_id"]
    tags = {"prun_tts.trial_id": trial_id, tracking.PARENT: parent}
    run_id = tracking.find_run(uri, exp_id, tags) or tracking.start_run(
        uri,
        exp_id,
        f"drop {layer_set(drop)} ({len(kept)} layers)",
        "trial",
        parent,
        params={
            "dropped_layers": layer_set(drop),
            "kept_layers": layer_set(kept),
            "scorer": scorer,
            "strategy": strategy,
            "ratio": round(len(drop) / n, 4),
            "n_drop": len(drop),
            "trial_id": trial_id,
        },
        tags=tags,
    )
    t = cfg.train
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": sweep["cfg"],
            "drop": drop,
            "teacher_tokens": sweep["teacher_tokens"],
            "teacher_cache": sweep["teacher_cache"],
            "baseline": sweep["baseline"],
            "tracking_uri": uri,
            "run_id": run_id,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources
        ),
        run_config=ray.train.RunConfig(
            name=f"train-{trial_id}",
            storage_path=sweep["train_storage"],
            callbacks=[TuneReportCallback()],
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
        ),
    )
    try:
        result = trainer.fit()
        metrics = {k: v for k, v in result.metrics.items() if not isinstance(v, (dict, list, str))}
        tracking.log_metrics(uri, run_id, {k: metrics[k] for k in CONTRACT_METRICS if k in metrics})
        if result.checkpoint is not None:
            with result.checkpoint.as_directory() as d:
                tracking.log_artifacts(uri, run_id, Path(d) / "student", "student")
                for name in ("evaluation.json", "budget.json"):
                    tracking.log_artifacts(uri, run_id, Path(d) / name)
    except BaseException:
        tracking.finish_run(uri, run_id, "FAILED")
        raise
    tracking.finish_run(uri, run_id)


CONTRACT_METRICS = (
    "wer",
    "sim",
    "n_layers",
    "params_m",
    "rtf",
    "speedup",
    "wer_delta",
    "sim_delta",
    "peak_mem_mb",
    "teacher_cache_hits",
    "data_pairs",
    "data_hours",
    "data_tokens",
)
