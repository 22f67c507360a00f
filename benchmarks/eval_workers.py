"""A trial's test evaluation on one worker against the same evaluation split over 2 workers (what
every sweep trial does: each Train worker synthesizes and scores its share of the batches, rank 0
gathers them), on the mini world's shipped teacher cut to half depth.

    .venv/bin/python benchmarks/eval_workers.py --out benchmarks/results/eval_workers-cpu
    .venv/bin/python benchmarks/eval_workers.py --items 8 --passes 1     # smoke run

Each worker is its own process with one thread (one CPU each, as a trial's workers get); the
2-worker figure is the wall time until both have scored their share. The gathered rows are
checked equal to the one worker's, item for item, before any time is reported.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from orchestrator.builders import build_world, load_teacher
from orchestrator.config import load_config
from orchestrator.evaluate.synthesis import evaluation_rows, in_list_order
from orchestrator.prune.surgery import drop_layers


def evaluate_part(part: tuple[int, int], overrides: list[str], queue) -> None:
    torch.set_num_threads(1)
    cfg = load_config("configs/mini.yaml", overrides)
    world = build_world(cfg)
    teacher, _ = load_teacher(cfg, world, torch.device("cpu"), progress=False)
    n = len(teacher.model.layers)
    student = drop_layers(teacher, drop=list(range(n // 4, n // 4 + n // 2)))  # half the layers, mid-stack
    test = world.test_items[: cfg.evaluate.n_items]
    start = time.perf_counter()
    rows = evaluation_rows(student, world, test, cfg.evaluate, part=part)
    queue.put(("done", part, (time.perf_counter() - start, rows)))


def run(n_workers: int, overrides: list[str]) -> tuple[float, list[dict]]:
    """Wall seconds of the evaluation proper (models loaded first) and the rows in list order."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=evaluate_part, args=((i, n_workers), overrides, queue)) for i in range(n_workers)]
    for p in procs:
        p.start()
    done = {}
    while len(done) < n_workers:
        kind, part, payload = queue.get()
        if kind == "done":
            done[part] = payload
    for p in procs:
        p.join()
    rows = [row for _, part_rows in done.values() for row in part_rows]
    cfg = load_config("configs/mini.yaml", overrides)
    test = build_world(cfg).test_items[: cfg.evaluate.n_items]
    return max(seconds for seconds, _ in done.values()), in_list_order(rows, test, cfg.evaluate.passes)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=None, help="test items (default: the config's evaluate.n_items)")
    ap.add_argument("--passes", type=int, default=None, help="passes over them (default: the config's)")
    ap.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = ap.parse_args()
    overrides = [f"evaluate.n_items={args.items}"] * (args.items is not None)
    overrides += [f"evaluate.passes={args.passes}"] * (args.passes is not None)
    one_s, one = run(1, overrides)
    two_s, two = run(2, overrides)
    same = [(r["name"], r["hypothesis"], r["wer"], r["sim"]) for r in one] == [
        (r["name"], r["hypothesis"], r["wer"], r["sim"]) for r in two
    ]
    if not same:
        raise SystemExit("the 2 workers' gathered rows differ from one worker's: no speed-up reported")
    line = f"trial evaluation, {len(one)} rows: 1 worker {one_s:.1f} s, 2 workers {two_s:.1f} s"
    line += f", speed-up x{one_s / two_s:.2f}"
    print(line + " (rows equal, item for item)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.date.today().isoformat()
        record = {"date": stamp, "overrides": overrides, "rows": len(one), "one_worker_s": one_s}
        record["two_workers_s"] = two_s
        Path(f"{args.out}.json").write_text(json.dumps(record, indent=2) + "\n")
        Path(f"{args.out}.md").write_text(f"# eval_workers, {stamp}\n\n- {line}; gathered rows equal one worker's\n")


if __name__ == "__main__":
    main()
