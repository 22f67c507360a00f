"""A sweep: the pipeline's stages on Ray. Stage tasks (the baseline, each scorer's layer
choice, WLI's per-layer syntheses, the teacher cache) run as Ray tasks; the students run as
a Tune experiment whose trials are Ray Train runs. MLflow holds one parent run per sweep,
one baseline run and one child run per trial.

Everything lives under `sweep.storage_path/sweep.name`; running the same command again
resumes: stages whose fingerprint matches are read back, finished trials are kept, and
unfinished ones continue from their checkpoints.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import ray
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from orchestrator import tracking
from orchestrator.builders import build_world, teacher_for_estimates, teacher_layers
from orchestrator.config import Config, ConfigError
from orchestrator.console import route_chatter
from orchestrator.distill.budget import optimizer_steps
from orchestrator.distill.memory import GIB, MemoryEstimate, estimate_step_memory
from orchestrator.distributed.cluster import ray_cluster, worker_memory
from orchestrator.evaluate.intervals import DELTA_INTERVALS
from orchestrator.files import atomic_write_json, durable, in_ray_job, read_json
from orchestrator.pipeline import stages
from orchestrator.pipeline.driver import Hooks, StudentsJob, run_pipeline
from orchestrator.pipeline.preflight import (
    check_trial_memory,
    comparable,
    concurrent_trials,
    preflight,
    ray_address,
)
from orchestrator.pipeline.stages import Plan, StudentResult, TeacherInfo
from orchestrator.prune.surgery import label, parse_label
from orchestrator.report.page import report_of
from orchestrator.report.results import Results, read_results
from orchestrator.sweep.listening import log_listening, register_chosen, registered_name
from orchestrator.sweep.space import param_space, trial_plan, trial_space
from orchestrator.sweep.trial import TRIAL_TAG, SweepPayload, run_trial


class RayExecutor:
    """Stage tasks as Ray tasks, one worker's resources each, all at once."""

    def __init__(self, cfg: Config):
        t = cfg.train
        self.options = {"num_cpus": t.cpus_per_worker, "num_gpus": t.gpus_per_worker if t.use_gpu else 0}
        self.workers = t.num_workers  # a trial's workers: the baseline's evaluation is split as a trial's is

    def map(self, fn, args):
        task = ray.remote(_forgetting(fn)).options(**self.options)
        return ray.get([task.remote(*a) for a in args])  # inside ray_cluster: a ConfigError comes out as itself


def _forgetting(fn):
    def run(*args):
        try:
            return fn(*args)
        finally:
            stages.forget_models()  # a reused Ray worker must not keep a model (GPU memory) between tasks

    run.__name__ = run.__qualname__ = fn.__name__
    return run


def resolve_paths(cfg: Config) -> Config:
    """The config with absolute storage and output paths, as trials in other directories need them."""
    cfg = cfg.model_copy(deep=True)
    cfg.sweep.storage_path = durable(cfg.sweep.storage_path)
    cfg.output_dir = durable(cfg.output_dir)
    return cfg


