"""A sweep, end to end: check the inputs, connect to Ray, evaluate the teacher once (the
baseline run), choose each scorer's layers once (WLI: one Ray task per layer), compute
the teacher's outputs once (the cache), run the Tune experiment (each trial a Ray Train
run), then write the trade-off (trials CSV, Pareto plot) to the sweep's MLflow run.

Everything lives under `sweep.storage_path/sweep.name`; running the same sweep again
resumes it: finished trials are kept, unfinished ones continue from their checkpoints.
"""

from __future__ import annotations

import csv
import json
import math
import os
import socket
from pathlib import Path

import ray
from ray import tune

from orchestrator import tracking
from orchestrator.builders import build_world, load_model, scoring_context, teacher_layers, teacher_source
from orchestrator.config import Config, ConfigError
from orchestrator.distill.loop import loss_spec
from orchestrator.evaluate.tradeoff import pareto_front, plot_tradeoff
from orchestrator.recipes.distill import plan_budget
from orchestrator.sweep.space import param_space, plan_keys, plan_name
from orchestrator.sweep.trial import run_trial, trial_metrics


def check_address(address: str, timeout: float = 5.0) -> None:
    """Refuse a Ray address nothing answers on, before connecting (ray.init would wait long)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"--address {address}: no Ray cluster answers there ({e}); give the head node's "
            "HOST:PORT (6379 by default), or leave --address out for a private local Ray"
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


def _task_options(cfg: Config) -> dict:
    t = cfg.train
    return {"num_cpus": t.cpus_per_worker, "num_gpus": t.gpus_per_worker if t.use_gpu else 0}


def _teacher_in_task(cfg_dict: dict):
    """Inside a Ray task: the config, the world and the frozen teacher, on the task's device."""
    from orchestrator.builders import pick_device

    cfg = Config.model_validate(cfg_dict)
    world = build_world(cfg)
    return cfg, world, load_model(world, cfg.world.teacher.path, pick_device(cfg))


@ray.remote
def _evaluate_teacher(cfg_dict: dict) -> dict:
    """The baseline: the teacher evaluated like every student (its deltas are 0, its speed-up 1)."""
    from orchestrator.evaluate.synthesis import evaluate_model

    cfg, world, teacher = _teacher_in_task(cfg_dict)
    ev = evaluate_model(teacher, world, world.test_items[: cfg.evaluate.n_items], cfg.evaluate)
    return trial_metrics(ev, 1.0, {"wer": 100 * ev.wer, "sim": ev.sim})


@ray.remote
def _wer_without(cfg_dict: dict, layers: list[int]) -> float:
    from orchestrator.prune.importance import wer_without

    cfg, world, teacher = _teacher_in_task(cfg_dict)
    return wer_without(teacher, scoring_context(cfg, world, 1), layers)


@ray.remote
def _choose(cfg_dict: dict, scorer: str, strategy: str, n_drop: int):
    """Layers `scorer` + `strategy` remove, and the scores behind the choice."""
    from orchestrator.prune.select import choose_layers

    cfg, world, teacher = _teacher_in_task(cfg_dict)
    return choose_layers(strategy, scorer, teacher, scoring_context(cfg, world, n_drop), n_drop)


@ray.remote
def _build_cache(cfg_dict: dict, directory: str, key: dict, with_hidden: bool) -> str:
    from orchestrator.distill.teacher_cache import build_teacher_cache

    _, world, teacher = _teacher_in_task(cfg_dict)
    pairs = [world.train_pairs[i] for i in range(key["pairs"])]
    return str(build_teacher_cache(teacher, world.family, pairs, directory, key, with_hidden))


def layer_plans(cfg: Config, n_layers: int, log=print) -> tuple[dict[str, list[int]], dict]:
    """Each (scorer, strategy, n_drop) of the space -> the layers it removes; and the scores.
    Scores are computed once per sweep; WLI's per-layer syntheses run as parallel Ray tasks."""
    from orchestrator.prune.importance import wli_from_wers
    from orchestrator.prune.select import contiguous, lowest

    keys = plan_keys(cfg.sweep, n_layers)
    opts, cfg_dict = _task_options(cfg), cfg.model_dump()
    chosen, refs = {}, {}
    if any(s == "wli" and st != "iterative" for s, st, _ in keys):
        log(f"      wli: {n_layers + 1} syntheses of the dev set as parallel Ray tasks")
        wers = ray.get(
            [_wer_without.options(**opts).remote(cfg_dict, layers) for layers in [[]] + [[l] for l in range(n_layers)]]
        )
        wli = wli_from_wers(wers[0], wers[1:], cfg.score.n_items)
    for s, st, k in keys:
        if s == "wli" and st != "iterative":  # selection from the parallel scores: no task needed
            chosen[plan_name(s, st, k)] = ((lowest if st == "lowest" else contiguous)(wli, k), wli)
        else:
            refs[plan_name(s, st, k)] = _choose.options(**opts).remote(cfg_dict, s, st, k)
    chosen.update(zip(refs, ray.get(list(refs.values()))))
    names = [plan_name(*key) for key in keys]  # in the order of the space
    return {n: chosen[n][0] for n in names}, {n: chosen[n][1] for n in names}


