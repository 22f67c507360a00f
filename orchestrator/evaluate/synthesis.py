"""Synthesize an evaluation list and score it: WER, similarity, RTF, memory, size."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from orchestrator.config import EvalConfig
from orchestrator.distill.data import left_pad
from orchestrator.evaluate.metrics import PeakMemory, Stopwatch, utterance_wer
from orchestrator.prune.surgery import count_parameters, decoder_layers
from orchestrator.world import EvalItem, Family, World


@dataclasses.dataclass
class Evaluation:
    wer: float  # mean of per-utterance WERs, in [0, 1+]
    sim: float  # mean speaker similarity to the prompt
    n_layers: int
    params: int
    rtf: float  # synthesis seconds per second of audio
    tokens_per_s: float
    peak_mem_mb: float
    items: list[dict]

    def summary(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "items"}


@torch.no_grad()
def synthesize(model: nn.Module, family: Family, items: Sequence[EvalItem], cfg: EvalConfig,
               progress: bool = False) -> list[list[int]]:
    """Speech codes for each item, sampled in batches; the same seed for every model,
    so teacher and students are compared on the same random draws."""
    device = next(model.parameters()).device
    model.eval()
    out: list[list[int]] = []
    starts = range(0, len(items), cfg.batch_size)
    for b, start in enumerate(tqdm(starts, desc="synthesize", disable=not progress, leave=False)):
        chunk = items[start:start + cfg.batch_size]
        ids, mask = left_pad([family.prompt_ids(it.prompt_text, it.target_text, it.prompt_codes) for it in chunk],
                             family.pad_id)
        torch.manual_seed(cfg.seed + b)
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
            temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or None,
            max_new_tokens=cfg.max_new_tokens, eos_token_id=family.end_id, pad_token_id=family.pad_id,
        )
        out.extend(family.codes_of(row[ids.shape[1]:].tolist()) for row in gen)
    return out


def evaluate_model(model: nn.Module, world: World, items: Sequence[EvalItem], cfg: EvalConfig,
                   progress: bool = False, lang: str = "en") -> Evaluation:
    device = next(model.parameters()).device
    with PeakMemory(device) as mem, Stopwatch() as clock:
        codes = synthesize(model, world.family, items, cfg, progress)
    audios = [world.codec.decode(c) for c in codes]
    hyps = world.asr.transcribe(audios)
    rows = []
    for it, c, a, h in zip(items, codes, audios, hyps):
        sim = world.verifier.similarity(a, world.codec.decode(it.prompt_codes)) if len(c) else 0.0
        rows.append({"name": it.name, "target": it.target_text, "hypothesis": h,
                     "wer": utterance_wer(it.target_text, h, lang), "sim": sim, "n_codes": len(c), "codes": list(c)})
    n_codes = sum(r["n_codes"] for r in rows)
    audio_s = n_codes / world.codec.token_rate
    return Evaluation(
        wer=sum(r["wer"] for r in rows) / len(rows),
        sim=sum(r["sim"] for r in rows) / len(rows),
        n_layers=len(decoder_layers(model)),
        params=count_parameters(model),
        rtf=clock.seconds / audio_s if audio_s else float("inf"),
        tokens_per_s=n_codes / clock.seconds,
        peak_mem_mb=mem.peak_bytes / 2**20,
        items=rows,
    )


def speedup(teacher: nn.Module, student: nn.Module, family: Family, items: Sequence[EvalItem], cfg: EvalConfig,
            repeats: int = 2) -> float:
    """Teacher RTF / student RTF on the same items, measured in this process with the runs
    alternated (teacher, student, teacher, ...), so both see the same machine load."""
    per_token = {"teacher": 0.0, "student": 0.0}
    for _ in range(repeats):
        for name, model in (("teacher", teacher), ("student", student)):
            with Stopwatch() as clock:
                codes = synthesize(model, family, items, cfg)
            per_token[name] += clock.seconds / max(1, sum(len(c) for c in codes))
    return per_token["teacher"] / per_token["student"]
