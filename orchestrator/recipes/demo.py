"""Recipe: the whole method in one process, end to end, no Ray, no MLflow: the pipeline's
driver with this process as its executor and a student runner that distils one student after
the other (`prun-tts sweep` hands the same driver Ray).

teacher -> baseline on the test list -> each scorer's layer choice (prune.scorer=best: the
one whose pruned-only student is best on the dev list) -> data budget -> one student per
distinct layer set of prune.ratio x scorer x strategy: prune, distil, evaluate -> pruned-only
figures, trade-off table and plot -> the listening page.

Every stage keeps its result under output_dir/state: the same command again reuses what
is done (a distillation cut short resumes from its checkpoint).
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import Config
from orchestrator.distill.engine import distill, read_history
from orchestrator.distill.teacher_cache import TeacherCache
from orchestrator.files import atomic_write_json
from orchestrator.pipeline import stages
from orchestrator.pipeline.driver import StudentsJob, plan_summary, run_pipeline
from orchestrator.pipeline.state import cached_stage
from orchestrator.report.page import report_of


class LocalStudents:
    """The students one after the other in this process, each resumable (stage state, checkpoints)."""

    def __init__(self, progress: bool = True):
        self.progress = progress

    def describe(self, job: StudentsJob) -> str:
        return f"{len(job.plans)} to distil and evaluate"

    def run(self, job: StudentsJob, log) -> list[stages.StudentResult]:
        results = []
        for i, plan in enumerate(job.plans):
            depth = job.teacher.n_layers - len(plan.drop)
            log(f"      student {i + 1}/{len(job.plans)}: drop {list(plan.drop)} ({depth} layers)")
            evaluation, curve = distilled_student(job, plan, self.progress, log)
            metrics = {k: v for k, v in evaluation.items() if k != "items"}
            results.append(stages.StudentResult(str(i + 1), plan, "ok", metrics, evaluation, curve))
            log(f"      -> {stages.describe(metrics)}")
        return results


def distilled_student(job: StudentsJob, plan: stages.Plan, progress: bool, log) -> tuple[dict, list[dict]]:
    """One student distilled (or read back) and evaluated against the baseline ({**metrics, "items"},
    kept as stage state), and its distillation curve."""
    cfg, teacher = job.cfg, job.teacher
    fingerprint = stages.student_fingerprint(cfg, teacher, plan.drop)
    where = stages.student_dir(job.out / "students", plan.drop, fingerprint)

    def compute() -> dict:
        world, model = stages.world_and_teacher(cfg, teacher)
        source = TeacherCache(job.teacher_cache, model) if job.teacher_cache else None
        student, _ = distill(cfg, world, model, teacher.train_tokens, plan.drop, where, progress, fingerprint, source)
        metrics, items = stages.evaluate_student(cfg, world, model, student, job.baseline)
        atomic_write_json(where / "evaluation.json", {**metrics, "items": items})
        return {**metrics, "items": items}

    evaluation = {**fingerprint, "evaluate": cfg.evaluate.model_dump()}
    return cached_stage(job.out / "state", "student", evaluation, compute, log), read_history(where / "history.csv")


def run_demo(cfg: Config, progress: bool = True, log=print) -> dict:
    """The demo: the driver in this process; its summary in output_dir/demo.json."""
    out = Path(cfg.output_dir).resolve()
    done = run_pipeline(
        cfg,
        out,
        stages.LocalExecutor(),
        LocalStudents(progress),
        report=lambda results: report_of(results, out / "report", log),
        progress=progress,
        log=log,
    )
    budget, tokens = done.budget, done.teacher.train_tokens
    summary = {
        "teacher": done.baseline,
        "students": done.rows,
        "pruned_only": done.pruned,
        "plans": plan_summary(done.plans),
        "budget": {
            "pairs": budget.pairs,
            "unique_tokens": budget.unique_tokens,
            "epochs": budget.epochs,
            "tokens_processed": budget.tokens,
            "teacher_tokens": tokens,
            "data_fraction": budget.unique_tokens / tokens if tokens else None,
            "compute_fraction": budget.tokens / tokens if tokens else None,
        },
    }
    atomic_write_json(out / "demo.json", summary)
    log(f"results: {out / 'demo.json'}, {done.files['csv']}")
    log(f"report: {done.page}")
    return summary
