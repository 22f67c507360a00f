"""A run's results folder read back: every file checked against its manifest (the folder's
layout and its one writer: orchestrator/pipeline/results.py).
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

from orchestrator.config import ConfigError
from orchestrator.distill.engine import read_history
from orchestrator.files import read_json
from orchestrator.pipeline.results import MANIFEST, TEXT_COLUMNS, sha256


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
    d = _results_dir(Path(folder))
    manifest = read_json(d / MANIFEST, "results manifest")
    bad = [name for name, sha in manifest.items() if not (d / name).is_file() or sha256(d / name) != sha]
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


def _number(v: str) -> float:
    try:
        return float(v)
    except ValueError:
        return math.nan
