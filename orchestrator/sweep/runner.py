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
import math
import os
import socket
import time
from pathlib import Path

import ray
from ray import tune

from orchestrator import tracking
from orchestrator.config import Config, ConfigError
from orchestrator.pipeline import stages
from orchestrator.pipeline.state import atomic_write_json, durable, in_ray_job, read_json
from orchestrator.report.results import write_results_extras
from orchestrator.sweep.space import param_space, trial_plan
from orchestrator.sweep.trial import SweepPayload, run_trial


def ray_address(given: str | None) -> tuple[str | None, str]:
    """The Ray address to join and the setting it came from: --address, else $RAY_ADDRESS
    (None: a private local Ray)."""
    if given:
        return given, "--address"
    return os.environ.get("RAY_ADDRESS") or None, "RAY_ADDRESS"


def check_address(address: str, timeout: float = 5.0, setting: str = "--address") -> None:
    """Refuse a Ray address nothing answers on, before connecting (ray.init would wait long).
    `setting`: where the address came from (`--address`, `RAY_ADDRESS`), named in the message."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        fix = (
            "leave --address out for a private local Ray"
            if setting == "--address"
            else "unset RAY_ADDRESS (left over in this shell?) for a private local Ray"
        )
        named = f"--address {address}" if setting == "--address" else f"{setting}={address}"
        raise ConfigError(
            f"{named}: no Ray cluster answers there ({e}); give the head node's HOST:PORT (6379 by default), or {fix}"
        ) from None


def trial_resources(cfg: Config) -> dict[str, float]:
    t = cfg.train
    need = {"CPU": t.driver_cpus + t.num_workers * t.cpus_per_worker}
    if t.use_gpu:
        need["GPU"] = t.num_workers * t.gpus_per_worker
    return need


def concurrent_trials(cfg: Config, cluster: dict[str, float]) -> int:
    """How many trials the cluster holds at once; refuses a trial larger than the cluster."""
    need = trial_resources(cfg)
    fits = min(math.floor(cluster.get(r, 0) / amount + 1e-9) for r, amount in need.items() if amount > 0)
    if fits < 1:
        have = ", ".join(f"{cluster.get(r, 0):g} {r}" for r in need)
        want = ", ".join(f"{v:g} {r}" for r, v in need.items())
        fix = (
            "train.gpus_per_worker"
            if "GPU" in need and cluster.get("GPU", 0) < need["GPU"]
            else "train.cpus_per_worker"
        )
        raise ConfigError(
            f"train.num_workers={cfg.train.num_workers}: one trial needs {want} (driver + workers); "
            f"the cluster has {have}. Lower train.num_workers or {fix}, or add nodes"
        )
    return min(fits, cfg.sweep.max_concurrent_trials) if cfg.sweep.max_concurrent_trials else fits


class RayExecutor:
    """Stage tasks as Ray tasks, one worker's resources each, all at once."""

    def __init__(self, cfg: Config):
        t = cfg.train
        self.options = {"num_cpus": t.cpus_per_worker, "num_gpus": t.gpus_per_worker if t.use_gpu else 0}

    def map(self, fn, args):
        task = ray.remote(_forgetting(fn)).options(**self.options)
        try:
            return ray.get([task.remote(*a) for a in args])
        except ray.exceptions.RayTaskError as e:  # a missing piece met inside a task: its message, not Ray's trace
            if isinstance(e.cause, ConfigError):
                raise e.cause from None
            raise


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