def run_sweep(cfg: Config, address: str | None = None, progress: bool = True, log=print) -> dict:
    sw = cfg.sweep
    # Everything a user can get wrong is checked before Ray starts or anything is written.
    n_layers = teacher_layers(cfg)
    space = param_space(sw, n_layers)
    if cfg.distill.batch_size % cfg.train.num_workers:
        raise ConfigError(
            f"distill.batch_size={cfg.distill.batch_size} does not split over train.num_workers="
            f"{cfg.train.num_workers}; make the batch size a multiple of the number of workers"
        )
    if "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:  # inside `ray job submit`: the working directory is temporary
        relative = [
            f
            for f, v in (("sweep.storage_path", sw.storage_path), ("output_dir", cfg.output_dir))
            if not Path(v).is_absolute()
        ]
        if relative:
            raise ConfigError(
                f"{', '.join(relative)} must be absolute paths in a Ray job (its working directory is "
                "deleted afterwards): give a directory every node sees, e.g. "
                "--set sweep.storage_path=/mnt/shared/sweeps --set output_dir=/mnt/shared/runs"
            )
    uri = tracking.tracking_uri(cfg.tracking.uri, cfg.output_dir)
    tracking.check_tracking(uri)
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        check_address(address)
    base = (Path(sw.storage_path) / sw.name).resolve()
    _check_same_sweep(cfg, base)

    started = not ray.is_initialized()
    if started:
        ray.init(
            address=address or "local",
            num_cpus=None if address else sw.local_cpus,
            include_dashboard=False if not address else None,
            log_to_driver=progress,
        )
    try:
        concurrency = concurrent_trials(cfg, ray.cluster_resources())
        nodes = sum(1 for n in ray.nodes() if n["Alive"])
        if nodes > 1 and uri.startswith("sqlite:"):
            raise ConfigError(
                f"tracking.uri {uri}: a sqlite file is local to one node, and this cluster has {nodes}; "
                "run an MLflow server (cluster.yaml starts one on the head) and set "
                "tracking.uri=http://HEAD:5000 or MLFLOW_TRACKING_URI"
            )
        return _run(cfg, base, uri, space, n_layers, concurrency, progress, log)
    finally:
        if started:
            ray.shutdown()


def _check_same_sweep(cfg: Config, base: Path) -> None:
    saved = base / "config.json"
    if saved.is_file() and json.loads(saved.read_text()) != _comparable(cfg):
        raise ConfigError(
            f"sweep {cfg.sweep.name!r} in {base} was started with a different config; resume it "
            "with the same settings, or give this one a new sweep.name"
        )


def _comparable(cfg: Config) -> dict:
    d = cfg.model_dump()
    d["sweep"].pop("max_concurrent_trials")  # a resumed sweep keeps the concurrency Tune saved with it
    d["sweep"].pop("local_cpus")
    return d


