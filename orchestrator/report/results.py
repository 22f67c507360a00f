"""A run's results folder: everything the report page is made from, in one place.

The demo and the sweep both end by writing `results/`:

    trials.csv  baseline.json  pareto.json  pareto.png     the trade-off (pipeline stage 6)
    config.json                                          the settings (the world is rebuilt from them)
    scores.json                                          each scorer's layer scores and choice
    budget.json                                          the distillation data against the teacher's
    evaluations/teacher.json, evaluations/<trial>.json   metrics and every test item (text, codes, WER)
    curves/<trial>.csv                                   the distillation curve, one row per step
    manifest.json                                        sha256 of every file above, written last

The sweep logs the folder to its MLflow run, so `prun-tts report --run` reads back the same
bytes. The manifest is how a reader knows the folder is whole: a file missing, cut short or
from another run is refused by name.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
from pathlib import Path

from orchestrator.config import ConfigError
from orchestrator.pipeline.state import atomic_write_json, read_json

MANIFEST = "manifest.json"


def write_results_extras(
    out: Path,
    config: dict,
    teacher_evaluation: dict,
    evaluations: dict[str, dict],
    curves: dict[str, list[dict]],
    scores: dict,
    budget: dict,
) -> Path:
    """Add to `out` (where the trade-off stage wrote its files) what the report needs, then the
    manifest of the whole folder. `teacher_evaluation`: the baseline stage's {"metrics", "items"};
    `evaluations` ({**metrics, "items"}) and `curves` are keyed by trial id."""
    from orchestrator.recipes.distill import write_history

    atomic_write_json(out / "config.json", config)
    atomic_write_json(out / "scores.json", scores)
    atomic_write_json(out / "budget.json", budget)
    teacher = {**teacher_evaluation["metrics"], "items": teacher_evaluation["items"]}  # as the students' are
    atomic_write_json(out / "evaluations" / "teacher.json", teacher)
    for trial, evaluation in evaluations.items():
        atomic_write_json(out / "evaluations" / f"{trial}.json", evaluation)
    for trial, rows in curves.items():
        write_history(out / "curves" / f"{trial}.csv", rows)
    files = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))
    return atomic_write_json(out / MANIFEST, {str(p.relative_to(out)): _sha256(p) for p in files})


@dataclasses.dataclass
class Results:
    """One run's results folder, read back and verified."""

    where: str
    config: dict
    trials: list[dict]  # trials.csv rows, numbers as floats
    baseline: dict
    pareto: list[dict]
    scores: dict
    budget: dict
    evaluations: dict[str, dict]  # "teacher" and each finished trial id -> {metrics..., items}
    curves: dict[str, list[dict]]


def read_results(folder: str | Path) -> Results:
    """A results folder (a run's output_dir, a sweep's storage folder or the results folder
    itself), every file checked against the manifest."""
    from orchestrator.recipes.distill import read_history

    d = _results_dir(Path(folder))
    manifest = read_json(d / MANIFEST, "results manifest")
    bad = [name for name, sha in manifest.items() if not (d / name).is_file() or _sha256(d / name) != sha]
    if bad:
        raise ConfigError(
            f"{d}: {', '.join(bad[:5])} missing or changed since the run wrote them; run the sweep (or demo) "
            "again to rewrite its results folder"
        )
    with (d / "trials.csv").open() as f:
        trials = [{k: v if k in TEXT_COLUMNS else _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    evaluations = {p.stem: read_json(p, "evaluation") for p in sorted((d / "evaluations").glob("*.json"))}
    missing = [str(r["trial_id"]) for r in trials if r["status"] == "ok" and str(r["trial_id"]) not in evaluations]
    if "teacher" not in evaluations or missing:
        raise ConfigError(f"{d}: no evaluation for {', '.join(missing or ['the teacher'])}; run the sweep again")
    return Results(
        where=str(d),
        config=read_json(d / "config.json", "results config"),
        trials=trials,
        baseline=read_json(d / "baseline.json", "baseline"),
        pareto=read_json(d / "pareto.json", "Pareto front"),
        scores=read_json(d / "scores.json", "layer scores"),
        budget=read_json(d / "budget.json", "data budget"),
        evaluations=evaluations,
        curves={p.stem: read_history(p) for p in sorted((d / "curves").glob("*.csv"))},
    )


def _results_dir(p: Path) -> Path:
    for d in (p, p / "results"):
        if (d / MANIFEST).is_file():
            return d
    raise ConfigError(
        f"{p}: no results here (no {MANIFEST} in {p} or {p / 'results'}); give --sweep the folder of a finished "
        "sweep (sweep.storage/sweep.name) or demo (output_dir)"
    )


TEXT_COLUMNS = {"trial_id", "dropped_layers", "scorer", "strategy", "status", "label", "error"}


def _number(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return math.nan


def _sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()
