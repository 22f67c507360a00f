"""Recipe: the whole method on one process, end to end.

teacher (trained or cached) -> score layers with each scorer -> pick the scorer
whose pruned-only student is best on the dev set -> prune to the target depth ->
distil on the data budget -> evaluate teacher, pruned-only and distilled on the
test set -> table.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.builders import build_world, load_teacher, n_to_drop, pick_device, scoring_context
from orchestrator.config import Config
from orchestrator.evaluate.synthesis import Evaluation, evaluate_model
from orchestrator.prune.surgery import decoder_layers, drop_layers, layers_removed
from orchestrator.recipes.distill import distill
from orchestrator.recipes.score import format_table, score_all, write_scores


def layer_tag(drop: list[int]) -> str:
    return "drop-" + "-".join(map(str, drop))


def run_demo(cfg: Config, progress: bool = True, log=print) -> dict:
    out = Path(cfg.output_dir)
    world = build_world(cfg)
    device = pick_device(cfg)
    log(f"[1/5] teacher ({world.name} world, device {device})")
    teacher, meta = load_teacher(cfg, world, device, progress)
    n = len(decoder_layers(teacher))
    k = n_to_drop(cfg, n)
    test = world.test_items[: cfg.evaluate.n_items]
    teacher_eval = evaluate_model(teacher, world, test, cfg.evaluate, progress)
    log(f"      {n} layers, test WER {100 * teacher_eval.wer:.2f}% on {len(test)} items")

    scorers = cfg.score.scorers if cfg.prune.scorer == "best" else [cfg.prune.scorer]
    log(f"[2/5] scoring {n} layers with {', '.join(scorers)} (strategy {cfg.prune.strategy}, remove {k})")
    ctx = scoring_context(cfg, world, k, progress)
    results = score_all(teacher, ctx, scorers, cfg.prune.strategy)
    files = write_scores(results, out / "scores")
    log(format_table(results))
    log(f"      table {files['csv']}, plot {files['png']}")

    log("[3/5] pruned-only quality of each scorer's choice (dev set)")
    dev = world.dev_items[: cfg.score.n_items]
    dev_wer: dict[str, float] = {}
    by_layers: dict[tuple[int, ...], float] = {}  # scorers that agree share one evaluation
    for name, (_, drop) in results.items():
        if tuple(drop) not in by_layers:
            with layers_removed(teacher, drop):
                by_layers[tuple(drop)] = evaluate_model(teacher, world, dev, cfg.evaluate).wer
        dev_wer[name] = by_layers[tuple(drop)]
        log(f"      {name:>16}: drop {drop} -> dev WER {100 * dev_wer[name]:.2f}%")
    best = min(dev_wer, key=lambda s: (dev_wer[s], scorers.index(s)))
    drop = results[best][1]
    pruned_eval = evaluate_model(drop_layers(teacher, drop=drop), world, test, cfg.evaluate, progress)

    log(f"[4/5] distilling the {best} student (drop {drop}) on {cfg.distill.data_fraction:.0%} of the teacher's data")
    student, history, budget = distill(
        cfg, world, teacher, meta.get("train_tokens"), drop, out / "students" / layer_tag(drop), progress
    )
    teacher_tokens = meta["train_tokens"]
    log(
        f"      data: {budget.pairs} pairs, {budget.unique_tokens} tokens = "
        f"{budget.unique_tokens / teacher_tokens:.2%} "
        f"of the teacher's {teacher_tokens}; compute: {budget.epochs} epochs, {budget.tokens} tokens processed = "
        f"{budget.tokens / teacher_tokens:.2%} of the teacher's"
    )

    log("[5/5] evaluating the distilled student (test set)")
    student_eval = evaluate_model(student, world, test, cfg.evaluate, progress)
    rows = {"teacher": teacher_eval, f"pruned only ({best})": pruned_eval, f"pruned + distilled ({best})": student_eval}
    table = results_table(rows, teacher_eval)
    log(table)
    summary = {
        "teacher": teacher_eval.summary(),
        "pruned": pruned_eval.summary(),
        "distilled": student_eval.summary(),
        "scorer": best,
        "dropped_layers": drop,
        "dev_wer_pruned_only": dev_wer,
        "budget": {
            "pairs": budget.pairs,
            "unique_tokens": budget.unique_tokens,
            "epochs": budget.epochs,
            "tokens_processed": budget.tokens,
            "teacher_tokens": teacher_tokens,
            "data_fraction": budget.unique_tokens / teacher_tokens,
            "compute_fraction": budget.tokens / teacher_tokens,
        },
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "demo.json").write_text(json.dumps(summary, indent=2))
    (out / "demo.md").write_text(table + "\n")
    log(f"results: {out / 'demo.json'}")
    return summary


def results_table(rows: dict[str, Evaluation], base: Evaluation) -> str:
    lines = [
        f"| {'model':<32} | depth | params | WER % | SIM   | RTF    | speed-up |",
        f"|{'-' * 34}|-------|--------|-------|-------|--------|----------|",
    ]
    for name, e in rows.items():
        lines.append(
            f"| {name:<32} | {e.n_layers:>5} | {e.params / 1e6:5.2f}M | {100 * e.wer:5.2f} | {e.sim:.3f} "
            f"| {e.rtf:.4f} | {base.rtf / e.rtf:7.2f}x |"
        )
    return "\n".join(lines)