def run_sweep(cfg: Config, address: str | None = None, progress: bool = True, log=print, verbose: bool = False) -> dict:
    cfg = resolve_paths(cfg)
    address, address_setting = ray_address(address)
    checked = preflight(cfg, "sweep", address=address, address_setting=address_setting)
    uri, space = checked.tracking_uri, param_space(cfg, teacher_layers(cfg))
    base = Path(cfg.sweep.storage_path) / cfg.sweep.name
    if in_ray_job():
        log(f"Ray job: results under {base}, tracking {uri}")
    chatter = route_chatter(base / "ray-and-mlflow.log", verbose)
    if chatter:
        log(f"Ray's and MLflow's own messages: {chatter} (--verbose shows them here)")
    with ray_cluster(
        address,
        cfg.sweep.local_cpus,
        configure_logging=verbose,
        started_hook=lambda: route_chatter(base / "ray-and-mlflow.log", verbose),  # ray.init resets its logger
    ):
        nodes = sum(1 for n in ray.nodes() if n["Alive"])
        problems = []  # all of them at once: the README's command on a multi-node cluster has both
        if nodes > 1 and in_ray_job() and any(_under_home(p) for p in (cfg.sweep.storage_path, cfg.output_dir)):
            problems.append(
                f"the sweep's files would go under {Path.home()}, which other nodes do not see: give absolute "
                "paths on a shared mount, e.g. --set sweep.storage_path=/mnt/shared/sweeps "
                "--set output_dir=/mnt/shared/runs"
            )
        if nodes > 1 and uri.startswith("sqlite:"):
            problems.append(
                f"tracking.uri {uri} is a sqlite file, local to one node: run an MLflow server (cluster.yaml "
                "starts one on the head) and set tracking.uri=http://HEAD:5000 or MLFLOW_TRACKING_URI"
            )
        if problems:
            raise ConfigError(f"this cluster has {nodes} nodes, and " + "; and ".join(problems))
        concurrency = concurrent_trials(cfg, ray.cluster_resources())
        # will a trial fit on a worker of this cluster? before any stage runs
        estimate, have = trial_memory(cfg), worker_memory(cfg.train.use_gpu, cfg.train.cpus_per_worker)
        log(f"memory per Train worker (estimate): {estimate.describe()}; one holds {have / GIB:.1f} GiB")
        check_trial_memory(cfg, estimate, have)
        return _run(cfg, base, uri, space, concurrency, progress, log)


def _under_home(path: str) -> bool:
    return Path(path).is_relative_to(Path.home() / "prun-tts")


def _run(cfg: Config, base: Path, uri: str, space: dict, concurrency: int, progress: bool, log) -> dict:
    """The pipeline's driver on Ray: stage tasks as Ray tasks, the students as Tune trials, MLflow hooks."""
    atomic_write_json(base / "config.json", comparable(cfg))
    hooks = MlflowHooks(cfg, uri, base, space, log)
    done = run_pipeline(
        cfg,
        base,
        RayExecutor(cfg),
        TuneStudents(base, concurrency, progress, hooks),
        report=lambda results: report_of(results, base / "report", log),
        hooks=hooks,
        space=cfg.sweep.space,
        progress=progress,
        log=log,
    )
    return {
        "rows": done.rows,
        "baseline": done.baseline,
        "parent_run_id": hooks.run.id,
        "tracking_uri": uri,
        "files": done.files,
        "storage": str(base),
        "report": done.page,
    }


