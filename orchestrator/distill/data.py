"""Batches of training pairs: right-padded ids, attention mask, speech-span labels."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch

from orchestrator.batching import right_pad
from orchestrator.generation.decode import DecodingRules, decode
from orchestrator.generation.sampling import Sampler
from orchestrator.world import Family, Sample


def collate(
    family: Family, pairs: Sequence[tuple[Sample, Sample]], texts: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """`texts`: one new target text per pair, for on-policy rollouts (`text_*` keys: each pair's
    prompt asking for its new text, and the speech length expected at the pair's rate)."""
    rows = [family.training_ids(p, t) for p, t in pairs]
    batch = right_pad(rows, family.pad_id)
    # where the prompt ends (what a model is given at synthesis time), for on-policy rollouts
    batch["prompt_len"] = torch.tensor([len(family.prompt_ids(p.text, t.text, p.codes)) for p, t in pairs])
    if texts:
        # a target without speech is the prompt and the end token: the prompt's ids and labels
        asks = [family.training_ids(p, Sample(text, t.speaker, ())) for (p, t), text in zip(pairs, texts)]
        asked = right_pad([(ids[:-1], labels[:-1]) for ids, labels in asks], family.pad_id)
        batch.update({f"text_{k}": v for k, v in asked.items()})
        batch["text_prompt_len"] = asked["attention_mask"].sum(1)
        # the new text at the pair's own speaking rate (codes per character)
        batch["text_expect_len"] = torch.tensor(
            [math.ceil(len(t.codes) * len(text) / max(len(t.text), 1)) for (_, t), text in zip(pairs, texts)]
        )
    return batch


def text_prompts(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The batch's prompts asking for its new texts (what `collate` made of `texts`)."""
    keys = ("input_ids", "attention_mask", "labels", "prompt_len", "expect_len")
    return {k: batch[f"text_{k}"] for k in keys}


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
    expect = batch.get("expect_len", lengths - batch["prompt_len"])  # a new text: its expected length
    max_new = int(expect.max() * 1.5) + 4  # room for a slower voice, not unbounded
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


def batch_order(
    n_pairs: int,
    batch_size: int,
    epochs: int = 1,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    n_texts: int = 0,
) -> Iterator[list[tuple[int, int]]]:
    """This rank's batches in training order, each a list of (pair index, new text index or -1):
    a shuffle per epoch, rank r taking every world_size-th pair of it, whole batches only. Pair i
    takes text (epoch x pairs + i) mod `n_texts`: another text each epoch while they last."""
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(n_pairs, generator=g).tolist()[rank::world_size]
        for start in range(0, len(order) - batch_size + 1, batch_size):
            chosen = order[start : start + batch_size]
            yield [(i, (epoch * n_pairs + i) % n_texts if n_texts else -1) for i in chosen]


def pairs_batch(
    family: Family, pairs: Sequence[tuple[Sample, Sample]], index: Sequence[int], texts: Sequence[str] = ()
) -> dict[str, torch.Tensor]:
    """`collate`, plus `index`: each row's position among the training pairs (the key of the
    teacher-output cache)."""
    batch = collate(family, pairs, texts)
    batch["index"] = torch.tensor(list(index))
    return batch


def batches(
    family: Family,
    pairs: Sequence[tuple[Sample, Sample]],
    batch_size: int,
    epochs: int = 1,
    seed: int = 0,
    rank: int = 0,
    world_size: int = 1,
    texts: Sequence[str] = (),
) -> Iterator[dict[str, torch.Tensor]]:
    """The batches of `batch_order` over `pairs`, read as they are needed (`texts`: the new
    target texts of the on-policy steps)."""
    for chosen in batch_order(len(pairs), batch_size, epochs, seed, rank, world_size, len(texts)):
        new = [texts[t] for _, t in chosen] if texts else ()
        yield pairs_batch(family, [pairs[i] for i, _ in chosen], [i for i, _ in chosen], new)
