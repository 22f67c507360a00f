"""The sweep's synthesis-bound stages on the mini world, before and after the decode work, in one run.

    .venv/bin/python benchmarks/decode_stages.py --config configs/mini.yaml [--repeats 2] [--set k=v ...]

"before" is what every synthesis used until the speech head and the decode paths existed:
transformers' `generate` over the full head (`evaluate.decode=generate, speech_head=false`);
"after" is the default (`evaluate.decode=auto`, speech head on). Stages, each a real stage
function on the shipped mini teacher:

- WLI: `wli_scores`, the full model and each layer removed, `score.n_items` dev items each
  (the sweep runs these n + 1 syntheses as parallel Ray tasks; here one after another);
- evaluation: `evaluate_model` of the teacher on `evaluate.n_items` test items x `passes`.

The two settings alternate (before, after, before, ...) so both see the same machine load; the
WLI scores and WERs are printed too, so a speed-up that changed the numbers would show.
Writes benchmarks/results/decode-stages.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from orchestrator.builders import build_world, load_teacher, pick_device, scoring_context
from orchestrator.config import load_config
from orchestrator.evaluate.synthesis import evaluate_model
from orchestrator.prune.importance import wli_scores

SETTINGS = {
    "before (generate, full head)": {"decode": "generate", "speech_head": False},
    "after (auto, speech head)": {"decode": "auto", "speech_head": True},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="configs/mini.yaml")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/decode-stages")
    args = ap.parse_args()
    cfg = load_config(args.config, args.overrides)
    world = build_world(cfg)
    device = pick_device(cfg)
    teacher, _ = load_teacher(cfg, world, device)
    times = {(s, stage): [] for s in SETTINGS for stage in ("wli", "evaluation")}
    numbers = {}
    for _ in range(args.repeats):
        for name, setting in SETTINGS.items():
            ev = cfg.evaluate.model_copy(update=setting)
            ctx = scoring_context(
                cfg.model_copy(update={"evaluate": ev}), world, 1
            )  # WLI scores every layer whatever the number to drop
            start = time.perf_counter()
            wli = wli_scores(teacher, ctx)
            times[(name, "wli")].append(time.perf_counter() - start)
            start = time.perf_counter()
            result = evaluate_model(teacher, world, world.test_items[: ev.n_items], ev)
            times[(name, "evaluation")].append(time.perf_counter() - start)
            numbers[name] = {
                "wli": [round(x * 100, 2) for x in wli.scores],
                "test_wer": round(result.wer * 100, 2),
                "test_sim": round(result.sim, 3),
            }
            print(
                f"{name}: wli {times[(name, 'wli')][-1]:.1f} s, evaluation {times[(name, 'evaluation')][-1]:.1f} s, "
                f"WER {result.wer * 100:.2f}%",
                flush=True,
            )
    before, after = SETTINGS
    lines = ["| stage | before (s) | after (s) | speed-up |", "|---|---|---|---|"]
    rows = {}
    for stage in ("wli", "evaluation"):
        b, a = statistics.median(times[(before, stage)]), statistics.median(times[(after, stage)])
        rows[stage] = {"before_s": b, "after_s": a, "speedup": b / a}
        lines.append(f"| {stage} | {b:.1f} | {a:.1f} | {b / a:.2f}x |")
    detail = "\n".join(
        f"- {name}: WLI (points) {v['wli']}; teacher test WER {v['test_wer']}%, SIM {v['test_sim']}"
        for name, v in numbers.items()
    )
    command = " ".join([".venv/bin/python benchmarks/decode_stages.py", *sys.argv[1:]])
    text = (
        f"Command: `{command}` (median of {args.repeats}, settings alternated)\n\n"
        + "\n".join(lines)
        + f"\n\n{detail}\n"
    )
    print("\n" + text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out + ".md").write_text(text)
    Path(args.out + ".json").write_text(json.dumps({"stages": rows, "numbers": numbers, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
