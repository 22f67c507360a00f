"""DDP against FSDP2 (`train.strategy`): one distillation step per worker with 2 CPU workers over
gloo, at LLaSA's vocabulary and layout; seconds per step and each worker's peak RSS, beside the
memory estimate the sweep checks before a trial (`orchestrator.distill.memory`).

    .venv/bin/python benchmarks/fsdp_step.py --shape llasa-1b-half-width --length 512 \
        --out benchmarks/results/fsdp_step-cpu
    .venv/bin/python benchmarks/fsdp_step.py --shape tiny --length 128       # smoke run

Random weights, fp32 (this machine has no bf16 instructions). The teacher is whole on each
worker, the student its first half of the layers, trained by the library's `train_step` (AdamW,
0.5 x CE + 1.0 x KL through the speech head, clipping) on `--batch` x `--length` tokens per
worker. Each strategy runs in fresh processes (one's peak does not hide the other's): built,
one step to warm up, then `--repeats` steps; the peak is the worker's whole RSS (sampled every
5 ms), the estimate is the model's terms plus the RSS the worker held before loading any model.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from decode_speed import llasa
from torch.nn.parallel import DistributedDataParallel

from orchestrator.config import DistillConfig
from orchestrator.distill.loop import loss_spec, make_state, train_step
from orchestrator.distill.memory import GIB, estimate_step_memory
from orchestrator.distill.sharding import shard_student
from orchestrator.distributed.cluster import free_port
from orchestrator.evaluate.metrics import PeakMemory
from orchestrator.prune.surgery import drop_layers

WEIGHTS = {"ce": 0.5, "kl": 1.0, "latent": 0.0}
SHAPES = {
    "llasa-1b": {},
    # LLaSA-1B's vocabulary, depth and layout at half its width: two workers' DDP state fits 24 GiB
    "llasa-1b-half-width": dict(hidden=1024, mlp=4096, heads=16, kv=4),
    "tiny": dict(layers=4, hidden=64, mlp=128, heads=4, kv=2, n_codes=4096, text=2000),
}


def worker(rank: int, args, port: int, out: str) -> None:
    torch.set_num_threads(args.threads)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=args.workers,
        timeout=datetime.timedelta(minutes=30),
    )
    before = psutil.Process().memory_info().rss  # the runtime, before any model
    torch.manual_seed(0)
    teacher, head_ids, _, (lo, hi), _ = llasa(**SHAPES[args.shape])
    teacher = teacher.float().eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    n = teacher.config.num_hidden_layers
    student = drop_layers(teacher, drop=list(range(n // 2, n))).train()
    for p in student.parameters():
        p.requires_grad_(True)
    model = DistributedDataParallel(student) if args.child == "ddp" else shard_student(student, torch.device("cpu"))
    state = make_state(model, lr=1e-4, warmup=1, total_steps=100)
    speech_ids = torch.tensor(sorted(head_ids))
    spec = loss_spec(DistillConfig(weights=WEIGHTS, on_policy=0.0), speech_ids)  # off-policy steps
    g = torch.Generator().manual_seed(rank)
    ids = torch.randint(lo, hi, (args.batch, args.length), generator=g)
    speech = args.length - args.text
    ids[:, args.text :] = speech_ids[torch.randint(0, len(speech_ids), (args.batch, speech), generator=g)]
    labels = ids.clone()
    labels[:, : args.text] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    estimate = estimate_step_memory(
        teacher, n - n // 2, args.child, args.workers, args.batch * args.length, args.batch * speech, latent=False
    )
    seconds, losses = [], []
    with PeakMemory(torch.device("cpu")) as mem:
        for r in range(args.repeats + 1):
            dist.barrier()
            start = time.perf_counter()
            metrics = train_step(state, [batch], spec, teacher)
            if r:  # the first is the warm-up
                seconds.append(time.perf_counter() - start)
            losses.append(metrics["loss"])
    row = {
        "rank": rank,
        "seconds": statistics.median(seconds),
        "peak_rss": mem.peak_bytes,
        "runtime_rss": before,
        "estimate": estimate.total + before,
        "estimate_terms": {k: v for k, v in estimate.__dict__.items()},
        "loss": losses[-1],
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(row))
    dist.destroy_process_group()


def child(args) -> None:
    with tempfile.TemporaryDirectory() as out:
        mp.spawn(worker, args=(args, free_port(), out), nprocs=args.workers, join=True)
        rows = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(args.workers)]
    print(json.dumps({"strategy": args.child, "ranks": rows}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llasa-1b-half-width")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1, help="sequences per worker")
    ap.add_argument("--length", type=int, default=512, help="tokens per sequence")
    ap.add_argument("--text", type=int, default=64, help="leading text tokens per sequence (no loss)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    ap.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    ap.add_argument("--child", choices=["ddp", "fsdp"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    runs = {}
    for strategy in ("ddp", "fsdp"):
        cmd = [sys.executable, __file__, "--child", strategy, *sys.argv[1:]]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
        runs[strategy] = json.loads(out.strip().splitlines()[-1])["ranks"]
        print(json.dumps(runs[strategy]), flush=True)
    shape = f"{args.shape}, {args.workers} workers x {args.batch} x {args.length} tokens ({args.text} text), fp32"
    lines = [
        f"One distillation step per worker ({shape}; AdamW, CE + KL, teacher whole on each worker)",
        "",
        "| strategy | s / step | peak RSS per worker (GiB) | estimate (GiB) | estimate / peak | loss |",
        "|---|---|---|---|---|---|",
    ]
    for strategy, ranks in runs.items():
        peak = max(r["peak_rss"] for r in ranks)
        est = max(r["estimate"] for r in ranks)
        secs = max(r["seconds"] for r in ranks)
        loss = ranks[0]["loss"]
        lines.append(
            f"| {strategy} | {secs:.2f} | {peak / GIB:.2f} | {est / GIB:.2f} | {est / peak:.2f} | {loss:.4g} |"
        )
    ddp, fsdp = (max(r["peak_rss"] for r in runs[s]) for s in ("ddp", "fsdp"))
    t_ddp, t_fsdp = (max(r["seconds"] for r in runs[s]) for s in ("ddp", "fsdp"))
    lines += ["", f"FSDP against DDP: time x{t_fsdp / t_ddp:.2f}, peak RSS per worker x{fsdp / ddp:.2f}"]
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps({"args": vars(args), "runs": runs}, indent=2))
        Path(args.out + ".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