def check_sweep(cfg: Config, address: str | None, address_setting: str = "--address") -> tuple[str, dict]:
    """Everything a user can get wrong, checked before Ray starts or anything is written:
    returns the tracking URI and the Tune search space. `address_setting`: where `address`
    came from (`--address` or `RAY_ADDRESS`)."""
    from orchestrator.builders import teacher_layers
    from orchestrator.model_checks import check_output_dir

    n_layers = teacher_layers(cfg)
    space = param_space(cfg, n_layers)
    if cfg.distill.batch_size % cfg.train.num_workers:
        raise ConfigError(
            f"distill.batch_size={cfg.distill.batch_size} does not split over train.num_workers="
            f"{cfg.train.num_workers}; make the batch size a multiple of the number of workers"
        )
    check_output_dir(cfg.sweep.storage_path, "sweep.storage_path")
    check_output_dir(cfg.output_dir, "output_dir")
    if not address:  # a private local Ray: its size is known before it starts
        concurrent_trials(cfg, {"CPU": cfg.sweep.local_cpus, "GPU": _local_gpus()})
    check_asha_metric(cfg)
    uri = tracking.tracking_uri(cfg.tracking.uri, cfg.output_dir)
    from_env = not cfg.tracking.uri and os.environ.get("MLFLOW_TRACKING_URI")
    tracking.check_tracking(uri, setting="MLFLOW_TRACKING_URI" if from_env else "tracking.uri")
    if address:
        check_address(address, setting=address_setting)
    base = Path(cfg.sweep.storage_path) / cfg.sweep.name
    _check_same_sweep(cfg, base)
    stages.budget_stage(cfg, stages.teacher_for_checks(cfg))  # a budget under one batch, missing shards
    return uri, space


def check_asha_metric(cfg: Config) -> None:
    """sweep.scheduler=asha stops trials on a metric every training report holds (Tune would fail
    the sweep only once trials report, a typo minutes in)."""
    if cfg.sweep.scheduler != "asha":
        return
    d = cfg.distill
    terms = [k for k, w in d.weights.model_dump().items() if w > 0 and (k != "ce" or d.on_policy == 0)]
    reported = ["loss", *terms, "grad_norm"]  # train_step's per-step metrics (no "ce" on on-policy steps)
    if cfg.sweep.asha_metric not in reported:
        raise ConfigError(
            f"sweep.asha_metric={cfg.sweep.asha_metric!r}: the trials do not report it while they train; ASHA "
            f"(minimising) can stop them on {', '.join(reported)}, e.g. sweep.asha_metric=loss"
        )


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count()


def run_sweep(cfg: Config, address: str | None = None, progress: bool = True, log=print, verbose: bool = False) -> dict:
    from orchestrator.console import route_chatter, stop_on_sigterm

    cfg = resolve_paths(cfg)
    address, address_setting = ray_address(address)
    uri, space = check_sweep(cfg, address, address_setting)
    base = Path(cfg.sweep.storage_path) / cfg.sweep.name
    if in_ray_job():
        log(f"Ray job: results under {base}, tracking {uri}")
    chatter = route_chatter(base / "ray-and-mlflow.log", verbose)
    if chatter:
        log(f"Ray's and MLflow's own messages: {chatter} (--verbose shows them here)")
    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address or "local",
            num_cpus=None if address else cfg.sweep.local_cpus,
            include_dashboard=False if not address else None,
            log_to_driver=True,
            configure_logging=verbose,
        )
        route_chatter(base / "ray-and-mlflow.log", verbose)  # ray.init resets its logger
        stop_on_sigterm()  # and installs a SIGTERM handler that aborts
    try:
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
        return _run(cfg, base, uri, space, concurrency, progress, log)
    finally:
        if started:
            ray.shutdown()


def _under_home(path: str) -> bool:
    return Path(path).is_relative_to(Path.home() / "prun-tts")


def _check_same_sweep(cfg: Config, base: Path) -> None:
    saved = base / "config.json"
    if saved.is_file() and read_json(saved, "the sweep's config") != _comparable(cfg):
        raise ConfigError(
            f"sweep {cfg.sweep.name!r} in {base} was started with a different config; resume it "
            "with the same settings, or give this one a new sweep.name"
        )


def _comparable(cfg: Config) -> dict:
    d = cfg.model_dump()
    d["sweep"].pop("max_concurrent_trials")  # a resumed sweep keeps the concurrency Tune saved with it
    d["sweep"].pop("local_cpus")
    return d


