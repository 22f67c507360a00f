"""Compare distillation settings on one student: dev WER after distilling with each
set of overrides (same teacher, same removed layers, same data budget).

    .venv/bin/python benchmarks/distill_settings.py --drop 2,3,4,7 \\
        --variant "" --variant "distill.on_policy=0 distill.epochs=1"

Each --variant is a space-separated list of config overrides on top of --config.
Tune on the dev set; report the chosen setting on the test set (`make demo`).
"""

from __future__ import annotations

import argparse
import tempfile
import time

from orchestrator.builders import build_world, load_teacher, pick_device
from orchestrator.config import load_config
from orchestrator.distill.engine import distill
from orchestrator.evaluate.synthesis import evaluate_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/mini.yaml")
    ap.add_argument("--drop", required=True, help="layers to remove, e.g. 2,3,4,7")
    ap.add_argument(
        "--variant", action="append", default=[], help='overrides, e.g. "distill.lr=0.001 distill.epochs=1"'
    )
    args = ap.parse_args()
    drop = [int(x) for x in args.drop.split(",")]
    base = load_config(args.config)
    world = build_world(base)
    teacher, meta = load_teacher(base, world, pick_device(base), progress=False)
    dev = world.dev_items[: base.evaluate.n_items]
    print(f"teacher dev WER {100 * evaluate_model(teacher, world, dev, base.evaluate).wer:.2f}%", flush=True)
    print("| overrides | dev WER % | SIM | steps | seconds |\n|---|---|---|---|---|")
    for variant in args.variant or [""]:
        cfg = load_config(args.config, variant.split())
        start = time.time()
        with tempfile.TemporaryDirectory() as out:
            student, history, _ = distill(cfg, world, teacher, meta["train_tokens"], drop, out, progress=False)
        e = evaluate_model(student, world, dev, cfg.evaluate)
        print(
            f"| {variant or '(config as is)'} | {100 * e.wer:.2f} | {e.sim:.3f} | {len(history)} | "
            f"{time.time() - start:.0f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
