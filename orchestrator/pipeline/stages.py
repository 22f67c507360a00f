"""The method as stages: plain functions with typed inputs and outputs, no Ray, no MLflow.

    teacher -> baseline -> layer plans -> data budget (+ teacher cache) -> students
            -> pruned-only figures -> trade-off

`pipeline/driver.py` sequences them, once, for both drivers: `prun-tts demo` hands it this
process (`LocalExecutor`), `prun-tts sweep` hands it Ray (`sweep.runner.RayExecutor` for the
stage tasks, Tune + Train for the students). Every stage that computes something keeps it in
a fingerprinted state file (pipeline/state.py), so a rerun reuses what is still valid and
recomputes what is not.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from orchestrator.anatomy import count_parameters, decoder_layers
from orchestrator.builders import (
    build_world,
    pick_device,
    scoring_context,
    teacher_layers,
    teacher_source,
    teacher_source_if_ready,
)
from orchestrator.config import Config, ConfigError
from orchestrator.distill.budget import plan_budget
from orchestrator.distill.loop import loss_spec
from orchestrator.distill.teacher_cache import build_teacher_cache
from orchestrator.evaluate.intervals import DELTA_INTERVALS
from orchestrator.evaluate.synthesis import (
    evaluate_model,
    evaluation_rows,
    in_list_order,
    merge_parts,
    speedup,
    summarize,
)
from orchestrator.files import digest, file_digest
from orchestrator.pipeline.state import cached_stage, load_state, save_state
from orchestrator.prune.importance import LayerScores, wer_without, wli_from_wers
from orchestrator.prune.select import choose_layers, contiguous, lowest
from orchestrator.prune.surgery import drop_layers, label, layers_removed, parse_label
from orchestrator.world import load_model


@dataclasses.dataclass(frozen=True)
class TeacherInfo:
    """Where the teacher is and what it was computed from (the digest every stage keys on)."""

    path: str  # absolute directory, or a hub id
    digest: str  # of its weights (a hub id: the id)
    n_layers: int
    train_tokens: int | None  # tokens it was trained on, for distill.data_fraction


@dataclasses.dataclass(frozen=True)
class Plan:
    """One student to make: the layers it drops and what chose them."""

    name: str  # scorer/strategy/n_drop of the search space ("manual" for explicit sets and blocks)
    drop: tuple[int, ...]
    scorer: str  # for prune.scorer=best: the scorer that won
    strategy: str
    scores: dict | None = None  # the chosen scorer's LayerScores, as a dict
    dev_wer: dict[str, float] | None = None  # prune.scorer=best: each candidate's pruned-only dev WER (%)
    candidates: dict[str, dict] | None = None  # prune.scorer=best: each candidate scorer's LayerScores
    candidate_drops: dict[str, list[int]] | None = None  # and the layers each would remove

    @property
    def label(self) -> str:
        return label(self.drop)


class Executor(Protocol):
    """Where stage tasks run: `map(fn, [args, ...])` -> [fn(*args), ...] in order."""

    workers: int  # how many workers a stage may split one evaluation over

    def map(self, fn: Callable, args: Sequence[tuple]) -> list: ...


class LocalExecutor:
    workers = 1  # what a stage may split its work over

    def map(self, fn: Callable, args: Sequence[tuple]) -> list:
        return [fn(*a) for a in args]


# ---------------------------------------------------------------- models in a process

_LOADED: dict[str, Any] = {}  # one (world, teacher) per process: tasks of one stage share it


def world_and_teacher(cfg: Config, teacher: TeacherInfo):
    """The world and the frozen teacher on this process's device, loaded once per process."""
    key = digest([cfg.world.model_dump(), teacher.path, cfg.device])
    if key not in _LOADED:
        _LOADED.clear()
        world = build_world(cfg)
        _LOADED[key] = (world, load_model(world, teacher.path, pick_device(cfg)))
    return _LOADED[key]


def forget_models() -> None:
    """Free what `world_and_teacher` holds (a Ray task calls it before its worker is reused)."""
    _LOADED.clear()