def _run(cfg: Config, base: Path, uri: str, space: dict, n_layers: int, concurrency: int, progress: bool, log) -> dict:
    sw = cfg.sweep
    base.mkdir(parents=True, exist_ok=True)
    (base / "config.json").write_text(json.dumps(_comparable(cfg), indent=2))
    world = build_world(cfg)
    log(f"[1/5] teacher ({cfg.world.name} world)")
    teacher_path, meta = teacher_source(cfg, world, progress)
    # Trials run in other processes and directories: hand them absolute paths.
    cfg = cfg.model_copy(deep=True)
    cfg.world.teacher.path = str(teacher_path)
    cfg.output_dir = str(Path(cfg.output_dir).resolve())
    cfg_dict = cfg.model_dump()

    exp_id = tracking.experiment_id(uri, cfg.tracking.experiment)
    sweep_tags = {"prun_tts.sweep": str(base)}
    parent = tracking.find_run(uri, exp_id, {**sweep_tags, tracking.ROLE: "sweep"})
    if parent is None:
        parent = tracking.start_run(
            uri,
            exp_id,
            sw.name,
            "sweep",
            params=tracking.flatten(cfg_dict),
            tags={
                **sweep_tags,
                "prun_tts.teacher": cfg.world.teacher.path,
                "prun_tts.teacher_digest": meta.get("digest", ""),
                "prun_tts.code_version": tracking.code_version(),
                "prun_tts.search_space": json.dumps(space, default=str),
            },
        )
    baseline_file = base / "baseline.json"
    if baseline_file.is_file():
        baseline = json.loads(baseline_file.read_text())
    else:
        log(f"      evaluating the teacher on {cfg.evaluate.n_items} test items (baseline run)")
        baseline = ray.get(_evaluate_teacher.options(**_task_options(cfg)).remote(cfg_dict))
        run = tracking.start_run(
            uri,
            exp_id,
            f"teacher ({n_layers} layers)",
            "baseline",
            parent,
            params={
                "dropped_layers": "",
                "kept_layers": "-".join(map(str, range(n_layers))),
                "scorer": "none",
                "ratio": 0.0,
            },
            tags=sweep_tags,
        )
        tracking.log_metrics(uri, run, baseline)
        tracking.finish_run(uri, run)
        baseline_file.write_text(json.dumps(baseline, indent=2))
    log(f"      teacher: {n_layers} layers, WER {baseline['wer']:.2f}%, SIM {baseline['sim']:.3f}")
    if math.isnan(baseline["wer"]):
        raise ConfigError(
            "the teacher's WER is NaN: this world's codec makes no audio here (CosyVoice 2 without "
            "CosyVoice's code on PYTHONPATH), so a sweep cannot compare students; install it"
        )

    log("[2/5] layer choices of each scorer (once for the whole sweep)")
    plans_file = base / "plans.json"
    if plans_file.is_file():
        plans = json.loads(plans_file.read_text())
    else:
        plans, scores = layer_plans(cfg, n_layers, log)
        _log_scores(uri, parent, scores, plans, base / "scores")
        plans_file.write_text(json.dumps(plans, indent=2))
    for name, drop in plans.items():
        log(f"      {name:>28}: drop {drop}")

    budget = plan_budget(cfg, world, meta.get("train_tokens"))  # refuses a budget that cannot work
    spec = loss_spec(cfg.distill, world.family.speech_ids)
    cache_dir = None
    if cfg.distill.teacher_cache and not spec.needs_attention:
        log("[3/5] teacher outputs on the distillation data (once for the whole sweep)")
        key = {
            "teacher_digest": meta.get("digest"),
            "teacher": cfg.world.teacher.path,
            "teacher_tokens": meta["train_tokens"],
            "pairs": budget.pairs,
            "with_hidden": spec.needs_hidden,
            "world": cfg.world.model_dump(exclude={"teacher"}),
        }
        cache_dir = ray.get(
            _build_cache.options(**_task_options(cfg)).remote(
                cfg_dict, str(base / "teacher-cache"), key, spec.needs_hidden
            )
        )
    else:  # attention maps are not cached: with an attention term every step runs the teacher anyway
        log("[3/5] no teacher cache (distill.teacher_cache=false or an attention term): trials run the teacher")
    reports = (
        budget.pairs * cfg.distill.epochs // (cfg.distill.batch_size * cfg.distill.grad_accum) // cfg.train.report_every
        + 1
    )

    shared = {
        "cfg": cfg_dict,
        "n_layers": n_layers,
        "plans": plans,
        "baseline": baseline,
        "teacher_tokens": meta["train_tokens"],
        "teacher_cache": cache_dir,
        "tracking_uri": uri,
        "experiment_id": exp_id,
        "parent_run_id": parent,
        "train_storage": str(base / "train"),
    }
    trainable = tune.with_resources(tune.with_parameters(run_trial, sweep=shared), {"CPU": cfg.train.driver_cpus})
    tune_dir = base / "tune"
    if tune.Tuner.can_restore(str(tune_dir)):
        log(f"[4/5] resuming the sweep in {tune_dir} (finished trials are kept)")
        tuner = tune.Tuner.restore(str(tune_dir), trainable, resume_errored=True)
    else:
        log(f"[4/5] Tune: up to {concurrency} trials at once, {cfg.train.num_workers} Train workers each")
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=_tune_config(cfg, concurrency, reports),
            run_config=tune.RunConfig(name="tune", storage_path=str(base), verbose=1 if progress else 0),
        )
    try:
        results = tuner.fit()
    except BaseException:
        tracking.finish_run(uri, parent, "FAILED")
        raise

    log("[5/5] trade-off")
    rows = trial_rows(results, plans, n_layers)
    for r in rows:  # trials the scheduler stopped (their driver was killed) or that failed: close their runs
        run_id = r["status"] != "ok" and tracking.find_run(uri, exp_id, {"prun_tts.trial_id": r["trial_id"]})
        if run_id:
            tracking.finish_run(uri, run_id, "KILLED" if r["status"] == "stopped" else "FAILED")
    files = write_tradeoff(rows, baseline, base / "results")
    for f in files.values():
        tracking.log_artifacts(uri, parent, f, "results")
    done = [r for r in rows if r["status"] == "ok"]
    tracking.log_metrics(
        uri,
        parent,
        {"trials": len(rows), "trials_ok": len(done), **({"best_wer": min(r["wer"] for r in done)} if done else {})},
    )
    tracking.finish_run(uri, parent)
    table = format_trials(rows, baseline)
    log(table)
    where = uri if uri.startswith("http") else f"mlflow ui --backend-store-uri {uri}"
    log(
        f"MLflow: experiment {cfg.tracking.experiment!r}, sweep run {parent}\n  open: {where}\n"
        f"  compare: select the runs of this sweep, Chart view, scatter chart x=n_layers y=wer\n"
        f"  files: {base / 'results'}"
    )
    return {
        "rows": rows,
        "baseline": baseline,
        "parent_run_id": parent,
        "tracking_uri": uri,
        "files": files,
        "storage": str(base),
    }


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