def _run(cfg: Config, base: Path, uri: str, space: dict, concurrency: int, progress: bool, log) -> dict:
    """The sweep's stages, in order."""
    state = base / "state"
    ray_tasks = RayExecutor(cfg)
    atomic_write_json(base / "config.json", _comparable(cfg))

    log(f"[1/7] teacher ({cfg.world.name} world)")
    teacher = stages.teacher_stage(cfg, progress)
    sweep_run = _parent_run(cfg, uri, base, teacher, space)
    try:
        log(f"[2/7] baseline: the teacher on {cfg.evaluate.n_items} test items")
        baseline = stages.baseline_stage(cfg, teacher, ray_tasks, state, log)
        _baseline_run(uri, sweep_run, teacher, baseline)
        log(f"      teacher: {teacher.n_layers} layers, WER {baseline['wer']:.2f}%, SIM {baseline['sim']:.3f}")

        log("[3/7] layer plans: each scorer's choice, once for the whole sweep")
        # trials of the other spaces (given layer sets, blocks) carry their own layers: nothing to score
        plans = stages.plans_stage(cfg, teacher, ray_tasks, state, log) if cfg.sweep.space == "selected" else {}
        _log_plans(uri, sweep_run, plans, base / "scores", log)

        log("[4/7] data budget and teacher cache")
        budget = stages.budget_stage(cfg, teacher)
        log(f"      {budget.pairs} pairs, {budget.unique_tokens} tokens, {budget.hours:.2f} h of speech")
        cache = stages.teacher_cache_stage(cfg, teacher, budget, ray_tasks, base / "teacher-cache", log)

        log(f"[5/7] students: up to {concurrency} trials at once, {cfg.train.num_workers} Train workers each")
        payload = SweepPayload(
            cfg, teacher, plans, baseline, cache, uri, sweep_run.experiment, sweep_run.id, str(base / "train")
        )
        steps = budget.pairs * cfg.distill.epochs // (cfg.distill.batch_size * cfg.distill.grad_accum)
        results = _tune(cfg, base, payload, space, concurrency, steps, progress, log)

        log("[6/7] trade-off")
        rows = stages.sort_rows([_trial_row(r, plans, teacher.n_layers) for r in results])
        _close_unfinished(uri, sweep_run.experiment, rows)
        files = stages.tradeoff_stage(rows, baseline, base / "results")
        _results_extras(cfg, base, uri, sweep_run, teacher, ray_tasks, results, budget)
        tracking.log_artifacts(uri, sweep_run.id, base / "results", "results")

        log("[7/7] report")
        page = stages.report_stage(base / "results", base / "report", log)
        tracking.log_artifacts(uri, sweep_run.id, page.parent, "report")
    except BaseException:
        tracking.finish_run(uri, sweep_run.id, "KILLED")  # never left RUNNING; the same command resumes it
        raise
    done = [r for r in rows if r["status"] == "ok"]
    best = {"best_wer": min(r["wer"] for r in done)} if done else {}
    tracking.log_metrics(uri, sweep_run.id, {"trials": len(rows), "trials_ok": len(done), **best})
    tracking.finish_run(uri, sweep_run.id)
    log(stages.format_trials(rows, baseline))
    where = uri if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
    log(
        f"MLflow: experiment {cfg.tracking.experiment!r}, sweep run {sweep_run.id}\n  open: {where}\n"
        f"  compare: select the runs of this sweep, Chart view, scatter chart x=n_layers y=wer\n"
        f"  files: {base / 'results'}\n"
        f"report: {page}"
    )
    return {
        "rows": rows,
        "baseline": baseline,
        "parent_run_id": sweep_run.id,
        "tracking_uri": uri,
        "files": files,
        "storage": str(base),
        "report": page,
    }