@functools.cache  # once per process: every stage of a run keys on the same code
def code_digest() -> str:
    """The code every stage ran (the package's Python files): another version recomputes."""
    root = Path(__file__).resolve().parents[1]
    return digest({str(f.relative_to(root)): file_digest(f) for f in sorted(root.rglob("*.py"))})


def world_fingerprint(cfg: Config) -> dict:
    return cfg.world.model_dump(exclude={"teacher": {"path"}})


# ---------------------------------------------------------------- 1. teacher


def teacher_stage(cfg: Config, progress: bool = True) -> TeacherInfo:
    """The teacher (the mini one trained first if no shipped or cached one fits the config)."""
    world = build_world(cfg) if cfg.world.name == "mini" else None
    path, meta = teacher_source(cfg, world, progress)
    weights = file_digest(path) if Path(path).is_dir() else path
    return TeacherInfo(
        path=str(path), digest=weights, n_layers=teacher_layers(cfg), train_tokens=meta.get("train_tokens")
    )


def teacher_for_checks(cfg: Config) -> TeacherInfo:
    """What the input checks need of the teacher, without training or hashing it."""
    path, meta = teacher_source_if_ready(cfg)
    return TeacherInfo(str(path), "", teacher_layers(cfg), meta.get("train_tokens"))


# ---------------------------------------------------------------- 2. baseline


def teacher_rows_task(cfg: Config, teacher: TeacherInfo, part: tuple[int, int]) -> dict:
    """The teacher's rows of one part of the test list's batches (`evaluation_rows(part=...)`)."""
    world, model = world_and_teacher(cfg, teacher)
    rows = evaluation_rows(model, world, world.test_items[: cfg.evaluate.n_items], cfg.evaluate, part=part)
    return {"rows": rows, "params": count_parameters(model), "token_rate": world.codec.token_rate}


def evaluate_teacher(cfg: Config, teacher: TeacherInfo, executor: Executor) -> dict:
    """The teacher evaluated like every student (its deltas are 0, its speed-up 1), its batches
    split over the executor's workers: the same rows, item for item, however many there are."""
    n = executor.workers
    parts = executor.map(teacher_rows_task, [(cfg, teacher, (i, n)) for i in range(n)])
    rows = merge_parts([p["rows"] for p in parts], cfg.evaluate.batch_size)
    ev = summarize(rows, teacher.n_layers, parts[0]["params"], parts[0]["token_rate"])
    return {"metrics": quality_metrics(ev, 1.0, {"wer": 100 * ev.wer, "sim": ev.sim}), "items": ev.items}


def teacher_evaluation(cfg: Config, teacher: TeacherInfo, executor: Executor, state_dir: Path, log=print) -> dict:
    """The teacher on the test list, evaluated once per teacher and settings: {"metrics", "items"}."""
    fingerprint = {
        "teacher": teacher.digest,
        "world": world_fingerprint(cfg),
        "evaluate": cfg.evaluate.model_dump(),
        "code": code_digest(),
    }
    return cached_stage(state_dir, "baseline", fingerprint, lambda: evaluate_teacher(cfg, teacher, executor), log)


def baseline_stage(cfg: Config, teacher: TeacherInfo, executor: Executor, state_dir: Path, log=print) -> dict:
    """The teacher's metrics on the test list (WER in %): what every student is compared with."""
    metrics = teacher_evaluation(cfg, teacher, executor, state_dir, log)["metrics"]
    if math.isnan(metrics["wer"]):
        raise ConfigError(
            "the teacher's WER is NaN: this world's codec makes no audio here (CosyVoice 2 without "
            "CosyVoice's code on PYTHONPATH), so students cannot be compared; install it"
        )
    return metrics


# A model's figures against the teacher, in the order every table shows them: the one list behind
# quality_metrics, the console table, trials.csv, the MLflow child-run contract and the page.
METRICS = ("n_layers", "params_m", "wer", "sim", "wer_delta", "sim_delta", "rtf", "speedup", "peak_mem_mb")
# What a distilled student adds: its data budget, and the teacher-cache hits (sweep trials).
BUDGET_METRICS = ("data_pairs", "data_hours", "data_tokens", "teacher_cache_hits")


