"""Compare layer scorers on the mini world at one depth and one data budget.

The pipeline's one-process run (`prun-tts demo`) with every scorer as its own student at
half depth: for each scorer, the layers it removes, test WER / SIM of the pruned-only
student, and of the same student after distillation on the same budget. The teacher is
measured in the same run.

    .venv/bin/python benchmarks/scorers.py --config configs/mini.yaml [--set k=v ...]

Writes benchmarks/results/mini-scorers.md (and prints it).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from orchestrator.config import SCORERS, load_config
from orchestrator.prune.surgery import label
from orchestrator.recipes.demo import run_demo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/mini.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/results/mini-scorers.md")
    args = ap.parse_args()
    every = [f"prune.scorer=[{', '.join(SCORERS)}]", "prune.ratio=0.5", "output_dir=runs/bench-scorers"]
    cfg = load_config(args.config, [*every, *args.overrides])
    start = time.time()
    summary = run_demo(cfg)
    base, budget = summary["teacher"], summary["budget"]
    lines = [
        f"Teacher: {base['n_layers']} layers, test WER {base['wer']:.2f}%, SIM {base['sim']:.3f} "
        f"({cfg.evaluate.n_items} test items x {cfg.evaluate.passes} passes).",
        f"Students: half depth (strategy `{cfg.prune.strategy[0]}`), each distilled on the same "
        f"{budget['unique_tokens']} distinct tokens = {budget['data_fraction']:.2%} of the teacher's "
        f"{budget['teacher_tokens']} training tokens, {budget['epochs']} epochs.",
        "",
        "| scorer | removed layers | WER % pruned only | WER % distilled | SIM pruned | SIM distilled |",
        "|---|---|---|---|---|---|",
    ]
    by_drop = {r["dropped_layers"]: r for r in summary["students"]}
    for scorer in SCORERS:
        drop = summary["plans"][f"{scorer}/{cfg.prune.strategy[0]}/{base['n_layers'] // 2}"]["drop"]
        key = label(drop)
        p, d = summary["pruned_only"][key], by_drop[key]  # scorers that agree share one student
        lines.append(f"| {scorer} | {drop} | {p['wer']:.2f} | {d['wer']:.2f} | {p['sim']:.3f} | {d['sim']:.3f} |")
    lines += [
        "",
        f"Command: `.venv/bin/python benchmarks/scorers.py --config {args.config}"
        + "".join(f" --set {o}" for o in args.overrides)
        + f"`; wall time {time.time() - start:.0f} s.",
    ]
    text = "\n".join(lines)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n")
    Path(args.out).with_suffix(".json").write_text(json.dumps(summary, indent=2, default=str))
    print(text)


if __name__ == "__main__":
    main()