class MlflowHooks(Hooks):
    """The sweep's MLflow runs around the driver's stages: the parent run (found again when the
    sweep resumes), the teacher's baseline run, and the files of each stage as artifacts."""

    def __init__(self, cfg: Config, uri: str, base: Path, space: dict, log):
        self.cfg, self.uri, self.base, self.space, self.log = cfg, uri, base, space, log
        self.run: _SweepRun | None = None
        self.teacher_path = ""
        self.written: Results | None = None  # the results folder, once written
        self.runs: dict[str, str] = {}  # "teacher" and each finished trial id -> its MLflow run

    def teacher(self, teacher: TeacherInfo) -> None:
        self.run = _parent_run(self.cfg, self.uri, self.base, teacher, self.space)
        self.teacher_path = teacher.path

    def baseline(self, teacher: TeacherInfo, baseline: dict) -> None:
        _baseline_run(self.uri, self.run, teacher, baseline)

    def scores(self, files: dict[str, Path]) -> None:
        for f in files.values():
            tracking.log_artifacts(self.uri, self.run.id, f, "scores")

    def results(self, folder: Path) -> None:
        tracking.log_artifacts(self.uri, self.run.id, folder, "results")
        self.written = read_results(folder)
        self.runs = self._runs(self.written)
        for row in self.written.trials:  # each trial run's paired intervals, beside its wer_delta
            if str(row["trial_id"]) in self.runs:
                intervals = {k: row[k] for k in DELTA_INTERVALS}
                tracking.log_metrics_once(self.uri, self.runs[str(row["trial_id"])], intervals)

    def report(self, page: Path) -> None:
        tracking.log_artifacts(self.uri, self.run.id, page.parent, "report")
        log_listening(self.uri, self.run.id, self.runs, self.written, self.log)
        name = registered_name(self.cfg, self.teacher_path)
        if name:
            register_chosen(self.cfg, self.uri, name, self.runs, self.run.id, page, self.written, self.log)

    def _runs(self, results) -> dict[str, str]:
        """The MLflow run of the teacher ("teacher") and of each finished trial (its id)."""
        exp, uri = self.run.experiment, self.uri
        runs = {"teacher": tracking.find_run(uri, exp, {**self.run.tags, tracking.ROLE: "baseline"})}
        for r in results.trials:
            if r["status"] == "ok":
                runs[str(r["trial_id"])] = tracking.find_run(uri, exp, {TRIAL_TAG: str(r["trial_id"])})
        return {k: v for k, v in runs.items() if v}

    def failed(self) -> None:
        if self.run is not None:
            tracking.finish_run(self.uri, self.run.id, "KILLED")  # never left RUNNING; the same command resumes it

    def finished(self, rows: list[dict], page: Path) -> None:
        done = [r for r in rows if r["status"] == "ok"]
        best = {"best_wer": min(r["wer"] for r in done)} if done else {}
        tracking.log_metrics(self.uri, self.run.id, {"trials": len(rows), "trials_ok": len(done), **best})
        tracking.finish_run(self.uri, self.run.id)
        where = self.uri if self.uri.startswith("http") else f"mlflow ui --backend-store-uri {self.uri}"
        self.log(
            f"MLflow: experiment {self.cfg.tracking.experiment!r}, sweep run {self.run.id}\n  open: {where}\n"
            f"  compare: select the runs of this sweep, Chart view, scatter chart x=n_layers y=wer\n"
            f"  files: {self.base / 'results'}\n"
            f"report: {page}"
        )


class TuneStudents:
    """The students as a Tune experiment: one trial each (a Ray Train run), resumed from Tune's
    own state when the sweep is run again; evaluations and curves read back from each trial's
    MLflow run (whole across resumes and Train restarts, on any node)."""

    def __init__(self, base: Path, concurrency: int, progress: bool, hooks: MlflowHooks):
        self.base, self.concurrency, self.progress, self.hooks = base, concurrency, progress, hooks

    def describe(self, job: StudentsJob) -> str:
        return f"up to {self.concurrency} trials at once, {job.cfg.train.num_workers} Train workers each"

    def run(self, job: StudentsJob, log) -> list[StudentResult]:
        cfg, uri, sweep_run = job.cfg, self.hooks.uri, self.hooks.run
        payload = SweepPayload(
            cfg,
            job.teacher,
            job.all_plans,
            job.baseline,
            job.budget,
            job.teacher_cache,
            uri,
            sweep_run.experiment,
            sweep_run.id,
            str(self.base / "train"),
        )
        steps = optimizer_steps(job.budget.pairs, cfg.distill)
        space = trial_space(cfg, job.plans, job.teacher.n_layers)
        results = _tune(cfg, self.base, payload, space, self.concurrency, steps, self.progress, log)
        students = [_student(r, job.all_plans) for r in results]
        _close_unfinished(uri, sweep_run.experiment, students)
        with tempfile.TemporaryDirectory(prefix="prun-tts-evaluations-") as downloads:
            for s in students:
                run_id = s.status == "ok" and tracking.find_run(uri, sweep_run.experiment, {TRIAL_TAG: s.trial_id})
                if run_id:
                    got = tracking.download_artifacts(uri, run_id, "evaluation.json", Path(downloads) / s.trial_id)
                    s.evaluation = read_json(got, "trial evaluation")
                    s.curve = tracking.curve_rows(uri, run_id)
        return students


