"""Decode speed and peak memory of the real models' shapes at full and reduced depth, per decode path.

    .venv/bin/python benchmarks/decode_speed.py --out benchmarks/results/decode-gpu      # GPU, bf16
    .venv/bin/python benchmarks/decode_speed.py --device cpu --dtype bf16 --new-tokens 16 --repeats 2 \\
        --out benchmarks/results/decode-cpu                                              # 2-core CPU
    .venv/bin/python benchmarks/decode_speed.py --shape tiny --new-tokens 16             # smoke run

Random weights (speed does not depend on their values), greedy, every generation forced to the
same length (the end id is masked until then). Shapes: LLaSA-1B (a LlamaForCausalLM, 193,800-row
tied head, 16 layers) and CosyVoice 2's LLM (our CosyVoice2LM at Qwen2.5-0.5B's size: 24 layers,
a 6,564-row speech decoder). The teacher and the students (its first k layers: only the count
matters for speed) are built once and measured in one run. Paths, all through
`orchestrator.generation.decode`:

- `eager, full head`: transformers' `generate` (what every model used before the speech head);
- `eager, speech head`: our loop, dynamic cache, logits for the speech and stop ids only;
- `fast, speech head`: static cache, the step compiled (`--fast compiled`; CUDA graphs on a GPU)
  or not (`--fast static`).

Each (model, path, batch) is warmed up once (compiling, where it compiles: its time is printed),
then the runs alternate over every model and path, `--repeats` times. Printed per row:
tokens/s per sequence, RTF at the codec's token rate (LLaSA 50/s, CosyVoice 2 25/s), peak memory
(CUDA peak on a GPU, RSS on a CPU: each model's weights plus what its decode added), the
speed-up over the teacher on the same path and over the teacher's `eager, full head`, and the
fraction of the weights-bandwidth bound: the tokens/s a batch-1 decode would reach if it only
read, once per token, the weight bytes that path reads, at the device's measured copy bandwidth.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from orchestrator.evaluate.metrics import PeakMemory
from orchestrator.families.cosyvoice2 import SPEECH_TOKEN_SIZE, CosyVoice2LM, CosyVoice2LMConfig
from orchestrator.families.llasa import N_CODES, TEXT_VOCAB
from orchestrator.generation.decode import DecodingRules, decode, decoder_parts, head_slice
from orchestrator.generation.sampling import Sampler
from orchestrator.prune.surgery import drop_layers

LLASA_END, LLASA_SPEECH = TEXT_VOCAB + 5, TEXT_VOCAB + 8  # SPEECH_GENERATION_END, <|s_0|>


def llasa(
    layers: int = 16,
    hidden: int = 2048,
    mlp: int = 8192,
    heads: int = 32,
    kv: int = 8,
    n_codes: int = N_CODES,
    text: int = TEXT_VOCAB,
):
    """(model, head ids, end id, first prompt id, prompt id range, codec tokens/s): LLaSA's layout."""
    cfg = LlamaConfig(
        vocab_size=text + 8 + n_codes,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
    )
    end, speech = text + 5, text + 8
    return LlamaForCausalLM(cfg), (end, *range(speech, speech + n_codes)), end, (0, text), 50.0


def cosyvoice2(
    layers: int = 24,
    hidden: int = 896,
    mlp: int = 4864,
    heads: int = 14,
    kv: int = 2,
    s: int = SPEECH_TOKEN_SIZE,
    text: int = 151_936,
):
    cfg = CosyVoice2LMConfig(
        vocab_size=text,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        speech_token_size=s,
    )
    return CosyVoice2LM(cfg), tuple(range(s + 3)), s, (s + 5, s + 5 + text), 25.0