def quality_metrics(ev, speed: float, baseline: dict) -> dict:
    """`METRICS` of an evaluation (WER in %, deltas against the teacher's baseline)."""
    wer = 100 * ev.wer
    values = {
        "n_layers": ev.n_layers,
        "params_m": ev.params / 1e6,
        "wer": wer,
        "sim": ev.sim,
        "wer_delta": wer - baseline["wer"],
        "sim_delta": ev.sim - baseline["sim"],
        "rtf": ev.rtf,
        "speedup": speed,
        "peak_mem_mb": ev.peak_mem_mb,
    }
    return {k: values[k] for k in METRICS}


def describe(metrics: dict) -> str:
    """A model's figures in one progress line."""
    return (
        f"WER {metrics['wer']:.2f}% ({metrics['wer_delta']:+.2f}), {metrics['n_layers']} layers, "
        f"speed-up {metrics['speedup']:.2f}x"
    )


# ---------------------------------------------------------------- 3. layer plans


def drop_counts(cfg: Config, n_layers: int) -> list[int]:
    """Layers to remove for each prune.ratio (optuna: every count between the smallest and largest)."""
    counts = sorted({round(r * n_layers) for r in cfg.prune.ratio})
    if cfg.sweep.search == "optuna":
        counts = list(range(counts[0], counts[-1] + 1))
    bad = [k for k in counts if not 1 <= k < n_layers]
    if bad:
        raise ConfigError(
            f"prune.ratio={cfg.prune.ratio} asks to remove {bad} of {n_layers} layers; "
            f"use ratios that remove between 1 and {n_layers - 1}"
        )
    return counts


def plan_name(scorer: str, strategy: str, n_drop: int) -> str:
    return f"{scorer}/{strategy}/{n_drop}"


def plan_keys(cfg: Config, n_layers: int) -> list[tuple[str, str, int]]:
    """(scorer, strategy, n_drop) of every student prune.* asks for."""
    return [(s, st, k) for s in cfg.prune.scorer for st in cfg.prune.strategy for k in drop_counts(cfg, n_layers)]


def wer_without_task(cfg: Config, teacher: TeacherInfo, layers: list[int]) -> float:
    world, model = world_and_teacher(cfg, teacher)
    return wer_without(model, scoring_context(cfg, world, 1), layers)


def choose_task(cfg: Config, teacher: TeacherInfo, scorer: str, strategy: str, n_drop: int) -> dict:
    world, model = world_and_teacher(cfg, teacher)
    drop, scores = choose_layers(strategy, scorer, model, scoring_context(cfg, world, n_drop), n_drop)
    return {"drop": drop, "scores": dataclasses.asdict(scores)}


def dev_wer_task(cfg: Config, teacher: TeacherInfo, drop: list[int]) -> float:
    """The pruned-only student's WER on the dev items (how prune.scorer=best compares scorers)."""
    world, model = world_and_teacher(cfg, teacher)
    with layers_removed(model, drop):
        return evaluate_model(model, world, world.dev_items[: cfg.score.n_items], cfg.evaluate).wer


def _compute_plans(cfg: Config, teacher: TeacherInfo, keys, executor: Executor, log) -> dict:
    n = teacher.n_layers
    wanted = sorted(
        {(s, st, k) for scorer, st, k in keys for s in (cfg.score.scorers if scorer == "best" else [scorer])}
    )
    chosen: dict[tuple, dict] = {}
    if any(s == "wli" and st != "iterative" for s, st, _ in wanted):  # WLI: one task per layer, shared
        log(f"      wli: {n + 1} syntheses of the dev set")
        wers = executor.map(wer_without_task, [(cfg, teacher, layers) for layers in [[]] + [[i] for i in range(n)]])
        wli = wli_from_wers(wers[0], wers[1:], cfg.score.n_items)
        for s, st, k in wanted:
            if s == "wli" and st != "iterative":
                chosen[(s, st, k)] = {
                    "drop": (lowest if st == "lowest" else contiguous)(wli, k),
                    "scores": dataclasses.asdict(wli),
                }
    rest = [key for key in wanted if key not in chosen]
    chosen.update(zip(rest, executor.map(choose_task, [(cfg, teacher, *key) for key in rest])))
    plans = {}
    for scorer, st, k in keys:
        if scorer != "best":
            plans[plan_name(scorer, st, k)] = {**chosen[(scorer, st, k)], "scorer": scorer}
            continue
        candidates = {s: chosen[(s, st, k)] for s in cfg.score.scorers}
        drops = sorted({tuple(c["drop"]) for c in candidates.values()})  # scorers that agree share an evaluation
        log(f"      best of {len(candidates)} scorers at {n - k} layers: {len(drops)} pruned-only dev evaluations")
        dev = dict(zip(drops, executor.map(dev_wer_task, [(cfg, teacher, list(d)) for d in drops])))
        winner = min(cfg.score.scorers, key=lambda s: (dev[tuple(candidates[s]["drop"])], cfg.score.scorers.index(s)))
        plans[plan_name(scorer, st, k)] = {
            **candidates[winner],
            "scorer": winner,
            "dev_wer": {s: 100 * dev[tuple(c["drop"])] for s, c in candidates.items()},
            "candidates": {s: c["scores"] for s, c in candidates.items()},
            "candidate_drops": {s: c["drop"] for s, c in candidates.items()},
        }
    return plans


