"""The one driver: the method's stages in order, the same for every way of running them.

    [1/7] teacher   [2/7] baseline   [3/7] layer plans   [4/7] data budget (+ teacher cache)
    [5/7] students  [6/7] trade-off (pruned-only figures, results/)   [7/7] report

`prun-tts demo` (recipes/demo.py) hands it this process: a `LocalExecutor` for the stage
tasks and a student runner that distils one student after the other. `prun-tts sweep`
(sweep/runner.py) hands it Ray: stage tasks as Ray tasks, students as Tune trials of Ray
Train runs, and hooks that keep the MLflow runs. Both get the same behaviour:

- one student per distinct layer set (plans that agree on the layers share a student);
- a pruned-only figure for every student (the teacher minus its layers, not distilled, on
  the test list), beside its distilled one in trials.csv and the table;
- the results folder written once, by `pipeline/results.py`; the page made from it by the
  driver's `report` (the report package sits above the pipeline).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from orchestrator.config import Config
from orchestrator.distill.budget import DataBudget, budget_record
from orchestrator.evaluate.intervals import delta_intervals
from orchestrator.pipeline import stages
from orchestrator.pipeline.results import write_results
from orchestrator.pipeline.stages import Executor, Plan, StudentResult, TeacherInfo
from orchestrator.prune.profile import format_table, scores_record, write_scores


@dataclasses.dataclass(frozen=True)
class StudentsJob:
    """What every student of a run shares."""

    cfg: Config
    teacher: TeacherInfo
    plans: list[Plan]  # the students: one plan per distinct layer set
    all_plans: list[Plan]  # every plan of the space, by name (Optuna's trials name theirs)
    baseline: dict
    budget: DataBudget
    teacher_cache: str | None
    out: Path


class StudentRunner(Protocol):
    """Makes the students: distilled and evaluated against the baseline, one result each."""

    def describe(self, job: StudentsJob) -> str: ...

    def run(self, job: StudentsJob, log: Callable[[str], None]) -> list[StudentResult]: ...


class Hooks:
    """What a driver adds around the stages (the sweep: its MLflow runs). Each does nothing here."""

    def teacher(self, teacher: TeacherInfo) -> None: ...

    def baseline(self, teacher: TeacherInfo, baseline: dict) -> None: ...

    def scores(self, files: dict[str, Path]) -> None: ...

    def results(self, folder: Path) -> None: ...

    def report(self, page: Path) -> None: ...

    def failed(self) -> None: ...

    def finished(self, rows: list[dict], page: Path) -> None: ...


@dataclasses.dataclass
class Outcome:
    teacher: TeacherInfo
    baseline: dict
    plans: list[Plan]
    budget: DataBudget
    rows: list[dict]  # trials.csv, sorted: deepest first, then by WER
    pruned: dict[str, dict]  # layer-set label -> pruned-only metrics
    files: dict[str, Path]  # of the results folder
    page: Path


def run_pipeline(
    cfg: Config,
    out: Path,
    executor: Executor,
    students: StudentRunner,
    report: Callable[[Path], Path],
    hooks: Hooks | None = None,
    space: str = "selected",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Outcome:
    """The method, from the teacher to the page, under `out` (state/, scores/, results/, the
    students' folders). `space`: which students (sweep.space; the demo makes prune.*'s).
    `report(results_folder)` makes the page and returns its index.html."""
    hooks = hooks or Hooks()
    state = out / "state"
    log(f"[1/7] teacher ({cfg.world.name} world)")
    teacher = stages.teacher_stage(cfg, progress)
    log(f"      {teacher.path} ({teacher.n_layers} layers)")
    hooks.teacher(teacher)
    try:
        log(f"[2/7] baseline: the teacher on {cfg.evaluate.n_items} test items")
        baseline = stages.baseline_stage(cfg, teacher, executor, state, log)
        hooks.baseline(teacher, baseline)
        log(f"      WER {baseline['wer']:.2f}%, SIM {baseline['sim']:.3f}")

        log("[3/7] layer plans: each scorer's choice, once for every student")
        plans = stages.plans_stage(cfg, teacher, executor, state, space, log)
        by_scorer = stages.scores_by_scorer(plans)
        if by_scorer:  # the other spaces name their layers: nothing was scored
            log(format_table(by_scorer))
            files = write_scores(by_scorer, out / "scores")
            hooks.scores(files)
            log(f"      profile: {files['png']}")
        for plan in plans:
            log(stages.describe_plan(plan))

        log("[4/7] data budget and teacher cache")
        budget = stages.budget_stage(cfg, teacher)
        log(
            f"      {budget.pairs} pairs, {budget.unique_tokens} tokens"
            + (f" = {budget.unique_tokens / teacher.train_tokens:.2%} of the teacher's" if teacher.train_tokens else "")
            + f", {budget.hours:.2f} h of speech; {budget.epochs} epochs"
            + (f"; + {budget.extra_texts} texts without speech (on-policy steps)" if budget.extra_texts else "")
        )
        cache = stages.teacher_cache_stage(cfg, teacher, budget, executor, out / "teacher-cache", log)

        job = StudentsJob(cfg, teacher, stages.distinct(plans), plans, baseline, budget, cache, out)
        log(f"[5/7] students: {students.describe(job)}")
        results = students.run(job, log)

        log("[6/7] trade-off: pruned-only figures, results")
        pruned = stages.pruned_only_stage(cfg, teacher, [r.plan.drop for r in results], baseline, executor, state, log)
        teacher_eval = stages.teacher_evaluation(cfg, teacher, executor, state, log=None)
        rows = stages.sort_rows(
            [
                stages.trial_row(r, teacher.n_layers, pruned[r.plan.label], _intervals(cfg, r, teacher_eval))
                for r in results
            ]
        )
        files = write_results(
            out / "results",
            rows,
            baseline,
            cfg.model_dump(),
            teacher_eval,
            {r.trial_id: r.evaluation for r in results if r.evaluation is not None},
            {r.trial_id: r.curve for r in results if r.evaluation is not None},
            scores_record(by_scorer),
            budget_record(budget, teacher.train_tokens),
        )
        hooks.results(out / "results")
        log(f"      {files['csv']}, {files['png']}")

        log("[7/7] report")
        page = report(out / "results")
        hooks.report(page)
    except BaseException:
        hooks.failed()  # e.g. no MLflow run left RUNNING; the same command resumes
        raise
    log(stages.format_trials(rows, baseline))
    hooks.finished(rows, page)
    return Outcome(teacher, baseline, plans, budget, rows, pruned, files, page)


def _intervals(cfg: Config, result: StudentResult, teacher_eval: dict) -> dict:
    """A finished student's paired intervals against the teacher (same items, same sampling seeds)."""
    if result.evaluation is None:
        return {}
    items = result.evaluation["items"]
    return delta_intervals(items, teacher_eval["items"], cfg.report.bootstrap, cfg.report.seed)


def plan_summary(plans: Sequence[Plan]) -> dict:
    """name -> the layers each plan drops and what chose them (demo.json)."""
    return {
        p.name: {"drop": list(p.drop), "scorer": p.scorer, **({"dev_wer": p.dev_wer} if p.dev_wer else {})}
        for p in plans
    }
