"""Compare layer scorers on the mini world at one depth and one data budget.

For each scorer: the layers it removes, test WER / SIM of the pruned-only student,
and of the same student after distillation on the same budget. The teacher is
measured in the same run.

    .venv/bin/python benchmarks/scorers.py --config configs/mini.yaml [--set k=v ...]

Writes benchmarks/results/mini-scorers.md (and prints it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from orchestrator.builders import build_world, load_teacher, n_to_drop, pick_device, scoring_context
from orchestrator.config import load_config
from orchestrator.evaluate.synthesis import evaluate_model
from orchestrator.prune.surgery import decoder_layers, drop_layers
from orchestrator.recipes.demo import layer_tag
from orchestrator.recipes.distill import distill
from orchestrator.recipes.score import score_all


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/mini.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/results/mini-scorers.md")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    start = time.time()
    world = build_world(cfg)
    teacher, meta = load_teacher(cfg, world, pick_device(cfg))
    n = len(decoder_layers(teacher))
    k = n_to_drop(cfg, n)
    test = world.test_items[: cfg.evaluate.n_items]
    base = evaluate_model(teacher, world, test, cfg.evaluate)
    results = score_all(
        teacher, scoring_context(cfg, world, k, progress=True), list(cfg.score.scorers), cfg.prune.strategy
    )
    rows = []
    seen: dict[tuple, tuple] = {}
    for name, (_, drop) in results.items():
        key = tuple(drop)
        if key not in seen:  # two scorers that remove the same layers give the same student
            pruned = evaluate_model(drop_layers(teacher, drop=drop), world, test, cfg.evaluate)
            out = Path(cfg.output_dir) / "bench-scorers" / layer_tag(drop)
            student, _, budget = distill(cfg, world, teacher, meta["train_tokens"], drop, out)
            seen[key] = (pruned, evaluate_model(student, world, test, cfg.evaluate), budget)
        pruned, distilled, budget = seen[key]
        rows.append((name, drop, pruned, distilled, budget))
        print(
            f"{name}: drop {drop} pruned WER {100 * pruned.wer:.2f}% distilled WER {100 * distilled.wer:.2f}%",
            flush=True,
        )

    lines = [
        f"Teacher: {n} layers, test WER {100 * base.wer:.2f}%, SIM {base.sim:.3f} ({len(test)} test items).",
        f"Students: {n - k} layers (strategy `{cfg.prune.strategy}`), each distilled on the same "
        f"{rows[0][4].unique_tokens} distinct tokens = {rows[0][4].unique_tokens / meta['train_tokens']:.2%} of the "
        f"teacher's {meta['train_tokens']} training tokens, {rows[0][4].epochs} epochs.",
        "",
        "| scorer | removed layers | WER % pruned only | WER % distilled | SIM pruned | SIM distilled |",
        "|---|---|---|---|---|---|",
    ]
    for name, drop, p, d, _ in rows:
        lines.append(f"| {name} | {drop} | {100 * p.wer:.2f} | {100 * d.wer:.2f} | {p.sim:.3f} | {d.sim:.3f} |")
    lines.append("")
    lines.append(
        f"Command: `.venv/bin/python benchmarks/scorers.py --config {args.config}"
        + "".join(f" --set {o}" for o in args.overrides)
        + f"`; wall time {time.time() - start:.0f} s."
    )
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    Path(args.out).with_suffix(".json").write_text(
        json.dumps(
            {
                "teacher": base.summary(),
                "rows": [
                    {"scorer": r[0], "drop": r[1], "pruned": r[2].summary(), "distilled": r[3].summary()} for r in rows
                ],
            },
            indent=2,
        )
    )
    print(text)


if __name__ == "__main__":
    main()