def _results_extras(cfg: Config, base: Path, uri: str, sweep_run, teacher, executor, results, budget) -> None:
    """What the report needs beside the trade-off, from each finished trial's MLflow run (where
    its worker logged them, on whichever node): its evaluation and its training curve (whole
    across resumes); and the teacher's evaluation, the layer scores and the data budget."""
    import tempfile

    from orchestrator.recipes.distill import budget_record

    evaluations, curves = {}, {}
    with tempfile.TemporaryDirectory(prefix="prun-tts-evaluations-") as downloads:
        for r in results:
            trial = (r.metrics or {}).get("trial_id")
            run_id = trial and tracking.find_run(uri, sweep_run.experiment, {"prun_tts.trial_id": trial})
            if r.error is not None or "wer" not in (r.metrics or {}) or not run_id:
                continue
            got = tracking.download_artifacts(uri, run_id, "evaluation.json", Path(downloads) / trial)
            evaluations[trial] = read_json(got, "trial evaluation")
            curves[trial] = tracking.curve_rows(uri, run_id)
    scores = base / "scores" / "layer_scores.json"
    write_results_extras(
        base / "results",
        cfg.model_dump(),
        stages.teacher_evaluation(cfg, teacher, executor, base / "state", log=None),
        evaluations,
        curves,
        read_json(scores, "layer scores") if scores.is_file() else {},
        budget_record(budget, teacher.train_tokens),
    )


class _SweepRun:
    def __init__(self, experiment: str, run_id: str, tags: dict):
        self.experiment, self.id, self.tags = experiment, run_id, tags


def _parent_run(cfg: Config, uri: str, base: Path, teacher: stages.TeacherInfo, space: dict) -> _SweepRun:
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


def _baseline_run(uri: str, sweep_run: _SweepRun, teacher: stages.TeacherInfo, baseline: dict) -> None:
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
        params={"dropped_layers": "", "kept_layers": "-".join(map(str, range(n))), "scorer": "none", "ratio": 0.0},
        tags=sweep_run.tags,
    )
    tracking.log_metrics(uri, run, baseline)
    tracking.finish_run(uri, run)


def _log_plans(uri: str, sweep_run: _SweepRun, plans: dict, out: Path, log) -> None:
    from orchestrator.recipes.score import write_scores

    for name, plan in plans.items():
        log(f"      {name:>28}: drop {plan['drop']}" + (f" ({plan['scorer']})" if name.startswith("best") else ""))
    by_scorer = stages.scores_by_scorer(plans)
    if by_scorer:
        for f in write_scores(by_scorer, out).values():
            tracking.log_artifacts(uri, sweep_run.id, f, "scores")


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
            say(
                f"      trial {trial.trial_id} done: WER {result['wer']:.2f}% ({result['wer_delta']:+.2f}), "
                f"{result['n_layers']} layers, speed-up {result['speedup']:.2f}x"
            )
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
        from ray.tune.search.optuna import OptunaSearch

        # metric/mode stay off TuneConfig: set there, they would turn the search single-objective
        search_alg = OptunaSearch(
            metric=list(sw.objectives), mode=["min" if m != "sim" else "max" for m in sw.objectives], seed=sw.seed
        )
    if sw.scheduler == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(metric=sw.asha_metric, mode="min", grace_period=sw.asha_grace, max_t=reports + 1)
    return tune.TuneConfig(
        search_alg=search_alg, scheduler=scheduler, num_samples=sw.num_samples, max_concurrent_trials=concurrency
    )


def _trial_row(result, plans: dict, n_layers: int) -> dict:
    """A Tune result as a row of trials.csv."""
    m = result.metrics or {}
    status = "ok" if result.error is None and "wer" in m else "error" if result.error is not None else "stopped"
    error = str(result.error).strip().splitlines()[-1][:300] if result.error is not None else ""
    return stages.trial_row(m.get("trial_id", ""), trial_plan(result.config, plans), n_layers, status, m, error)


def _close_unfinished(uri: str, exp_id: str, rows: list[dict]) -> None:
    """Trials the scheduler stopped (their driver was killed) or that failed: close their runs."""
    for r in rows:
        run_id = r["status"] != "ok" and tracking.find_run(uri, exp_id, {"prun_tts.trial_id": r["trial_id"]})
        if run_id:
            tracking.finish_run(uri, run_id, "KILLED" if r["status"] == "stopped" else "FAILED")