SHAPES = {
    "llasa-1b": llasa,
    "cosyvoice2-llm": cosyvoice2,
    "tiny": lambda: llasa(layers=8, hidden=64, mlp=128, heads=4, kv=2, n_codes=512, text=1000),
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


def weight_bytes_per_token(model: torch.nn.Module, head_ids=None) -> int:
    """Bytes of weights one decode step reads: every weight but the input embedding tables (one
    row each); the output head whole, or only its slice for the speech head."""
    embed, body, head = decoder_parts(model)
    size = lambda ps: sum(p.numel() * p.element_size() for p in ps)  # noqa: E731
    weight, bias, _ = head_slice(head, head_ids)
    head_bytes = weight.numel() * weight.element_size() + (
        bias.numel() * bias.element_size() if bias is not None else 0
    )
    return size(body.layers.parameters()) + size(body.norm.parameters()) + head_bytes


def timed(
    model, path: str, speech_head: bool, rules: DecodingRules, prompts, new: int, device: torch.device
) -> tuple[float, float]:
    with PeakMemory(device) as mem:
        sync(device)
        start = time.perf_counter()
        out = decode(
            model, prompts, rules, [new] * len(prompts), [new] * len(prompts), path=path, speech_head=speech_head
        )
        sync(device)
        seconds = time.perf_counter() - start
    assert all(len(g.tokens) == new for g in out), "every generation runs to the same length"
    return new / seconds, mem.model_bytes(model) / 2**30  # models measured together: each its own share


def run_shape(
    name: str,
    depths: list[float],
    batches: list[int],
    prompt: int,
    new: int,
    repeats: int,
    device: torch.device,
    dtype: torch.dtype,
    fast: str = "compiled",
    log=print,
) -> list[dict]:
    torch.manual_seed(0)
    teacher, head_ids, end, (lo, hi), rate = SHAPES[name]()
    teacher = teacher.to(device, dtype).eval()
    n = teacher.config.num_hidden_layers
    models = {f"{n} layers (teacher)": teacher}
    for d in depths:
        k = max(1, round(d * n))
        if k < n:
            models[f"{k} layers"] = drop_layers(teacher, keep=list(range(k))).to(device, dtype).eval()
    paths = {
        "eager, full head": ("generate", False),
        "eager, speech head": ("eager", True),
        f"fast ({fast}), speech head": (fast, True),
    }
    rules = DecodingRules(stop_ids=(end,), eos_id=end, head_ids=head_ids, pad_id=lo, sampler=Sampler(do_sample=False))
    bandwidth = copy_bandwidth(device)
    log(f"{name}: copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    rows = []
    for batch in batches:
        prompts = torch.randint(lo, hi, (batch, prompt)).tolist()
        runs = [(m, p) for m in models for p in paths]
        for m, p in runs:  # warm-up, and compilation where the path compiles
            start = time.perf_counter()
            timed(models[m], *paths[p], rules, prompts, new, device)
            log(f"{name:>15} batch {batch}: warm-up {m}, {p}: {time.perf_counter() - start:.1f} s")
        speeds = {r: [] for r in runs}
        peaks = {r: 0.0 for r in runs}
        for _ in range(repeats):
            for m, p in runs:  # teacher and students, every path, alternate
                tps, peak = timed(models[m], *paths[p], rules, prompts, new, device)
                speeds[(m, p)].append(tps)
                peaks[(m, p)] = max(peaks[(m, p)], peak)
        teacher_name = next(iter(models))
        for m, p in runs:
            tps = statistics.median(speeds[(m, p)])
            same_path = statistics.median(speeds[(teacher_name, p)])
            eager_full = statistics.median(speeds[(teacher_name, "eager, full head")])
            bound = bandwidth / weight_bytes_per_token(models[m], head_ids if paths[p][1] else None)
            rows.append(
                {
                    "shape": name,
                    "model": m,
                    "path": p,
                    "batch": batch,
                    "tokens_per_s": tps,
                    "rtf": rate / tps,
                    "peak_gib": peaks[(m, p)],
                    "speedup": tps / same_path,
                    "speedup_vs_eager_teacher": tps / eager_full,
                    "memory_vs_teacher": peaks[(m, p)] / peaks[(teacher_name, p)] - 1,
                    "bound_tokens_per_s": bound,
                    "of_bound": tps / bound,
                    "params_m": sum(q.numel() for q in models[m].parameters()) / 1e6,
                }
            )
            log(
                f"{name:>15} batch {batch}: {m:<20} {p:<28} {tps:8.2f} tok/s/seq  RTF {rate / tps:.4f}  "
                f"peak {peaks[(m, p)]:6.2f} GiB  {tps / same_path:.2f}x same path, {tps / eager_full:.2f}x eager "
                f"teacher  {tps / bound:.0%} of bound"
            )
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = [
        "| shape | model | path | batch | params | tok/s per seq | RTF | peak GiB | memory vs teacher | "
        "speed-up (same path) | speed-up vs eager teacher | bound tok/s | of bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['shape']} | {r['model']} | {r['path']} | {r['batch']} | {r['params_m']:.1f}M | "
            f"{r['tokens_per_s']:.2f} | {r['rtf']:.4f} | {r['peak_gib']:.2f} | {r['memory_vs_teacher']:+.0%} | "
            f"{r['speedup']:.2f}x | {r['speedup_vs_eager_teacher']:.2f}x | {r['bound_tokens_per_s']:.0f} | "
            f"{r['of_bound']:.0%} |"
        )
    return "\n".join(lines)


def goals(rows: list[dict]) -> str:
    """The issue's targets, read off this run's rows: the half-depth students with the speech head
    on the best path against the eager full-head teacher, the fast path's share of the bound, the
    half-depth LLaSA's memory at batch 8."""
    out = []
    for shape, half in (("llasa-1b", "8 layers"), ("cosyvoice2-llm", "12 layers"), ("tiny", "4 layers")):
        mine = [r for r in rows if r["shape"] == shape]
        if not mine:
            continue
        b1 = [r for r in mine if r["batch"] == 1 and r["model"] == half and "speech head" in r["path"]]
        if b1:
            best = max(b1, key=lambda r: r["tokens_per_s"])
            out.append(
                f"{shape}: {half}, speech head ({best['path']}), batch 1: "
                f"{best['speedup_vs_eager_teacher']:.2f}x the full-depth eager full-head teacher"
            )
        fast = [r for r in mine if r["batch"] == 1 and r["path"].startswith("fast")]
        if fast:
            out.append(
                f"{shape}: fast path at batch 1 reaches {min(r['of_bound'] for r in fast):.0%}-"
                f"{max(r['of_bound'] for r in fast):.0%} of the weights-bandwidth bound"
            )
        b8 = [r for r in mine if r["batch"] == 8 and r["model"] == half]
        if b8:
            out.append(
                f"{shape}: {half} at batch 8, peak memory vs teacher: "
                + ", ".join(f"{r['path']} {r['memory_vs_teacher']:+.0%}" for r in b8)
            )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", action="append", choices=list(SHAPES), help="default: llasa-1b and cosyvoice2-llm")
    ap.add_argument(
        "--depths",
        default="0.625,0.5",
        help="student depths as fractions of the teacher's (LLaSA 10 and 8 of 16, CosyVoice 2 15 and 12 of 24)",
    )
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--prompt", type=int, default=64, help="prompt tokens")
    ap.add_argument("--new-tokens", type=int, default=500, help="generated tokens (10 s of LLaSA audio)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fast", default="compiled", choices=["compiled", "static"], help="the fast path's variant")
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
        rows += run_shape(shape, depths, batches, args.prompt, args.new_tokens, args.repeats, device, dtype, args.fast)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    table, summary = format_rows(rows), goals(rows)
    print(
        f"\ndevice: {device_name}, {args.dtype}, prompt {args.prompt}, {args.new_tokens} new tokens, "
        f"median of {args.repeats}\n{table}\n\n{summary}"
    )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out + ".json").write_text(
            json.dumps({"device": device_name, "args": vars(args), "rows": rows}, indent=2)
        )
        command = " ".join([".venv/bin/python benchmarks/decode_speed.py", *sys.argv[1:]])
        Path(args.out + ".md").write_text(
            f"Device: {device_name}, {args.dtype}\nCommand: `{command}`\n\n{table}\n\n{summary}\n"
        )


if __name__ == "__main__":
    main()
