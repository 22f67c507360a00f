"""Batches of training pairs: right-padded ids, attention mask, speech-span labels."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from orchestrator.world import Family, Sample


def collate(family: Family, pairs: Sequence[tuple[Sample, Sample]]) -> dict[str, torch.Tensor]:
    rows = [family.training_ids(p, t) for p, t in pairs]
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), family.pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def batches(
    family: Family,
    pairs: Sequence[tuple[Sample, Sample]],
    batch_size: int,
    epochs: int = 1,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled batches over `epochs`; with world_size > 1 each rank takes its own share."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(pairs), generator=g).tolist()[rank::world_size]
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield collate(family, [pairs[i] for i in order[start : start + batch_size]])


def count_tokens(batch: dict[str, torch.Tensor]) -> int:
    return int(batch["attention_mask"].sum())