def trial_rows(results, plans: dict, n_layers: int) -> list[dict]:
    from orchestrator.sweep.space import layer_set, trial_choice

    rows = []
    for r in results:
        drop, scorer, strategy = trial_choice(r.config, plans, n_layers)
        m = r.metrics or {}
        status = "ok" if r.error is None and "wer" in m else "error" if r.error is not None else "stopped"
        row = {
            "trial_id": m.get("trial_id", ""),
            "dropped_layers": layer_set(drop),
            "scorer": scorer,
            "strategy": strategy,
            "status": status,
            "label": layer_set(drop),
        }
        for k in ("n_layers", "params_m", "wer", "sim", "wer_delta", "sim_delta", "rtf", "speedup", "loss"):
            row[k] = m.get(k, float("nan"))
        row["time_s"] = m.get("time_total_s", float("nan"))  # the trial's wall time: training and evaluation
        if status != "ok":
            row["n_layers"] = n_layers - len(drop)
        rows.append(row)
    return sorted(rows, key=lambda r: (-r["n_layers"], r["wer"] if r["status"] == "ok" else math.inf))


def write_tradeoff(rows: list[dict], baseline: dict, out: Path) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "trials.csv"
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial_id"])
        w.writeheader()
        w.writerows(rows)
    done = [r for r in rows if r["status"] == "ok"]
    png = plot_tradeoff(done, {**baseline, "label": "teacher"}, out / "pareto.png")
    front = out / "pareto.json"
    front.write_text(json.dumps(pareto_front(done), indent=2))
    return {"csv": csv_path, "png": png, "pareto": front}


def format_trials(rows: list[dict], baseline: dict) -> str:
    lines = [
        "| student (dropped layers) | scorer / strategy  | depth | WER %  | dWER   | SIM   | speed-up |",
        "|--------------------------|--------------------|-------|--------|--------|-------|----------|",
        f"| teacher                  | -                  | {baseline['n_layers']:>5} | {baseline['wer']:6.2f} "
        f"|   0.00 | {baseline['sim']:.3f} |    1.00x |",
    ]
    for r in rows:
        if r["status"] != "ok":
            lines.append(
                f"| {r['dropped_layers']:<24} | {r['scorer'] + ' / ' + r['strategy']:<18} | {r['n_layers']:>5} "
                f"| {'stopped early by the scheduler' if r['status'] == 'stopped' else 'failed (see the trial log)'}"
            )
            continue
        lines.append(
            f"| {r['dropped_layers']:<24} | {r['scorer'] + ' / ' + r['strategy']:<18} | {r['n_layers']:>5} "
            f"| {r['wer']:6.2f} | {r['wer_delta']:+6.2f} | {r['sim']:.3f} | {r['speedup']:7.2f}x |"
        )
    return "\n".join(lines)


def _log_scores(uri: str, parent: str, scores: dict, plans: dict, out: Path) -> None:
    from orchestrator.recipes.score import write_scores

    by_scorer = {}
    for name, s in scores.items():  # one profile per scorer (its first plan's scores)
        by_scorer.setdefault(s.scorer, (s, plans[name]))
    if by_scorer:
        for f in write_scores(by_scorer, out).values():
            tracking.log_artifacts(uri, parent, f, "scores")