def _scored_plans(cfg: Config, teacher: TeacherInfo, executor: Executor, state_dir: Path, log) -> list[Plan]:
    """Each (scorer, strategy, n_drop) of prune.*, in that order, as a Plan; computed once per teacher."""
    keys = plan_keys(cfg, teacher.n_layers)
    if not keys:
        return []
    fingerprint = {
        "teacher": teacher.digest,
        "world": world_fingerprint(cfg),
        "score": cfg.score.model_dump(),
        "evaluate": cfg.evaluate.model_dump(),
        "keys": keys,
        "code": code_digest(),
    }
    plans = cached_stage(
        state_dir, "plans", fingerprint, lambda: _compute_plans(cfg, teacher, keys, executor, log), log
    )
    return [
        Plan(
            name,
            tuple(p["drop"]),
            p["scorer"],
            name.split("/")[1],
            p["scores"],
            p.get("dev_wer"),
            p.get("candidates"),
            p.get("candidate_drops"),
        )
        for name, p in plans.items()
    ]


def plans_stage(
    cfg: Config, teacher: TeacherInfo, executor: Executor, state_dir: Path, space: str = "selected", log=print
) -> list[Plan]:
    """The students of a search space (sweep.space): prune.*'s plans (`selected`: each scorer's
    choice, prune.scorer=best's winner), or the given layer sets, or every contiguous block of
    prune.ratio's sizes; nothing is scored for the last two."""
    if space == "selected":
        return _scored_plans(cfg, teacher, executor, state_dir, log)
    if space == "layer_sets":
        drops = [parse_label(text) for text in cfg.sweep.layer_sets]
    else:
        counts = drop_counts(cfg, teacher.n_layers)
        drops = [tuple(range(s, s + k)) for k in counts for s in range(teacher.n_layers - k + 1)]
    return [Plan("manual", drop, "manual", "manual") for drop in drops]


def distinct(plans: Sequence[Plan]) -> list[Plan]:
    """One plan per layer set (plans that agree on the layers make one student), first one kept."""
    seen: dict[tuple[int, ...], Plan] = {}
    for plan in plans:
        seen.setdefault(tuple(sorted(plan.drop)), plan)
    return list(seen.values())


def scores_by_scorer(plans: Sequence[Plan]) -> dict:
    """scorer -> (LayerScores, the layers it removes at the deepest cut), for the importance profile."""
    out: dict = {}
    for plan in sorted((p for p in plans if p.scores is not None), key=lambda p: -len(p.drop)):
        drops = plan.candidate_drops or {plan.scorer: list(plan.drop)}
        for scorer, scores in (plan.candidates or {plan.scorer: plan.scores}).items():
            if scorer not in out:
                out[scorer] = (LayerScores(**scores), drops.get(scorer, []))
    return out


def describe_plan(plan: Plan) -> str:
    """A plan in one progress line: what it drops, and for prune.scorer=best, why."""
    line = f"      {plan.name:>20}: drop {list(plan.drop)}"
    if plan.dev_wer:
        dev = ", ".join(f"{s} {w:.2f}%" for s, w in plan.dev_wer.items())
        line += f" ({plan.scorer}; pruned-only dev WER {dev})"
    return line


