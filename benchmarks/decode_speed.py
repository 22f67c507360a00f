"""Decode speed and peak memory of the real models' shapes at full and reduced depth.

    .venv/bin/python benchmarks/decode_speed.py                       # GPU: LLaSA-1B and CosyVoice 2 shapes
    .venv/bin/python benchmarks/decode_speed.py --shape tiny --new-tokens 64   # CPU smoke run

Random weights (speed does not depend on their values), eager `generate`, greedy,
every generation forced to the same length. The teacher (full depth) and the
students (the first k layers: only the count matters for speed) are built once and
measured in the same run: one full-length warm-up generation each, then the runs
alternate teacher, student, student, ..., repeated. Printed per model and batch:
tokens/s per sequence, RTF at the codec's token rate (LLaSA 50/s, CosyVoice 2 25/s),
peak memory, and the student/teacher ratios; and the weights-bandwidth bound, the
tokens/s a batch-1 decode would reach if it only had to read every weight once per
token at the device's measured copy bandwidth.

CosyVoice 2's LLM decodes through its own speech embedding and decoder head (6,564
speech tokens), so its shape is a Qwen2 with a 6,564-token vocabulary.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from orchestrator.evaluate.metrics import PeakMemory
from orchestrator.prune.surgery import drop_layers

SHAPES = {
    # name: (model class, config, codec tokens per second)
    "llasa-1b": (LlamaForCausalLM, dict(vocab_size=193_800, hidden_size=2048, intermediate_size=8192,
                                        num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8,
                                        tie_word_embeddings=True), 50.0),
    "cosyvoice2-llm": (Qwen2ForCausalLM, dict(vocab_size=6564, hidden_size=896, intermediate_size=4864,
                                              num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                                              tie_word_embeddings=False), 25.0),
    "tiny": (LlamaForCausalLM, dict(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=8,
                                    num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True), 50.0),
}


def copy_bandwidth(device: torch.device, mib: int = 1024) -> float:
    """Bytes per second moved by a device-to-device copy (read + write)."""
    n = mib * 2**20 // 4
    a, b = torch.empty(n, device=device), torch.empty(n, device=device)
    b.copy_(a)
    sync(device)
    start = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    sync(device)
    return 5 * 2 * a.numel() * 4 / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def weight_bytes_per_token(model: torch.nn.Module) -> int:
    """Bytes of weights a decode step reads: everything but the input embedding table (one row of it)."""
    emb = model.get_input_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    tied = model.get_output_embeddings().weight is emb
    return total - (0 if tied else emb.numel() * emb.element_size())


@torch.no_grad()
def timed_generate(model, batch: int, prompt: int, new: int, device: torch.device) -> tuple[float, float]:
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt), device=device)
    with PeakMemory(device) as mem:
        sync(device)
        start = time.perf_counter()
        model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=0, eos_token_id=None)
        sync(device)
        seconds = time.perf_counter() - start
    return new / seconds, mem.model_bytes(model) / 2**30  # the models measured together: each its own share


def run_shape(name: str, depths: list[float], batches: list[int], prompt: int, new: int, repeats: int,
              device: torch.device, dtype: torch.dtype, log=print) -> list[dict]:
    cls, kwargs, rate = SHAPES[name]
    torch.manual_seed(0)
    teacher = cls(cls.config_class(**kwargs, max_position_embeddings=prompt + new + 8)).to(device, dtype).eval()
    n = teacher.config.num_hidden_layers
    models = {f"{n} layers (teacher)": teacher}
    for d in depths:
        k = max(1, round(d * n))
        if k < n:
            models[f"{k} layers"] = drop_layers(teacher, keep=list(range(k))).to(device, dtype).eval()
    bandwidth = copy_bandwidth(device)
    rows = []
    for batch in batches:
        for model in models.values():  # warm-up: one full-length generation each
            timed_generate(model, batch, prompt, new, device)
        speeds = {m: [] for m in models}
        peaks = {m: 0.0 for m in models}
        for _ in range(repeats):
            for m, model in models.items():  # teacher and students alternate
                tps, peak = timed_generate(model, batch, prompt, new, device)
                speeds[m].append(tps)
                peaks[m] = max(peaks[m], peak)
        base = statistics.median(speeds[next(iter(models))])
        for m, model in models.items():
            tps = statistics.median(speeds[m])
            bound = bandwidth / weight_bytes_per_token(model)
            rows.append({"shape": name, "model": m, "batch": batch, "tokens_per_s": tps, "rtf": rate / tps,
                         "peak_gib": peaks[m], "speedup": tps / base, "bound_tokens_per_s": bound,
                         "of_bound": tps / bound, "params_m": sum(p.numel() for p in model.parameters()) / 1e6})
            log(f"{name:>15} batch {batch}: {m:<20} {tps:8.1f} tok/s/seq  RTF {rate / tps:.4f}  "
                f"peak {peaks[m]:6.2f} GiB  speed-up {tps / base:.2f}x  bound {bound:8.1f} tok/s")
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| shape | model | batch | params | tok/s per seq | RTF | peak GiB | speed-up | memory vs teacher | "
             "bound tok/s (batch 1) | of bound |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    teacher = {}
    for r in rows:
        if "teacher" in r["model"]:
            teacher[(r["shape"], r["batch"])] = r
        t = teacher[(r["shape"], r["batch"])]
        lines.append(f"| {r['shape']} | {r['model']} | {r['batch']} | {r['params_m']:.1f}M | {r['tokens_per_s']:.1f} | "
                     f"{r['rtf']:.4f} | {r['peak_gib']:.2f} | {r['speedup']:.2f}x | {r['peak_gib'] / t['peak_gib'] - 1:+.0%} | "
                     f"{r['bound_tokens_per_s']:.0f} | {r['of_bound']:.0%} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", action="append", choices=list(SHAPES), help="default: llasa-1b and cosyvoice2-llm")
    ap.add_argument("--depths", default="0.5,0.625", help="student depths as fractions of the teacher's")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    ap.add_argument("--new-tokens", type=int, default=500, help="generated tokens (10 s of LLaSA audio)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--out", default=None, help="write the rows as JSON and the table as Markdown here (no suffix)")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    depths = [float(x) for x in args.depths.split(",")]
    batches = [int(x) for x in args.batch.split(",")]
    rows = []
    for shape in args.shape or ["llasa-1b", "cosyvoice2-llm"]:
        rows += run_shape(shape, depths, batches, args.prompt, args.new_tokens, args.repeats, device, dtype)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    table = format_rows(rows)
    print(f"\ndevice: {device_name}, {args.dtype}, prompt {args.prompt}, {args.new_tokens} new tokens, "
          f"median of {args.repeats}\n{table}")
    if args.out:
        Path(args.out + ".json").write_text(json.dumps({"device": device_name, "args": vars(args), "rows": rows}, indent=2))
        command = " ".join(["benchmarks/decode_speed.py", *sys.argv[1:]])
        Path(args.out + ".md").write_text(f"Device: {device_name}\nCommand: {command}\n\n{table}\n")


if __name__ == "__main__":
    main()
