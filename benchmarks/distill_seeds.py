"""Distil one student per variant (the demo's removed layers, 2,3,4,7) and give its dev WER
under three evaluation seeds (three sampling draws of the same 200 items) and their mean:

    .venv/bin/python benchmarks/distill_seeds.py "" "distill.lr=0.001" "distill.seed=1"

Each argument is a space-separated list of config overrides on top of configs/mini.yaml.
One 200-item draw moves by about half a point: compare the means.
"""

from __future__ import annotations

import sys
import tempfile
import time

import numpy as np

from orchestrator.builders import build_world, load_teacher, pick_device
from orchestrator.config import load_config
from orchestrator.distill.engine import distill
from orchestrator.evaluate.synthesis import evaluate_model

DROP = [2, 3, 4, 7]
EVAL_SEEDS = (0, 1, 2)


def main(variants: list[str]) -> None:
    base = load_config("configs/mini.yaml")
    world = build_world(base)
    teacher, meta = load_teacher(base, world, pick_device(base), progress=False)
    dev = world.dev_items[:200]

    def wers(model, cfg) -> list[float]:
        return [
            100 * evaluate_model(model, world, dev, cfg.evaluate.model_copy(update={"seed": s})).wer for s in EVAL_SEEDS
        ]

    t = wers(teacher, base)
    print(f"| teacher | {' / '.join(f'{x:.2f}' for x in t)} | {np.mean(t):.2f} | |", flush=True)
    for v in variants:
        cfg = load_config("configs/mini.yaml", v.split())
        start = time.time()
        with tempfile.TemporaryDirectory() as out:
            student, _, _ = distill(cfg, world, teacher, meta["train_tokens"], DROP, out, progress=False)
        w = wers(student, cfg)
        print(
            f"| {v or '(config as is)'} | {' / '.join(f'{x:.2f}' for x in w)} | {np.mean(w):.2f} | "
            f"{time.time() - start:.0f} s |",
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1:] or [""])