def trial_memory(cfg: Config) -> MemoryEstimate:
    """The estimated memory of a Train worker of the sweep's largest student on the budget's
    longest training pair (`distill.memory`), from the config, before any stage runs: the teacher
    on disk is read on the CPU (a mini teacher not trained yet: its shape, on the meta device)."""
    n = teacher_layers(cfg)
    budget = stages.budget_stage(cfg, stages.teacher_for_checks(cfg))
    if cfg.sweep.space == "layer_sets":
        fewest = min(len(parse_label(text)) for text in cfg.sweep.layer_sets)
    else:
        fewest = min(stages.drop_counts(cfg, n))
    teacher = teacher_for_estimates(cfg, build_world(cfg))
    rows = cfg.distill.batch_size // cfg.train.num_workers  # a worker's micro-batch
    w, t = cfg.distill.weights, cfg.train
    latent = w.latent > 0 or w.embedding > 0  # the teacher's hidden states are kept
    tokens, speech = rows * budget.longest, rows * budget.most_speech
    return estimate_step_memory(teacher, n - fewest, t.strategy, t.num_workers, tokens, speech, latent)


class _SweepRun:
    def __init__(self, experiment: str, run_id: str, tags: dict):
        self.experiment, self.id, self.tags = experiment, run_id, tags


def _parent_run(cfg: Config, uri: str, base: Path, teacher: TeacherInfo, space: dict) -> _SweepRun:
    """The sweep's MLflow run: found again by its storage path when the sweep is resumed."""
    exp_id = tracking.experiment_id(uri, cfg.tracking.experiment)
    tags = {"prun_tts.sweep": str(base)}
    run = tracking.find_run(uri, exp_id, {**tags, tracking.ROLE: "sweep"})
    if run is None:
        run = tracking.start_run(
            uri,
            exp_id,
            cfg.sweep.name,
            "sweep",
            params=tracking.flatten(cfg.model_dump()),
            tags={
                **tags,
                "prun_tts.teacher": teacher.path,
                "prun_tts.teacher_digest": teacher.digest,
                "prun_tts.code_version": tracking.code_version(),
                "prun_tts.search_space": json.dumps(space, default=str),
            },
        )
    else:
        tracking.set_status(uri, run, "RUNNING")
    return _SweepRun(exp_id, run, tags)


def _baseline_run(uri: str, sweep_run: _SweepRun, teacher: TeacherInfo, baseline: dict) -> None:
    """The teacher's MLflow run (one per sweep: a resumed sweep finds it)."""
    if tracking.find_run(uri, sweep_run.experiment, {**sweep_run.tags, tracking.ROLE: "baseline"}):
        return
    n = teacher.n_layers
    run = tracking.start_run(
        uri,
        sweep_run.experiment,
        f"teacher ({n} layers)",
        "baseline",
        sweep_run.id,
        params={"dropped_layers": "", "kept_layers": label(range(n)), "scorer": "none", "ratio": 0.0},
        tags=sweep_run.tags,
    )
    tracking.log_metrics(uri, run, baseline)
    tracking.finish_run(uri, run)


def _tune(
    cfg: Config, base: Path, payload: SweepPayload, space: dict, concurrency: int, steps: int, progress: bool, log
):
    # Ctrl-C raises KeyboardInterrupt out of fit() (Tune's own handler would end the experiment
    # quietly and fit() would return the unfinished trials as if they were results)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=payload), {"CPU": cfg.train.driver_cpus})
    tune_dir = base / "tune"
    if tune.Tuner.can_restore(str(tune_dir)):
        log(f"      resuming the sweep in {tune_dir} (finished trials are kept)")
        tuner = tune.Tuner.restore(str(tune_dir), trainable, resume_errored=True)
    else:
        reports = steps // cfg.train.report_every + 1
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=_tune_config(cfg, concurrency, reports),
            run_config=tune.RunConfig(
                name="tune",
                storage_path=str(base),
                verbose=0,
                callbacks=[TrialProgress(steps)] if progress else [],
            ),
        )
    return tuner.fit()


