"""Synthesize an evaluation list and score it: WER, similarity, RTF, memory, size."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from orchestrator.anatomy import count_parameters, decoder_layers
from orchestrator.config import EvalConfig
from orchestrator.evaluate.metrics import PeakMemory, Stopwatch, utterance_wer
from orchestrator.generation.decode import decode, decoding_rules, length_bounds
from orchestrator.world import EvalItem, Family, World


@dataclasses.dataclass
class Evaluation:
    wer: float  # mean of per-utterance WERs, in [0, 1+]
    sim: float  # mean speaker similarity to the prompt
    n_layers: int
    params: int
    rtf: float  # synthesis seconds per second of audio
    tokens_per_s: float
    peak_mem_mb: float  # the model's weights + what synthesis added (other models in the process left out)
    items: list[dict]

    def summary(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "items"}


@torch.no_grad()
def synthesize(
    model: nn.Module,
    family: Family,
    items: Sequence[EvalItem],
    cfg: EvalConfig,
    progress: bool = False,
    first_batch: int = 0,
) -> list[list[int]]:
    """Speech codes for each item, sampled in batches by the family's decoding rules; the same
    seed for every model, so teacher and students are compared on the same random draws (batch b
    of a list is drawn with seed `cfg.seed + b`; `first_batch` numbers a slice of a longer list)."""
    model.eval()
    rules = decoding_rules(family, cfg)
    out: list[list[int]] = []
    starts = range(0, len(items), cfg.batch_size)
    for b, start in enumerate(tqdm(starts, desc="synthesize", disable=not progress, leave=False)):
        chunk = items[start : start + cfg.batch_size]
        prompts = [family.prompt_ids(it.prompt_text, it.target_text, it.prompt_codes) for it in chunk]
        lo, hi = length_bounds(family, chunk, cfg.max_new_tokens)
        torch.manual_seed(cfg.seed + first_batch + b)
        gen = decode(model, prompts, rules, lo, hi, path=cfg.decode, speech_head=cfg.speech_head)
        out.extend(family.codes_of(g.tokens) for g in gen)
    return out


def read_results(path: Path) -> dict[str, dict]:
    """Items already scored by an earlier, stopped run (one JSON row per line)."""
    if not path.is_file():
        return {}
    rows = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a crash: that item is scored again
            continue
        rows[row["name"]] = row
    return rows


def evaluate_model(
    model: nn.Module,
    world: World,
    items: Sequence[EvalItem],
    cfg: EvalConfig,
    progress: bool = False,
    results: str | Path | None = None,
) -> Evaluation:
    """Synthesize, transcribe and compare each item, a batch at a time.

    `results`: a JSONL file that receives each batch's rows as soon as they are scored; a
    run started again with the same file skips the batches it already holds.
    """
    rows = evaluation_rows(model, world, items, cfg, progress=progress, results=results)
    return summarize(rows, len(decoder_layers(model)), count_parameters(model), world.codec.token_rate)


def with_passes(items: Sequence[EvalItem], passes: int) -> list[EvalItem]:
    """The list as evaluated: pass p is the same items under later seeds, named item#p."""
    if passes == 1:
        return list(items)
    return [dataclasses.replace(it, name=f"{it.name}#{p}") for p in range(passes) for it in items]


def in_list_order(rows: Sequence[dict], items: Sequence[EvalItem], passes: int) -> list[dict]:
    """Rows of several parts (`evaluation_rows(part=...)`) in the order one process makes them."""
    position = {it.name: i for i, it in enumerate(with_passes(items, passes))}
    return sorted(rows, key=lambda r: position[r["name"]])


