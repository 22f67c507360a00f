"""The one driver (orchestrator/pipeline/driver.py) on a reduced mini world, with a student runner
that records what it is handed: the stages run in order, the runner gets one plan per distinct
layer set, every student gets its pruned-only figures, the results folder is written whole, the
report is made from it, and the hooks see each stage once."""

import csv
import json

import pytest

from orchestrator.pipeline import stages
from orchestrator.pipeline.driver import Hooks, run_pipeline
from orchestrator.pipeline.results import MANIFEST


class RecordingStudents:
    """Hands back each student with made-up figures (the driver does not distil: its runner does)."""

    def __init__(self):
        self.plans = None

    def describe(self, job):
        return f"{len(job.plans)} recorded"

    def run(self, job, log):
        self.plans = job.plans
        # the teacher's own items (the baseline stage evaluated them), each student erring 10(i+1) points
        # more and sounding 0.01(i+1) less like the speaker on every one of them
        teacher = stages.teacher_evaluation(job.cfg, job.teacher, stages.LocalExecutor(), job.out / "state", None)
        results = []
        for i, plan in enumerate(job.plans):
            metrics = {k: float(i + 1) for k in stages.METRICS}
            metrics["n_layers"] = job.teacher.n_layers - len(plan.drop)
            shift = 0.1 * (i + 1)
            items = [{**it, "wer": it["wer"] + shift, "sim": it["sim"] - shift / 10} for it in teacher["items"]]
            results.append(stages.StudentResult(f"t{i}", plan, "ok", metrics, {**metrics, "items": items}, []))
        return results


class RecordingHooks(Hooks):
    def __init__(self):
        self.calls = []

    def teacher(self, teacher):
        self.calls.append("teacher")

    def baseline(self, teacher, baseline):
        self.calls.append("baseline")

    def scores(self, files):
        self.calls.append("scores")

    def results(self, folder):
        self.calls.append("results")

    def report(self, page):
        self.calls.append("report")

    def finished(self, rows, page):
        self.calls.append("finished")


def test_the_driver_makes_one_student_per_layer_set_and_every_pruned_only_figure(tiny_cfg, tmp_path):
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.sweep.layer_sets = ["1-2", "2-1", "3"]  # the first two are one layer set
    cfg.distill.data_fraction, cfg.distill.batch_size = 0.5, 4  # a budget the tiny teacher's data holds
    students, hooks, reported = RecordingStudents(), RecordingHooks(), []

    def report(results):
        reported.append(results)
        return results / "index.html"

    out = tmp_path / "run"
    done = run_pipeline(cfg, out, stages.LocalExecutor(), students, report, hooks, space="layer_sets", progress=False)

    assert [p.drop for p in students.plans] == [(1, 2), (3,)]  # one student per distinct layer set
    assert hooks.calls == ["teacher", "baseline", "results", "report", "finished"]  # nothing scored: sets given
    assert reported == [out / "results"] and done.page == out / "results" / "index.html"
    assert sorted(done.pruned) == ["1-2", "3"]
    rows = {r["dropped_layers"]: r for r in csv.DictReader((out / "results" / "trials.csv").open())}
    assert sorted(rows) == ["1-2", "3"]
    for label, row in rows.items():  # the pruned-only WER of every student, from its own evaluation
        assert float(row["pruned_wer"]) == done.pruned[label]["wer"] >= 0
        assert done.pruned[label]["n_layers"] == cfg.world.teacher.layers - len(label.split("-"))
        # paired against the teacher on the same items: a constant shift is its own interval
        shift = 10.0 * (int(row["trial_id"][1:]) + 1)
        assert float(row["wer_delta_ci_low"]) == pytest.approx(shift) == float(row["wer_delta_ci_high"])
        assert float(row["sim_delta_ci_low"]) == pytest.approx(-shift / 1000) == float(row["sim_delta_ci_high"])
    manifest = json.loads((out / "results" / MANIFEST).read_text())
    assert {"trials.csv", "baseline.json", "evaluations/teacher.json", "evaluations/t0.json"} <= set(manifest)

    # again: the pruned-only figures are read back from their state files, not evaluated again
    lines = []
    again = run_pipeline(cfg, out, stages.LocalExecutor(), students, report, space="layer_sets", log=lines.append)
    assert json.dumps(again.pruned, sort_keys=True) == json.dumps(done.pruned, sort_keys=True)  # NaN speed-up
    assert any("reusing 2 pruned-only" in line for line in lines)