class TrialProgress(tune.Callback):
    """One line per trial report: its step out of the total, its loss and the time left.
    (Tune pickles its callbacks with the experiment: this one holds numbers only.)"""

    def __init__(self, steps: int):
        self.steps, self.first = steps, {}  # trial -> (time, step) of its first report in this session

    def on_trial_start(self, iteration, trials, trial, **info):
        say(f"      trial {trial.trial_id} started: {_describe(trial.config)}")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        step = result.get("step", 0)
        if "wer" in result:
            say(f"      trial {trial.trial_id} done: {stages.describe(result)}")
            return
        # the pace since this session's first report: a resumed trial starts at its checkpoint's step
        t0, s0 = self.first.setdefault(trial.trial_id, (time.time(), step))
        pace = (time.time() - t0) / (step - s0) if step > s0 else None
        left = f", about {pace * (self.steps - step) / 60:.1f} min of training left" if pace else ""
        say(f"      trial {trial.trial_id} step {step}/{self.steps} loss {result.get('loss', float('nan')):.3f}{left}")

    def on_trial_error(self, iteration, trials, trial, **info):
        say(f"      trial {trial.trial_id} FAILED: {_last_line(trial.error_file)}")


def say(line: str) -> None:
    print(line, flush=True)


def _describe(config: dict) -> str:
    if "layer_set" in config:
        return f"drop {config['layer_set']}"
    return f"{config['scorer']}/{config['strategy']}, drop {config['n_drop']} layers"


def _last_line(error_file) -> str:
    try:
        text = Path(error_file).read_text().strip().splitlines()
        return text[-1] if text else "(no message)"
    except (OSError, TypeError):
        return "(see the trial log)"


def _tune_config(cfg: Config, concurrency: int, reports: int = 100) -> tune.TuneConfig:
    """`reports`: how many times a trial reports (ASHA's max_t: beyond it ASHA would stop
    a trial before its final evaluation)."""
    sw = cfg.sweep
    search_alg = scheduler = None
    if sw.search == "optuna":
        # metric/mode stay off TuneConfig: set there, they would turn the search single-objective
        search_alg = OptunaSearch(
            metric=list(sw.objectives), mode=["min" if m != "sim" else "max" for m in sw.objectives], seed=sw.seed
        )
    if sw.scheduler == "asha":
        scheduler = ASHAScheduler(metric=sw.asha_metric, mode="min", grace_period=sw.asha_grace, max_t=reports + 1)
    return tune.TuneConfig(
        search_alg=search_alg, scheduler=scheduler, num_samples=sw.num_samples, max_concurrent_trials=concurrency
    )


def _student(result, plans: list[Plan]) -> StudentResult:
    """A Tune result as the driver's StudentResult (its evaluation and curve are read afterwards)."""
    m = result.metrics or {}
    status = "ok" if result.error is None and "wer" in m else "error" if result.error is not None else "stopped"
    error = str(result.error).strip().splitlines()[-1][:300] if result.error is not None else ""
    return StudentResult(m.get("trial_id", ""), trial_plan(result.config, plans), status, m, error=error)


def _close_unfinished(uri: str, exp_id: str, students: list[StudentResult]) -> None:
    """Trials the scheduler stopped (their driver was killed) or that failed: close their runs."""
    for s in students:
        run_id = s.status != "ok" and tracking.find_run(uri, exp_id, {TRIAL_TAG: s.trial_id})
        if run_id:
            tracking.finish_run(uri, run_id, "KILLED" if s.status == "stopped" else "FAILED")