# ---------------------------------------------------------------- 4. data budget and teacher cache


def budget_stage(cfg: Config, teacher: TeacherInfo):
    """The distillation data every student gets (refuses a budget smaller than one batch)."""
    return plan_budget(cfg, build_world(cfg), teacher.train_tokens)


def build_cache_task(cfg: Config, teacher: TeacherInfo, directory: str, key: dict, with_hidden: bool) -> str:
    world, model = world_and_teacher(cfg, teacher)
    pairs = [world.train_pairs[i] for i in range(key["pairs"])]
    return str(build_teacher_cache(model, world.family, pairs, directory, key, with_hidden))


def teacher_cache_stage(
    cfg: Config, teacher: TeacherInfo, budget, executor: Executor, directory: Path, log=print
) -> str | None:
    """The teacher's outputs on the distillation pairs, once for every student (None: not asked
    for, or an attention term, which the cache does not hold)."""
    spec = loss_spec(cfg.distill, build_world(cfg).family.speech_ids)
    if not cfg.distill.teacher_cache or spec.needs_attention:
        return None
    key = {
        "teacher_digest": teacher.digest,
        "teacher_tokens": teacher.train_tokens,
        "pairs": budget.pairs,
        "with_hidden": spec.needs_hidden,
        "logits": "speech ids",  # what the cache holds (before: the whole vocabulary)
        "world": world_fingerprint(cfg),
    }
    log(f"      teacher outputs on {budget.pairs} pairs (once for every student)")
    return executor.map(build_cache_task, [(cfg, teacher, str(directory / digest(key)), key, spec.needs_hidden)])[0]


# ---------------------------------------------------------------- 5. students


def student_fingerprint(cfg: Config, teacher: TeacherInfo, drop: Sequence[int]) -> dict:
    """Everything a distilled student depends on (not the number of workers: the global batch is fixed)."""
    return {
        "teacher": teacher.digest,
        "world": world_fingerprint(cfg),
        "drop": sorted(drop),
        "distill": cfg.distill.model_dump(exclude={"teacher_cache"}),
        "code": code_digest(),
    }


def student_dir(root: Path, drop: Sequence[int], fingerprint: dict) -> Path:
    """students/drop-1-3-<fingerprint>: other settings never land in the same place."""
    return root / f"drop-{label(drop)}-{digest(fingerprint, 8)}"


def evaluate_student(
    cfg: Config, world, teacher_model, student, baseline: dict, part: tuple[int, int] = (0, 1), gather=None
) -> tuple[dict, list[dict]] | tuple[None, None]:
    """A student's metrics against the teacher's baseline (test list; speed-up measured here).
    Data-parallel workers each evaluate their `part` of the batches; `gather` brings every
    part's rows to one worker (None elsewhere: that worker returns (None, None))."""
    test = world.test_items[: cfg.evaluate.n_items]
    rows = evaluation_rows(student, world, test, cfg.evaluate, part=part)
    rows = gather(rows) if gather else rows
    if rows is None:
        return None, None
    rows = in_list_order(rows, test, cfg.evaluate.passes)
    ev = summarize(rows, len(decoder_layers(student)), count_parameters(student), world.codec.token_rate)
    speed = speedup(teacher_model, student, world.family, test[: cfg.evaluate.batch_size], cfg.evaluate)
    return quality_metrics(ev, speed, baseline), ev.items


def pruned_only_task(cfg: Config, teacher: TeacherInfo, drop: list[int], baseline: dict) -> dict:
    """A student's pruned-only figures (the teacher minus its layers, not distilled) on the test list."""
    world, model = world_and_teacher(cfg, teacher)
    ev = evaluate_model(drop_layers(model, drop=drop), world, world.test_items[: cfg.evaluate.n_items], cfg.evaluate)
    return quality_metrics(ev, float("nan"), baseline)


