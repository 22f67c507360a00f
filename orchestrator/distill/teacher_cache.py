"""The teacher's outputs on the distillation data, computed once and shared by every
trial of a sweep.

All trials of a sweep distil from the same frozen teacher on the same training pairs
(the data budget does not vary within a sweep), so the teacher's forward pass on
those pairs is identical in every trial and every epoch. The cache stores it once on
disk, memory-mapped by every worker: the logits of the speech and stop ids (fp16; what
the divergence reads, `speech_head`) and, when a latent or embedding term is weighted, the
hidden states (embeddings and every layer's output, fp16). Steps on the student's own
continuations (on-policy) and attention maps still run the live teacher: their inputs are
not known in advance.

Size: tokens x (speech ids + (layers + 1) x hidden) x 2 bytes; this suits small
codebooks (the mini world). For LLaSA's 65,537 speech ids keep it off.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from orchestrator.distill.data import collate
from orchestrator.distill.losses import speech_positions
from orchestrator.distill.speech_head import SpeechOutputs, final_hidden, head_logits, speech_outputs
from orchestrator.world import Family, Sample

META = "teacher_cache.json"


def build_teacher_cache(
    teacher: nn.Module,
    family: Family,
    pairs: Sequence[tuple[Sample, Sample]],
    directory: str | Path,
    key: dict,
    with_hidden: bool,
    batch_size: int = 32,
    progress: bool = False,
) -> Path:
    """Write the cache for `pairs` under `directory` (kept as is if it holds one for the same `key`)."""
    directory = Path(directory)
    meta = directory / META
    if meta.is_file() and json.loads(meta.read_text())["key"] == key:
        return directory
    lengths = [len(family.training_ids(*p)[0]) for p in pairs]
    speech_ids = family.speech_ids
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    device = next(teacher.parameters()).device
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    np.save(tmp / "offsets.npy", offsets)
    shape = (int(offsets[-1]), len(speech_ids))
    logits = np.lib.format.open_memmap(tmp / "logits.npy", "w+", np.float16, shape)
    hidden = None
    teacher.eval()
    for start in tqdm(range(0, len(pairs), batch_size), desc="teacher cache", disable=not progress, leave=False):
        batch = collate(family, pairs[start : start + batch_size])
        with torch.no_grad():
            inputs = dict(
                input_ids=batch["input_ids"].to(device),
                attention_mask=batch["attention_mask"].to(device),
                output_hidden_states=with_hidden,
                use_cache=False,
            )
            out, final, head = final_hidden(teacher, inputs)
            speech = head_logits(final, head, speech_ids)  # (B, T, speech ids): every real position
        if with_hidden and hidden is None:
            shape = (int(offsets[-1]), len(out.hidden_states), out.hidden_states[0].shape[-1])
            hidden = np.lib.format.open_memmap(tmp / "hidden.npy", "w+", np.float16, shape)
        # rows of a batch are consecutive pairs: gather their real tokens and write one block
        lens = batch["attention_mask"].sum(1).tolist()
        a, b = offsets[start], offsets[start + len(lens)]
        logits[a:b] = torch.cat([speech[r, :n] for r, n in enumerate(lens)]).half().cpu().numpy()
        if with_hidden:
            states = torch.stack(out.hidden_states, 2)  # (B, T, layers + 1, hidden)
            hidden[a:b] = torch.cat([states[r, :n] for r, n in enumerate(lens)]).half().cpu().numpy()
    logits.flush()
    if hidden is not None:
        hidden.flush()
    (tmp / META).write_text(
        json.dumps({"key": key, "pairs": len(pairs), "tokens": int(offsets[-1]), "with_hidden": with_hidden}, indent=2)
    )
    if directory.exists():
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


class TeacherCache:
    """Stands in for the teacher in `train_step`: batches of cached pairs are served
    from disk, anything else (the student's own continuations, attention maps) from
    the live `model`."""

    def __init__(self, directory: str | Path, model: nn.Module):
        d = Path(directory)
        self.model = model
        self.offsets = np.load(d / "offsets.npy")
        self.logits = np.load(d / "logits.npy", mmap_mode="r")
        self.hidden = np.load(d / "hidden.npy", mmap_mode="r") if (d / "hidden.npy").is_file() else None
        self.served = 0  # batches answered from the cache
        self.live = 0  # batches that ran the teacher

    def outputs(self, batch: dict[str, torch.Tensor], inputs: dict, speech_ids: torch.Tensor) -> SpeechOutputs:
        can_serve = (
            "index" in batch
            and not inputs.get("output_attentions")
            and (self.hidden is not None or not inputs.get("output_hidden_states"))
        )
        if not can_serve:
            self.live += 1
            return speech_outputs(self.model, inputs, batch["labels"], speech_ids)
        self.served += 1
        ids = batch["input_ids"]
        index = batch["index"].cpu().numpy()  # the batch is on the training device
        starts, ends = self.offsets[index], self.offsets[index + 1]
        # the speech positions' rows only, in the order `speech_positions` takes them (row-major)
        r, t = speech_positions(batch["labels"].cpu()).nonzero(as_tuple=True)
        rows = starts[r.numpy()] + t.numpy()
        at_speech = torch.from_numpy(np.asarray(self.logits[rows], dtype=np.float32)).to(ids.device)
        hidden = None
        if inputs.get("output_hidden_states"):  # the latent terms read every real position
            hidden = torch.zeros(self.hidden.shape[1], *ids.shape, self.hidden.shape[2], device=ids.device)
            for row, (a, b) in enumerate(zip(starts, ends)):
                span = np.asarray(self.hidden[a:b], dtype=np.float32)
                hidden[:, row, : b - a] = torch.from_numpy(span).transpose(0, 1)
        return SpeechOutputs(None if hidden is None else tuple(hidden), None, at_speech)
