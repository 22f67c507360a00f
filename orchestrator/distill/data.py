"""Batches of training pairs: right-padded ids, attention mask, speech-span labels."""
from __future__ import annotations

from typing import Iterator, Sequence

import torch

from orchestrator.world import Family, Sample


def collate(family: Family, pairs: Sequence[tuple[Sample, Sample]]) -> dict[str, torch.Tensor]:
    rows = [family.training_ids(p, t) for p, t in pairs]
    batch = right_pad(rows, family.pad_id)
    # where the prompt ends (what a model is given at synthesis time), for on-policy rollouts
    batch["prompt_len"] = torch.tensor([len(family.prompt_ids(p.text, t.text, p.codes)) for p, t in pairs])
    return batch


def right_pad(rows: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """(ids, labels) rows -> input_ids, attention_mask, labels (-100 on padding)."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.as_tensor(ids)
        labels[i, : len(lab)] = torch.as_tensor(lab)
        mask[i, : len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts -> left-padded ids and attention mask, for batched generation."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p):] = torch.as_tensor(list(p), dtype=torch.long)
        mask[i, width - len(p):] = 1
    return ids, mask


@torch.no_grad()
def student_rollouts(model, batch: dict[str, torch.Tensor], pad_id: int, end_id: int,
                     temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """The batch's prompts continued by `model` itself (on-policy distillation, as in GKD):
    the teacher then grades the student's own continuations, the sequences it will
    meet at synthesis time. Labels mark the speech span as in the original batch."""
    model = getattr(model, "module", model)  # unwrap DDP
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    lengths = batch["attention_mask"].sum(1)
    prompts = [batch["input_ids"][i, : batch["prompt_len"][i]].tolist() for i in range(len(lengths))]
    ids, mask = left_pad(prompts, pad_id)
    max_new = int((lengths - batch["prompt_len"]).max() * 1.5) + 4  # room for a slower voice, not unbounded
    out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=True,
                         temperature=temperature, top_k=None, top_p=1.0, max_new_tokens=max_new,
                         eos_token_id=end_id, pad_token_id=pad_id)[:, ids.shape[1]:].cpu()
    model.train(was_training)
    rows = []
    for i, p in enumerate(prompts):
        gen = out[i].tolist()
        gen = gen[: gen.index(end_id) + 1] if end_id in gen else [t for t in gen if t != pad_id]
        rows.append((p + gen, batch["labels"][i, : len(p)].tolist() + gen))
    new = right_pad(rows, pad_id)
    new["prompt_len"] = batch["prompt_len"]
    return new


def batches(
    family: Family,
    pairs: Sequence[tuple[Sample, Sample]],
    batch_size: int,
    epochs: int = 1,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[dict[str, torch.Tensor]]:
    """Shuffled batches over `epochs`; with world_size > 1 each rank takes its own share.
    `index` holds each row's position in `pairs` (the key of the teacher-output cache)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.randperm(len(pairs), generator=g).tolist()[rank::world_size]
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chosen = order[start : start + batch_size]
            batch = collate(family, [pairs[i] for i in chosen])
            batch["index"] = torch.tensor(chosen)
            yield batch