def pruned_only_stage(
    cfg: Config,
    teacher: TeacherInfo,
    drops: Sequence[Sequence[int]],
    baseline: dict,
    executor: Executor,
    state_dir: Path,
    log=print,
) -> dict[str, dict]:
    """label -> pruned-only metrics of every layer set, each kept in its own state file; the ones
    not computed yet run as one batch of tasks."""
    wanted = {label(d): sorted(d) for d in drops}
    key = lambda d: {  # noqa: E731
        "teacher": teacher.digest,
        "world": world_fingerprint(cfg),
        "drop": d,
        "code": code_digest(),
        "evaluate": cfg.evaluate.model_dump(),
    }
    found = {name: load_state(state_dir, "pruned", key(d)) for name, d in wanted.items()}
    todo = [name for name, value in found.items() if value is None]
    for name, value in zip(todo, executor.map(pruned_only_task, [(cfg, teacher, wanted[n], baseline) for n in todo])):
        save_state(state_dir, "pruned", key(wanted[name]), value)
        found[name] = value
    if len(todo) < len(wanted) and log:
        log(f"      reusing {len(wanted) - len(todo)} pruned-only evaluation(s) from {state_dir}")
    return found


# ---------------------------------------------------------------- 6. trade-off


@dataclasses.dataclass
class StudentResult:
    """What a student runner hands back for one student."""

    trial_id: str
    plan: Plan
    status: str  # ok | stopped (by the scheduler) | error
    metrics: dict  # METRICS (+ BUDGET_METRICS, the last training loss) as far as it got
    evaluation: dict | None = None  # {**metrics, "items": every test item}: finished students
    curve: list[dict] = dataclasses.field(default_factory=list)  # the distillation curve, a row per step
    error: str = ""


ROW_COLUMNS = ("trial_id", "dropped_layers", "scorer", "strategy", "status", "label", "error")


def trial_row(result: StudentResult, n_layers: int, pruned: dict | None = None, intervals: dict | None = None) -> dict:
    """A student as a row of trials.csv: who it is, METRICS, the paired 95% intervals of its dWER
    and dSIM (`intervals`: DELTA_INTERVALS), its last training loss, its wall time and its
    pruned-only WER."""
    plan, metrics = result.plan, result.metrics
    row = dict(
        zip(
            ROW_COLUMNS,
            (result.trial_id, plan.label, plan.scorer, plan.strategy, result.status, plan.label, result.error),
        )
    )
    row.update({k: metrics.get(k, float("nan")) for k in (*METRICS, "loss")})
    row.update({k: (intervals or {}).get(k, float("nan")) for k in DELTA_INTERVALS})
    row["time_s"] = metrics.get("time_total_s", float("nan"))  # the trial's wall time: training and evaluation
    row["pruned_wer"] = (pruned or {}).get("wer", float("nan"))
    if result.status != "ok":
        row["n_layers"] = n_layers - len(plan.drop)
    return row


def sort_rows(rows: list[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (-r["n_layers"], r["wer"] if r["status"] == "ok" else math.inf))


def format_trials(rows: list[dict], baseline: dict) -> str:
    """The console's table; dWER with its paired 95% interval (the same items, resampled)."""
    head = (
        "| student (dropped layers) | scorer / strategy  | depth | WER %  | dWER [paired 95%]       "
        "| pruned only | SIM   | speed-up |"
    )
    lines = [
        head,
        "".join("|" if c == "|" else "-" for c in head),
        f"| teacher                  | -                  | {baseline['n_layers']:>5} | {baseline['wer']:6.2f} "
        f"|   0.00                  |           - | {baseline['sim']:.3f} |    1.00x |",
    ]
    for r in rows:
        who = f"| {r['dropped_layers']:<24} | {r['scorer'] + ' / ' + r['strategy']:<18} | {r['n_layers']:>5} "
        if r["status"] != "ok":
            why = "stopped early by the scheduler" if r["status"] == "stopped" else f"failed: {r['error'][:60]}"
            lines.append(f"{who}| {why}")
            continue
        ci = f"[{r['wer_delta_ci_low']:+6.2f}, {r['wer_delta_ci_high']:+6.2f}]"
        lines.append(
            f"{who}| {r['wer']:6.2f} | {r['wer_delta']:+6.2f} {ci} | {r['pruned_wer']:11.2f} | {r['sim']:.3f} "
            f"| {r['speedup']:7.2f}x |"
        )
    return "\n".join(lines)
