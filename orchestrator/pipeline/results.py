"""A run's results folder, written in one place: everything the report page is made from.

The demo and the sweep both end by writing `results/` (the driver's trade-off stage):

    trials.csv  baseline.json  pareto.json  pareto.png     the trade-off
    config.json                                          the settings (the world is rebuilt from them)
    scores.json                                          each scorer's layer scores and choice
    budget.json                                          the distillation data against the teacher's
    evaluations/teacher.json, evaluations/<trial>.json   metrics and every test item (text, codes, WER)
    curves/<trial>.csv                                   the distillation curve, one row per step
    manifest.json                                        sha256 of every file above, written last

The sweep logs the folder to its MLflow run, so `prun-tts report --run` reads back the same
bytes (report/results.py reads it). The manifest is how a reader knows the folder is whole:
a file missing, cut short or from another run is refused by name.
"""

from __future__ import annotations

import csv
import hashlib
import io
from pathlib import Path

from orchestrator.distill.engine import write_history
from orchestrator.evaluate.tradeoff import pareto_front, plot_tradeoff
from orchestrator.files import atomic_write_json, atomic_write_text

MANIFEST = "manifest.json"
TEXT_COLUMNS = {"trial_id", "dropped_layers", "scorer", "strategy", "status", "label", "error"}


def write_results(
    out: Path,
    rows: list[dict],
    baseline: dict,
    config: dict,
    teacher_evaluation: dict,
    evaluations: dict[str, dict],
    curves: dict[str, list[dict]],
    scores: dict,
    budget: dict,
) -> dict[str, Path]:
    """The whole folder, the manifest last. `rows`: trials.csv; `teacher_evaluation`: the baseline
    stage's {"metrics", "items"}; `evaluations` ({**metrics, "items"}) and `curves` are keyed by
    trial id. Returns the files a person looks at first."""
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["trial_id"], lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    files = {"csv": atomic_write_text(out / "trials.csv", text.getvalue())}
    done = [r for r in rows if r["status"] == "ok"]
    files["png"] = plot_tradeoff(done, {**baseline, "label": "teacher"}, out / "pareto.png")
    files["pareto"] = atomic_write_json(out / "pareto.json", pareto_front(done))
    files["baseline"] = atomic_write_json(out / "baseline.json", baseline)
    atomic_write_json(out / "config.json", config)
    atomic_write_json(out / "scores.json", scores)
    atomic_write_json(out / "budget.json", budget)
    teacher = {**teacher_evaluation["metrics"], "items": teacher_evaluation["items"]}  # as the students' are
    atomic_write_json(out / "evaluations" / "teacher.json", teacher)
    for trial, evaluation in evaluations.items():
        atomic_write_json(out / "evaluations" / f"{trial}.json", evaluation)
    for trial, curve in curves.items():
        write_history(out / "curves" / f"{trial}.csv", curve)
    every = sorted(p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST and not p.name.startswith("."))
    files["manifest"] = atomic_write_json(out / MANIFEST, {str(p.relative_to(out)): sha256(p) for p in every})
    return files


def sha256(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()
