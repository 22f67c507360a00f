"""Batches of training pairs: right-padded ids, attention mask, speech-span labels."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from orchestrator.batching import right_pad
from orchestrator.generation.decode import DecodingRules, decode
from orchestrator.generation.sampling import Sampler
from orchestrator.world import Family, Sample


def collate(family: Family, pairs: Sequence[tuple[Sample, Sample]]) -> dict[str, torch.Tensor]:
    rows = [family.training_ids(p, t) for p, t in pairs]
    batch = right_pad(rows, family.pad_id)
    # where the prompt ends (what a model is given at synthesis time), for on-policy rollouts
    batch["prompt_len"] = torch.tensor([len(family.prompt_ids(p.text, t.text, p.codes)) for p, t in pairs])
    return batch


@torch.no_grad()
def student_rollouts(
    model,
    batch: dict[str, torch.Tensor],
    pad_id: int,
    end_id: int,
    temperature: float = 1.0,
    speech_ids: torch.Tensor | None = None,
    stop_ids: tuple[int, ...] = (),
) -> dict[str, torch.Tensor]:
    """The batch's prompts continued by `model` itself (on-policy distillation, as in GKD):
    the teacher then grades the student's own continuations, the sequences it will
    meet at synthesis time. Labels mark the speech span as in the original batch."""
    model = getattr(model, "module", model)  # unwrap DDP
    was_training = model.training
    model.eval()
    lengths = batch["attention_mask"].sum(1)
    prompts = [batch["input_ids"][i, : batch["prompt_len"][i]].tolist() for i in range(len(lengths))]
    max_new = int((lengths - batch["prompt_len"]).max() * 1.5) + 4  # room for a slower voice, not unbounded
    stops = tuple(stop_ids) or (end_id,)
    head = tuple(sorted({*map(int, speech_ids.tolist()), *stops})) if speech_ids is not None else None
    # plain sampling over the speech vocabulary, whatever the family's evaluation sampler
    rules = DecodingRules(stops, end_id, head, pad_id, Sampler(temperature=temperature))
    out = decode(model, prompts, rules, [0] * len(prompts), [max_new] * len(prompts), speech_head=head is not None)
    model.train(was_training)
    rows = []
    for i, (p, g) in enumerate(zip(prompts, out)):
        gen = g.tokens + [end_id] if g.stopped else g.tokens  # a rollout that stopped is trained to stop
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
