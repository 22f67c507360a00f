"""The half-depth student against its teacher on the dev list, per recipe variant and training seed,
with paired 95% intervals (how issue 19's levers are judged; the test list is never read here):

    .venv/bin/python benchmarks/half_depth.py --variant "" --variant "distill.extra_texts=4000"

Each variant is a space-separated list of config overrides on top of configs/mini.yaml with
prune.ratio=0.5. The removed layers are the default plan's (prune.scorer=best, computed once and
kept under --state); `steps=N` in a variant removes them in N steps (least important first, a
distillation after each, each step cut from the last one's student: `surgery.graft`).
Training seeds and the evaluation seed are drawn afresh unless given, so a
recipe cannot be tuned to one draw; they are printed and written with the figures (--out).
"""

from __future__ import annotations

import argparse
import json
import secrets
import tempfile
import time
from pathlib import Path

import numpy as np

from orchestrator.config import load_config
from orchestrator.distill.engine import distill
from orchestrator.evaluate.intervals import paired_interval, per_item
from orchestrator.evaluate.synthesis import evaluate_model
from orchestrator.pipeline import stages
from orchestrator.prune.surgery import graft


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", default=None, help="config overrides, space-separated")
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="training seeds (default: 3 drawn now)")
    ap.add_argument("--eval-seed", type=int, default=None, help="evaluation seed (default: drawn now)")
    ap.add_argument("--base", default="prune.ratio=0.5", help="overrides shared by every variant")
    ap.add_argument("--state", default="runs/bench-half-depth", help="where the layer plan and teacher figures stay")
    ap.add_argument("--out", default=None, help="JSON of every run (default: <state>/half_depth-<time>.json)")
    args = ap.parse_args()
    variants = args.variant or [""]
    seeds = args.seeds if args.seeds is not None else [secrets.randbelow(10**6) for _ in range(3)]
    eval_seed = args.eval_seed if args.eval_seed is not None else secrets.randbelow(10**6)
    state = Path(args.state)
    print(f"training seeds {seeds}, evaluation seed {eval_seed}", flush=True)

    base = load_config("configs/mini.yaml", [*args.base.split(), f"evaluate.seed={eval_seed}"])
    teacher_info = stages.teacher_stage(base, progress=False)
    plan = stages.plans_stage(base, teacher_info, stages.LocalExecutor(), state / "state")[0]
    drop, importance = plan.drop, plan.scores["scores"]
    by_importance = sorted(drop, key=lambda i: importance[i])  # least important first
    world, teacher = stages.world_and_teacher(base, teacher_info)
    dev = world.dev_items[: base.evaluate.n_items]
    t_ev = evaluate_model(teacher, world, dev, base.evaluate)
    print(f"drop {drop}; teacher dev WER {100 * t_ev.wer:.2f}% over {len(dev)} items x {base.evaluate.passes}")
    print("| variant | training seed | dev WER % | dWER [paired 95%] | s |\n|---|---|---|---|---|", flush=True)
    runs = []
    for v in variants:
        students = []
        n_steps = int(next((w.split("=")[1] for w in v.split() if w.startswith("steps=")), 1))
        overrides = [w for w in v.split() if not w.startswith("steps=")]
        for seed in seeds:
            cfg = load_config(
                "configs/mini.yaml",
                [*args.base.split(), *overrides, f"distill.seed={seed}", f"evaluate.seed={eval_seed}"],
            )
            start = time.time()
            student = None
            for k in range(1, n_steps + 1):  # one step: the whole plan at once
                cut = sorted(by_importance[: round(len(drop) * k / n_steps)])
                frame = graft(teacher, student) if student is not None else None
                with tempfile.TemporaryDirectory() as out:
                    student, budget = distill(
                        cfg, world, teacher, teacher_info.train_tokens, cut, out, progress=False, start=frame
                    )
            ev = evaluate_model(student, world, dev, cfg.evaluate)
            lo, hi = paired_interval(ev.items, t_ev.items, 2000, 0)
            delta = 100 * (ev.wer - t_ev.wer)
            seconds = time.time() - start
            print(f"| {v or '(config as is)'} | {seed} | {100 * ev.wer:.2f} | {delta:+.2f} [{lo:+.2f}, {hi:+.2f}] | "
                  f"{seconds:.0f} |", flush=True)  # fmt: skip
            students.append(ev.items)
            budget_used = {"pairs": budget.pairs, "extra_texts": budget.extra_texts}
            runs.append(
                {
                    "variant": v,
                    "seed": seed,
                    "wer": 100 * ev.wer,
                    "wer_delta": delta,
                    "ci": [lo, hi],
                    "budget": budget_used,
                }
            )
        # the seeds' mean student, item by item, against the teacher: the recipe's expected gap
        by_student = [per_item(s) for s in students]  # each student's item -> WER over its passes
        mean_items = [
            {"name": name, "wer": float(np.mean([s[name] for s in by_student]))} for name in per_item(t_ev.items)
        ]
        lo, hi = paired_interval(mean_items, t_ev.items, 2000, 0)
        mean = float(np.mean([r["wer_delta"] for r in runs if r["variant"] == v]))
        print(f"| **{v or '(config as is)'}**: mean of {len(seeds)} | | | **{mean:+.2f}** [{lo:+.2f}, {hi:+.2f}] | |")
    where = Path(args.out) if args.out else state / f"half_depth-{time.strftime('%Y%m%d-%H%M%S')}.json"
    where.parent.mkdir(parents=True, exist_ok=True)
    record = {"drop": drop, "teacher_wer": 100 * t_ev.wer, "eval_seed": eval_seed, "seeds": seeds, "runs": runs}
    where.write_text(json.dumps(record, indent=1))
    print(f"written: {where}")


if __name__ == "__main__":
    main()
