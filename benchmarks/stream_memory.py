"""A Train worker's peak memory with 1x and 10x the speech-token shards: training pairs streamed
by Ray Data (what a sweep trial does) against the pairs held in the worker's memory (what the
trials did before: every worker read the shards and kept its budget's pairs).

    .venv/bin/python benchmarks/stream_memory.py --out benchmarks/results/stream_memory-cpu
    .venv/bin/python benchmarks/stream_memory.py --utterances 200 --steps 5      # smoke run

The LLaSA world on the tests' tiny random LLaSA (LLaSA's vocabulary and tokenizer layout),
shards of random codes (`--utterances` at 1x, 1-3 s of speech each at LLaSA's 50 tokens/s, 20
speakers); the data budget is every pair, so it grows with the shards as 5% of a larger corpus
would. One Ray Train worker (a fresh process per run) takes `--steps` optimizer steps and
reports its peak RSS; Ray Data's reading tasks run in other processes, outside that figure.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import torch
from ray.train.torch import TorchTrainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tiny_llasa import save_tiny_llasa  # noqa: E402

from orchestrator.builders import build_world  # noqa: E402
from orchestrator.config import load_config  # noqa: E402
from orchestrator.data.shards import shard_name, write_index, write_shard  # noqa: E402
from orchestrator.distill.budget import plan_budget  # noqa: E402
from orchestrator.distill.engine import prepare_distill, training_steps  # noqa: E402
from orchestrator.distributed.cluster import ray_cluster  # noqa: E402
from orchestrator.distributed.stream import data_config, dataset_name, pairs_datasets, streamed_batches  # noqa: E402
from orchestrator.world import load_model  # noqa: E402

SHARD = 500  # utterances a shard


def write_shards(folder: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for k in range(0, n, SHARD):
        rows = [
            {
                "id": str(i),
                "text": f"utterance {i} of the benchmark, spoken",
                "speaker": f"s{rng.integers(20)}",
                "codes": rng.integers(0, 65536, int(rng.integers(50, 150))),
            }
            for i in range(k, min(k + SHARD, n))
        ]
        write_shard(folder / shard_name(k // SHARD), rows)
    write_index(folder, "benchmark", "random", -(-n // SHARD), n)


def worker_loop(config: dict) -> None:
    torch.set_num_threads(1)
    cfg, budget, steps, streamed = config["cfg"], config["budget"], config["steps"], config["streamed"]
    world = build_world(cfg)
    teacher = load_model(world, cfg.world.teacher.path, torch.device("cpu"))
    run = prepare_distill(cfg, world, teacher, None, [0, 1], budget=budget)
    held = None
    if streamed:
        stream = lambda skip: streamed_batches(  # noqa: E731
            ray.train.get_dataset_shard(dataset_name(0)), world.family, cfg.distill.batch_size, skip
        )
    else:  # before: the worker read every pair of its budget into its memory
        held = [world.train_pairs[i] for i in range(budget.pairs)]
        stream = None
    start = time.perf_counter()
    for m in training_steps(run, cfg, world, teacher, stream=stream):
        if m["step"] >= steps:
            break
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    figures = {"peak_rss": peak, "seconds_per_step": seconds / steps, "held_pairs": len(held or [])}
    Path(config["out"]).write_text(json.dumps(figures))  # Ray Train keeps only checkpointed metrics


def measure(cfg, steps: int, streamed: bool, storage: Path) -> dict:
    world = build_world(cfg)
    budget = plan_budget(cfg, world, None)
    out = storage / f"figures-{budget.pairs}-{streamed}.json"
    storage.mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"cfg": cfg, "budget": budget, "steps": steps, "streamed": streamed, "out": str(out)},
        scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(storage_path=str(storage)),
        **({"datasets": pairs_datasets(cfg, budget, 1), "dataset_config": data_config()} if streamed else {}),
    )
    trainer.fit()
    return {"pairs": budget.pairs, **json.loads(out.read_text())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=3000, help="utterances at 1x (10x: ten times as many)")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps each run takes")
    ap.add_argument("--out", type=Path, help="write OUT.json and OUT.md")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="stream-memory-"))
    teacher = save_tiny_llasa(root / "llasa", layers=4)
    results = []
    with ray_cluster(None, num_cpus=3, log_to_driver=False):
        for scale in (1, 10):
            shards = root / f"shards-{scale}x"
            write_shards(shards, args.utterances * scale)
            cfg = load_config(
                "configs/mini.yaml",
                [
                    "world.name=llasa",
                    f"world.teacher.path={teacher}",
                    "world.real.dtype=float32",
                    f"world.real.shards={shards}",
                    "distill.data_hours=100000",  # every pair: the budget grows with the data
                    "distill.batch_size=4",
                    "distill.epochs=1",
                    "distill.extra_texts=0",
                    "distill.on_policy=0",
                    "train.data_cpus=1",
                ],
            )
            for streamed in (False, True):
                r = measure(cfg, args.steps, streamed, root / "train")
                results.append({"scale": scale, "streamed": streamed, **r})
                print(
                    f"{scale:>3}x  {'streamed' if streamed else 'in memory':<9}  {r['pairs']:>6} pairs  "
                    f"peak RSS {r['peak_rss'] / 2**20:7.1f} MiB  {r['seconds_per_step'] * 1000:6.1f} ms/step",
                    flush=True,
                )
    rss = {(r["scale"], r["streamed"]): r["peak_rss"] for r in results}
    lines = [
        f"streamed pairs: one worker's peak RSS at 10x the shards / 1x = {rss[10, True] / rss[1, True]:.2f}",
        f"pairs in memory (before): peak RSS at 10x / 1x = {rss[10, False] / rss[1, False]:.2f}",
    ]
    print("\n".join(lines))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        stamp = datetime.date.today().isoformat()
        record = {"date": stamp, "args": {k: str(v) for k, v in vars(args).items()}, "results": results}
        Path(f"{args.out}.json").write_text(json.dumps(record, indent=2) + "\n")
        table = "\n".join(
            f"| {r['scale']}x | {'streamed' if r['streamed'] else 'in memory'} | {r['pairs']} | "
            f"{r['peak_rss'] / 2**20:.1f} | {r['seconds_per_step'] * 1000:.1f} |"
            for r in results
        )
        Path(f"{args.out}.md").write_text(
            f"# stream_memory, {stamp}\n\n| shards | data | pairs | peak RSS MiB | ms/step |\n|---|---|---|---|---|\n"
            + table
            + "\n\n"
            + "\n".join(f"- {x}" for x in lines)
            + "\n"
        )


if __name__ == "__main__":
    main()
