"""Recipe: the whole method in one process, end to end: the pipeline's stages run here,
no Ray, no MLflow (`prun-tts sweep` runs the same stages on Ray).

teacher -> baseline on the test list -> each scorer's layer choice (prune.scorer=best: the
one whose pruned-only student is best on the dev list) -> data budget -> for every student
of prune.ratio x scorer x strategy: prune, distil, evaluate -> trade-off table and plot.

Every stage keeps its result under output_dir/state: the same command again reuses what
is done (a distillation cut short resumes from its checkpoint).
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.config import Config
from orchestrator.pipeline import stages
from orchestrator.pipeline.state import atomic_write_json, cached_stage, read_json
from orchestrator.report.results import write_results_extras


def run_demo(cfg: Config, progress: bool = True, log=print) -> dict:
    from orchestrator.builders import teacher_layers
    from orchestrator.recipes.distill import budget_record
    from orchestrator.recipes.score import format_table, write_scores

    # before any work (the teacher not even trained): prune.ratio against its depth, the data budget
    stages.plan_keys(cfg, teacher_layers(cfg))
    stages.budget_stage(cfg, stages.teacher_for_checks(cfg))
    out = Path(cfg.output_dir).resolve()
    state, here = out / "state", stages.LocalExecutor()

    log(f"[1/7] teacher ({cfg.world.name} world)")
    teacher = stages.teacher_stage(cfg, progress)
    log(f"      {teacher.path} ({teacher.n_layers} layers)")

    log(f"[2/7] baseline: the teacher on {cfg.evaluate.n_items} test items")
    baseline = stages.baseline_stage(cfg, teacher, here, state, log)
    log(f"      WER {baseline['wer']:.2f}%, SIM {baseline['sim']:.3f}")

    log("[3/7] layer plans: each scorer's choice")
    plans = stages.plans_stage(cfg, teacher, here, state, log)
    by_scorer = stages.scores_by_scorer(plans)
    files_scores = write_scores(by_scorer, out / "scores")
    log(format_table(by_scorer))
    for name, plan in plans.items():
        dev = plan.get("dev_wer")
        log(
            f"      {name:>20}: drop {plan['drop']}"
            + (
                f" ({plan['scorer']}; pruned-only dev WER " + ", ".join(f"{s} {w:.2f}%" for s, w in dev.items()) + ")"
                if dev
                else ""
            )
        )
    log(f"      profile: {files_scores['png']}")

    log("[4/7] data budget and teacher cache")
    budget = stages.budget_stage(cfg, teacher)
    log(
        f"      {budget.pairs} pairs, {budget.unique_tokens} tokens = "
        f"{budget.unique_tokens / teacher.train_tokens:.2%} of the teacher's {teacher.train_tokens}; "
        f"{budget.epochs} epochs"
    )
    cache = stages.teacher_cache_stage(cfg, teacher, budget, here, out / "teacher-cache", log)

    unique: dict[tuple, tuple[str, dict]] = {}  # plans that agree on the layers train one student
    for name, p in plans.items():
        unique.setdefault(tuple(p["drop"]), (name, p))
    log(f"[5/7] students: {len(unique)} to distil and evaluate")
    rows, pruned, evaluations, curves = [], {}, {}, {}
    for i, (drop, (name, p)) in enumerate(unique.items()):
        plan, trial = stages.Plan(name, drop, p["scorer"], name.split("/")[1]), f"{i + 1}"
        log(f"      student {i + 1}/{len(unique)}: drop {list(drop)} ({teacher.n_layers - len(drop)} layers)")
        evaluations[trial], pruned[drop], curves[trial] = student_stage(
            cfg, teacher, plan, baseline, cache, out, progress, log
        )
        metrics = {k: v for k, v in evaluations[trial].items() if k != "items"}
        rows.append(stages.trial_row(trial, plan, teacher.n_layers, "ok", metrics))
        log(
            f"      -> WER {metrics['wer']:.2f}% ({metrics['wer_delta']:+.2f}; pruned only "
            f"{pruned[drop]['wer']:.2f}%), speed-up {metrics['speedup']:.2f}x"
        )

    log("[6/7] trade-off")
    rows = stages.sort_rows(rows)
    files = stages.tradeoff_stage(rows, baseline, out / "results")
    table = stages.format_trials(rows, baseline)
    log(table)
    record = budget_record(budget, teacher.train_tokens)
    write_results_extras(
        out / "results",
        cfg.model_dump(),
        stages.teacher_evaluation(cfg, teacher, here, state, log=None),
        evaluations,
        curves,
        read_json(files_scores["json"], "layer scores"),
        record,
    )
    summary = {
        "teacher": baseline,
        "students": rows,
        "pruned_only": {"-".join(map(str, d)): m for d, m in pruned.items()},
        "plans": {n: {k: v for k, v in p.items() if k in ("drop", "scorer", "dev_wer")} for n, p in plans.items()},
        "budget": {
            "pairs": budget.pairs,
            "unique_tokens": budget.unique_tokens,
            "epochs": budget.epochs,
            "tokens_processed": budget.tokens,
            "teacher_tokens": teacher.train_tokens,
            "data_fraction": budget.unique_tokens / teacher.train_tokens,
            "compute_fraction": budget.tokens / teacher.train_tokens,
        },
    }
    atomic_write_json(out / "demo.json", summary)
    log(f"results: {out / 'demo.json'}, {files['csv']}, {files['png']}")

    log("[7/7] report")
    page = stages.report_stage(out / "results", out / "report", log)
    log(f"report: {page}")
    return summary


def student_stage(
    cfg: Config,
    teacher: stages.TeacherInfo,
    plan: stages.Plan,
    baseline: dict,
    cache: str | None,
    out: Path,
    progress: bool,
    log,
) -> tuple[dict, dict, list[dict]]:
    """One student in this process: distilled (or read back), then evaluated against the baseline
    (metrics and items); the pruned-only student's metrics beside it (both stage state); and its
    distillation curve."""
    from orchestrator.distill.teacher_cache import TeacherCache
    from orchestrator.evaluate.synthesis import evaluate_model
    from orchestrator.prune.surgery import drop_layers
    from orchestrator.recipes.distill import distill, read_history

    world, model = stages.world_and_teacher(cfg, teacher)
    fingerprint = stages.student_fingerprint(cfg, teacher, plan.drop)
    where = stages.student_dir(out / "students", plan.drop, fingerprint)
    evaluation = {**fingerprint, "evaluate": cfg.evaluate.model_dump()}

    def pruned_only() -> dict:
        ev = evaluate_model(
            drop_layers(model, drop=plan.drop), world, world.test_items[: cfg.evaluate.n_items], cfg.evaluate
        )
        return stages.quality_metrics(ev, float("nan"), baseline)

    def distilled() -> dict:
        source = TeacherCache(cache, model) if cache else None
        student, _ = distill(cfg, world, model, teacher.train_tokens, plan.drop, where, progress, fingerprint, source)
        metrics, items = stages.evaluate_student(cfg, world, model, student, baseline)
        atomic_write_json(where / "evaluation.json", {**metrics, "items": items})
        return {**metrics, "items": items}

    state = out / "state"
    pruned = cached_stage(state, "pruned", {k: v for k, v in evaluation.items() if k != "distill"}, pruned_only, log)
    return cached_stage(state, "student", evaluation, distilled, log), pruned, read_history(where / "history.csv")