def merge_parts(parts: Sequence[Sequence[dict]], batch_size: int) -> list[dict]:
    """The rows of `evaluation_rows(part=(i, n))` for i = 0..n-1 (`parts[i]`), in the order one
    process makes them: batch b is part b mod n's next `batch_size` rows."""
    parts = [list(p) for p in parts]
    taken = [0] * len(parts)
    rows: list[dict] = []
    for b in range(sum(-(-len(p) // batch_size) for p in parts)):
        i = b % len(parts)
        rows += parts[i][taken[i] : taken[i] + batch_size]
        taken[i] += batch_size
    return rows


def evaluation_rows(
    model: nn.Module,
    world: World,
    items: Sequence[EvalItem],
    cfg: EvalConfig,
    part: tuple[int, int] = (0, 1),
    progress: bool = False,
    results: str | Path | None = None,
) -> list[dict]:
    """`evaluate_model`'s per-item rows. `part=(i, n)`: only batches i, i+n, i+2n, ... of the
    list, each drawn with the seed it has in the whole list, so n workers' parts together are
    one worker's rows, item for item (`in_list_order`)."""
    device = next(model.parameters()).device
    items = with_passes(items, cfg.passes)
    path = Path(results) if results else None
    done = read_results(path) if path else {}
    rows: list[dict] = []
    starts = range(0, len(items), cfg.batch_size)
    for b, start in enumerate(tqdm(starts, desc="evaluate", disable=not progress, leave=False)):
        if b % part[1] != part[0]:  # another worker's batch
            continue
        chunk = items[start : start + cfg.batch_size]
        if all(it.name in done for it in chunk):
            rows += [done[it.name] for it in chunk]
            continue
        # a batch is scored whole, with seed cfg.seed + b: a resumed run draws what an uninterrupted
        # one would (a batch cut short by a crash is scored again; its newer rows win on reading)
        with PeakMemory(device) as mem, Stopwatch() as clock:
            codes = synthesize(model, world.family, chunk, cfg, first_batch=b)
        audios = [world.codec.decode(c, it.prompt_audio or None) if c else None for c, it in zip(codes, chunk)]
        spoken = [a for a in audios if a is not None]
        heard = iter(world.asr.transcribe(spoken) if spoken else [])
        n_chunk = max(1, sum(len(c) for c in codes))
        new = []
        for it, c, a in zip(chunk, codes, audios):
            row = {"name": it.name, "target": it.target_text, "hypothesis": "", "wer": 1.0, "sim": 0.0}
            if a is not None:
                reference = it.prompt_audio or world.codec.decode(it.prompt_codes)
                row["hypothesis"] = next(heard)
                row["wer"] = utterance_wer(it.target_text, row["hypothesis"], world.language)
                row["sim"] = world.verifier.similarity(a, reference)
            elif c:  # codes but no audio: this codec has no decoder here (token-level metrics only)
                row["wer"] = row["sim"] = float("nan")
            new.append(
                {
                    **row,
                    "n_codes": len(c),
                    "synth_s": clock.seconds * len(c) / n_chunk,
                    "peak_mem_mb": mem.model_bytes(model) / 2**20,
                    "codes": list(c),
                }
            )
        rows += new
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in new)
    return rows


def summarize(rows: Sequence[dict], n_layers: int, params: int, token_rate: float) -> Evaluation:
    """The evaluation of a model from its per-item rows (of one run, or of several shards)."""
    if not rows:
        raise ValueError("no evaluation items: give at least one item")
    n_codes = sum(r["n_codes"] for r in rows)
    seconds = sum(r["synth_s"] for r in rows)
    audio_s = n_codes / token_rate
    return Evaluation(
        wer=sum(r["wer"] for r in rows) / len(rows),
        sim=sum(r["sim"] for r in rows) / len(rows),
        n_layers=n_layers,
        params=params,
        rtf=seconds / audio_s if audio_s else float("inf"),
        tokens_per_s=n_codes / seconds if seconds else 0.0,
        peak_mem_mb=max(r["peak_mem_mb"] for r in rows),
        items=list(rows),
    )


def speedup(
    teacher: nn.Module, student: nn.Module, family: Family, items: Sequence[EvalItem], cfg: EvalConfig, repeats: int = 2
) -> float:
    """Teacher RTF / student RTF on the same items, measured in this process with the runs
    alternated (teacher, student, teacher, ...), so both see the same machine load."""
    per_token = {"teacher": 0.0, "student": 0.0}
    for _ in range(repeats):
        for name, model in (("teacher", teacher), ("student", student)):
            with Stopwatch() as clock:
                codes = synthesize(model, family, items, cfg)
            per_token[name] += clock.seconds / max(1, sum(len(c) for c in codes))
    return per_token["teacher"] / per_token["student"]
