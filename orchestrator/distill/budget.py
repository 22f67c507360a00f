"""The distillation data budget: a fraction of the teacher's training data, counted in tokens
(or `data_hours` of speech).

`data_fraction: 0.05` gives the student distinct training pairs holding at most 5% of the
tokens the teacher was trained on (the paper's "less than 5% of the original training data").
`epochs` passes over that data; the tokens processed (data x epochs, the compute) are
reported beside it.
"""

from __future__ import annotations

import dataclasses

from orchestrator.config import Config, ConfigError
from orchestrator.world import World


@dataclasses.dataclass
class DataBudget:
    tokens_allowed: int
    pairs: int  # distinct training pairs used
    unique_tokens: int
    epochs: int
    hours: float  # speech in those pairs (prompt and target), at the codec's token rate
    extra_texts: int = 0  # transcripts (no speech) of the pairs after those, for the on-policy steps
    longest: int = 0  # tokens of the longest pair used (the memory estimate's sequence)
    most_speech: int = 0  # the most speech positions a pair used has (where the losses read the head)

    @property
    def tokens(self) -> int:
        return self.unique_tokens * self.epochs


def plan_budget(cfg: Config, world: World, teacher_tokens: int | None) -> DataBudget:
    """Pairs taken in order while they fit: `distill.data_hours` of speech, else
    `distill.data_fraction` of the teacher's training tokens (all tokens of a pair count)."""
    d = cfg.distill
    if d.data_hours is None and not teacher_tokens:
        raise ConfigError(
            "distill.data_fraction needs the teacher's training token count, which this teacher "
            "does not record; give distill.data_hours instead"
        )
    if not len(world.train_pairs):
        raise ConfigError(
            f"the {world.name} world has no training pairs: make the speech-token shards first "
            "(`prun-tts shards --config CFG`, from world.real.train_manifest)"
        )
    rate = world.codec.token_rate
    if d.data_hours is not None:
        allowed = int(d.data_hours * 3600 * rate)
        measure = lambda ids, p, t: len(p.codes) + len(t.codes)  # noqa: E731
    else:
        allowed = int(teacher_tokens * d.data_fraction)
        measure = lambda ids, p, t: len(ids)  # noqa: E731
    lengths: list[int] = []  # tokens of each pair
    speech: list[int] = []  # speech codes of each pair
    positions: list[int] = []  # speech positions the losses read in each pair
    total = 0
    while len(lengths) < len(world.train_pairs):
        prompt, target = world.train_pairs[len(lengths)]
        ids, labels = world.family.training_ids(prompt, target)
        size = measure(ids, prompt, target)
        if total + size > allowed:
            break
        total += size
        lengths.append(len(ids))
        speech.append(len(prompt.codes) + len(target.codes))
        positions.append(sum(label != -100 for label in labels))
    n = len(lengths) - len(lengths) % d.batch_size  # whole batches only
    if n == 0:
        what = (
            f"distill.data_hours={d.data_hours}"
            if d.data_hours is not None
            else f"distill.data_fraction={d.data_fraction}"
        )
        raise ConfigError(
            f"{what} allows {allowed} tokens, less than one batch of {d.batch_size} pairs; raise it "
            f"or lower distill.batch_size"
        )
    n_batches = n // d.batch_size * d.epochs
    if optimizer_steps(n, d) < 1:
        raise ConfigError(
            f"distill.grad_accum={d.grad_accum}: the budget's {n} pairs make {n_batches} batch(es) of "
            f"{d.batch_size} over {d.epochs} epoch(s) and one optimizer step takes {d.grad_accum}, so there is "
            "not one step to train; lower distill.grad_accum or distill.batch_size, or raise distill.epochs "
            "or the budget (distill.data_fraction / distill.data_hours)"
        )
    if n + d.extra_texts > len(world.train_pairs):
        raise ConfigError(
            f"distill.extra_texts={d.extra_texts}: the {world.name} world has {len(world.train_pairs)} training pairs "
            f"and the budget takes {n}, so at most {len(world.train_pairs) - n} texts are left; lower it"
        )
    hours = sum(speech[:n]) / rate / 3600
    return DataBudget(
        allowed, n, sum(lengths[:n]), d.epochs, hours, d.extra_texts, max(lengths[:n]), max(positions[:n])
    )


def extra_texts(world: World, budget: DataBudget) -> list[str]:
    """The target texts of the `budget.extra_texts` training pairs after the budgeted ones: text
    is not speech data (the teacher can voice any sentence), so these cost no recordings."""
    return [world.train_pairs[i][1].text for i in range(budget.pairs, budget.pairs + budget.extra_texts)]


def budget_record(budget: DataBudget, teacher_tokens: int | None) -> dict:
    return {**dataclasses.asdict(budget), "tokens": budget.tokens, "teacher_tokens": teacher_tokens}


def optimizer_steps(pairs: int, cfg) -> int:
    """Optimizer steps a distillation of `pairs` takes (`cfg`: the distill section): every pair
    `epochs` times, `batch_size x grad_accum` pairs a step."""
    return pairs * cfg.epochs // (cfg.batch_size * cfg.grad_accum)


def check_batch_split(batch_size: int, world_size: int) -> None:
    """The global batch must split evenly over the data-parallel workers."""
    if batch_size % world_size:
        raise ConfigError(
            f"distill.batch_size={batch_size} does not split over train.num_workers={world_size}; "
            "make the batch size a multiple of the number of workers"
        )
