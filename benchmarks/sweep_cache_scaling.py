"""The same mini sweep three times, in one run: with the teacher-output cache and 2 Train
workers, without the cache (2 workers), and with the cache on 1 worker. Prints the wall
times and the ratios (cache speed-up, 1 -> 2 worker scaling).

    .venv/bin/python benchmarks/sweep_cache_scaling.py [--set key=value ...]

The sweep: one student (layers 2-3-4-7 of the mini teacher removed), distilled for
one epoch on the default data budget, each variant in a fresh private Ray and a fresh
storage directory. `trial s` is the trial's own wall time (Train workers: start,
distillation, evaluation); `sweep s` adds the teacher baseline and the cache build.
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
SWEEP = ["sweep.space=layer_sets", "sweep.layer_sets=['2-3-4-7']", "distill.epochs=1", "evaluate.n_items=100",
         "train.report_every=40"]


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
            cfg = load_config(args.config, SWEEP + sets + args.overrides +
                              [f"sweep.storage_path={d}", f"output_dir={d}", f"tracking.uri=sqlite:///{d}/mlflow.db"])
            start = time.perf_counter()
            result = run_sweep(cfg, progress=False, log=lambda *_: None)
            wall = time.perf_counter() - start
            (trial,) = result["rows"]
            rows[name] = {"sweep_s": wall, "trial_s": trial["time_s"], "wer": trial["wer"], "sim": trial["sim"]}
            print(f"{name:>20}: sweep {wall:6.1f} s, trial {trial['time_s']:6.1f} s, WER {trial['wer']:.2f}%", flush=True)
    a, b, c = (rows[n] for n in VARIANTS)
    ratios = {"cache speed-up (trial)": b["trial_s"] / a["trial_s"], "cache speed-up (sweep)": b["sweep_s"] / a["sweep_s"],
              "1 -> 2 workers (trial)": c["trial_s"] / a["trial_s"], "1 -> 2 workers (sweep)": c["sweep_s"] / a["sweep_s"]}
    lines = ["| variant | sweep s | trial s | WER % | SIM |", "|---|---|---|---|---|"]
    lines += [f"| {n} | {r['sweep_s']:.1f} | {r['trial_s']:.1f} | {r['wer']:.2f} | {r['sim']:.3f} |" for n, r in rows.items()]
    lines += ["", "| ratio | value |", "|---|---|"] + [f"| {k} | {v:.2f}x |" for k, v in ratios.items()]
    table = "\n".join(lines)
    print(table)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    Path(args.out + ".md").write_text(f"Machine: {machine}\nCommand: .venv/bin/python benchmarks/sweep_cache_scaling.py "
                                      f"{' '.join('--set ' + s for s in args.overrides)}\n\n{table}\n")
    Path(args.out + ".json").write_text(json.dumps({"machine": machine, "runs": rows, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
