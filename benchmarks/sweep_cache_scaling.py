"""The same mini sweep three times, in one run: with the teacher-output cache and 2 Train
workers, without the cache (2 workers), and with the cache on 1 worker. Prints the wall
times and the ratios (cache speed-up, 1 -> 2 worker scaling).

    .venv/bin/python benchmarks/sweep_cache_scaling.py [--set key=value ...]

The sweep: `make demo`'s two students (layers 3-4 and 2-3-4-7 of the mini teacher
removed: the sets wli chooses), distilled with the demo's settings, one trial at a
time (so 2 workers have 2 cores to use), each variant in a fresh private Ray and a
fresh storage directory. `trials s` is the sum of the trials' own wall times (Train
workers: start, distillation, evaluation); `sweep s` adds the teacher baseline and,
with the cache, building it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from orchestrator.config import load_config
from orchestrator.sweep.runner import run_sweep

VARIANTS = {
    "cache, 2 workers": ["distill.teacher_cache=true", "train.num_workers=2"],
    "no cache, 2 workers": ["distill.teacher_cache=false", "train.num_workers=2"],
    "cache, 1 worker": ["distill.teacher_cache=true", "train.num_workers=1"],
}
SWEEP = [
    "sweep.space=layer_sets",
    "sweep.layer_sets=['3-4', '2-3-4-7']",
    "sweep.max_concurrent_trials=1",
    "evaluate.n_items=100",
    "train.report_every=40",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/mini.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--out", default="benchmarks/results/sweep-cache-scaling")
    args = ap.parse_args()
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, sets in VARIANTS.items():
            d = Path(tmp) / name.replace(" ", "").replace(",", "-")
            cfg = load_config(
                args.config,
                SWEEP
                + sets
                + args.overrides
                + [f"sweep.storage_path={d}", f"output_dir={d}", f"tracking.uri=sqlite:///{d}/mlflow.db"],
            )
            start = time.perf_counter()
            result = run_sweep(cfg, progress=False, log=lambda *_: None)
            wall = time.perf_counter() - start
            trials = sum(r["time_s"] for r in result["rows"])
            wers = {r["dropped_layers"]: round(r["wer"], 2) for r in result["rows"]}
            rows[name] = {"sweep_s": wall, "trial_s": trials, "wer": wers}
            print(f"{name:>20}: sweep {wall:6.1f} s, trials {trials:6.1f} s, WER {wers}", flush=True)
    a, b, c = (rows[n] for n in VARIANTS)
    ratios = {
        "cache speed-up (trials)": b["trial_s"] / a["trial_s"],
        "cache speed-up (sweep)": b["sweep_s"] / a["sweep_s"],
        "1 -> 2 workers (trials)": c["trial_s"] / a["trial_s"],
        "1 -> 2 workers (sweep)": c["sweep_s"] / a["sweep_s"],
    }
    lines = ["| variant | sweep s | trials s | WER % by dropped set |", "|---|---|---|---|"]
    lines += [
        f"| {n} | {r['sweep_s']:.1f} | {r['trial_s']:.1f} | {', '.join(f'{k}: {v:.2f}' for k, v in r['wer'].items())} |"
        for n, r in rows.items()
    ]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f}x |" for k, v in ratios.items()]
    table = "\n".join(lines)
    print(table)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    Path(args.out + ".md").write_text(
        f"Machine: {machine}\nCommand: .venv/bin/python benchmarks/sweep_cache_scaling.py "
        f"{' '.join('--set ' + s for s in args.overrides)}\n\n{table}\n"
    )
    Path(args.out + ".json").write_text(json.dumps({"machine": machine, "runs": rows, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
