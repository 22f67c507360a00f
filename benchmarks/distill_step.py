"""One distillation step at LLaSA-1B's shape: time and peak memory with the full-vocabulary logits
(how the losses were computed before) against the speech head (`orchestrator.distill.speech_head`).

    .venv/bin/python benchmarks/distill_step.py --dtype fp32 --length 512 \
        --out benchmarks/results/distill_step-cpu                # a CPU without bf16 instructions
    .venv/bin/python benchmarks/distill_step.py --shape llasa-1b-head --dtype fp32 --length 3072 \
        --repeats 1 --out benchmarks/results/distill_step-head-cpu  # the logits' share at length
    .venv/bin/python benchmarks/distill_step.py --shape tiny                # smoke run

Random weights (bf16 by default; on a CPU without bf16 instructions, such as this project's 2-core
machine, bf16 matmuls run at about 0.3 GFLOP/s against 85 in fp32: use --dtype fp32). The teacher
is LLaSA-1B's shape (16 layers, hidden 2048, a 193,800-row tied head of which 65,537 rows are
speech and stop ids), the student its first 8 layers. One batch of `--batch` sequences of
`--length` tokens, the first `--text` of them text (no loss there), the rest speech. The step is
the teacher's forward (no gradients), the student's forward and backward of 0.5 x CE + 1.0 x KL
(temperature 1), the terms the logits feed; the optimizer is left out (the same in both). Each
way runs in its own process, once to warm up and then `--repeats` times; printed: seconds per
step and the peak RSS the step added over the loaded models (a thread samples RSS every 5 ms),
and both ratios.

`full logits` is the former computation, written out here: the models' own forward with
batch x length x vocabulary logits, cross-entropy over them at the speech positions, KL over the
speech-id columns. `speech head` is the library's: `loop.model_outputs` and `loop.compute_losses`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psutil
import torch
import torch.nn.functional as F
from decode_speed import llasa

from orchestrator.config import DistillConfig
from orchestrator.distill.loop import compute_losses, loss_spec, model_outputs
from orchestrator.evaluate.metrics import PeakMemory
from orchestrator.prune.surgery import drop_layers

WEIGHTS = {"ce": 0.5, "kl": 1.0, "latent": 0.0}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SHAPES = {
    "llasa-1b": {},
    # LLaSA-1B's head and width on 2 layers: where the logits, not the layers, fill memory
    "llasa-1b-head": dict(layers=2),
    "tiny": dict(layers=4, hidden=64, mlp=128, heads=4, kv=2, n_codes=4096, text=2000),
}


def full_logits_loss(student, teacher, batch, speech_ids):
    """The former way: whole logits from both models, then the two terms (sums over positions)."""
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    with torch.no_grad():
        t_logits = teacher(**inputs).logits
    s_logits = student(**inputs).logits
    labels = batch["labels"]
    at = labels[:, 1:] != -100
    ce = F.cross_entropy(s_logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), reduction="sum")
    s = F.log_softmax(s_logits[:, :-1][at][:, speech_ids].float(), -1)
    t = F.log_softmax(t_logits[:, :-1][at][:, speech_ids].float(), -1)
    kl = F.kl_div(s, t, log_target=True, reduction="sum")
    return WEIGHTS["ce"] * ce + WEIGHTS["kl"] * kl


def speech_head_loss(student, teacher, batch, speech_ids):
    spec = loss_spec(DistillConfig(weights=WEIGHTS), speech_ids)
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    with torch.no_grad():
        t_out = model_outputs(teacher, inputs, batch, spec, "teacher")
    terms = compute_losses(model_outputs(student, inputs, batch, spec, "student"), t_out, batch, spec, reduction="sum")
    return sum(WEIGHTS[k] * v for k, v in terms.items())


def child(args) -> None:
    """One way, in this process: build, warm up, measure; print one JSON line."""
    torch.manual_seed(0)
    teacher, head_ids, end, (lo, hi), _ = llasa(**SHAPES[args.shape])
    teacher = teacher.to(DTYPES[args.dtype]).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    n = teacher.config.num_hidden_layers
    student = drop_layers(teacher, drop=list(range(n // 2, n))).train()
    for p in student.parameters():
        p.requires_grad_(True)
    speech_ids = torch.tensor(sorted(head_ids))
    ids = torch.randint(lo, hi, (args.batch, args.length))
    ids[:, args.text :] = speech_ids[torch.randint(0, len(speech_ids), (args.batch, args.length - args.text))]
    labels = ids.clone()
    labels[:, : args.text] = -100
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    step = full_logits_loss if args.child == "full" else speech_head_loss
    seconds, peaks, losses = [], [], []
    for r in range(args.repeats + 1):
        student.zero_grad(set_to_none=True)
        with PeakMemory(torch.device("cpu")) as mem:
            start = time.perf_counter()
            loss = step(student, teacher, batch, speech_ids)
            loss.backward()
            took = time.perf_counter() - start
        if r:  # the first is the warm-up
            seconds.append(took)
            peaks.append(mem.peak_bytes - mem.start_bytes)
        losses.append(float(loss))
    weights = sum(p.numel() * p.element_size() for m in (teacher, student) for p in m.parameters())
    print(
        json.dumps(
            {
                "way": args.child,
                "seconds": statistics.median(seconds),
                "step_peak_bytes": max(peaks),
                "weights_bytes": weights,
                "process_peak_bytes": psutil.Process().memory_info().rss,
                "loss": losses[-1],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="llasa-1b")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--length", type=int, default=1024, help="tokens per sequence")
    ap.add_argument("--text", type=int, default=64, help="leading text tokens per sequence (no loss)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="write <out>.json and <out>.md")
    ap.add_argument("--child", choices=["full", "speech"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        return child(args)
    rows = {}
    for way in ("full", "speech"):  # each in a fresh process: one's peak does not hide the other's
        cmd = [sys.executable, __file__, "--child", way, *sys.argv[1:]]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows[way] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps(rows[way]), flush=True)
    full, speech = rows["full"], rows["speech"]
    gib = 2**30
    shape = f"{args.shape}, batch {args.batch} x {args.length} tokens ({args.text} text), {args.dtype}"
    shape += f", {torch.get_num_threads()} threads"
    table = [
        f"One distillation step ({shape}; CE + KL, forward and backward, teacher forward)",
        "",
        "| logits | s / step | peak RSS the step added (GiB) | loss |",
        "|---|---|---|---|",
        *(
            f"| {name} | {r['seconds']:.2f} | {r['step_peak_bytes'] / gib:.2f} | {r['loss']:.4g} |"
            for name, r in (("full logits", full), ("speech head", speech))
        ),
        "",
        f"speech head against full logits: time x{speech['seconds'] / full['seconds']:.2f}, "
        f"step peak memory x{speech['step_peak_bytes'] / full['step_peak_bytes']:.2f} "
        f"(weights of both models: {full['weights_bytes'] / gib:.2f} GiB)",
    ]
    print("\n".join(table))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
        Path(args.out + ".md").write_text("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
