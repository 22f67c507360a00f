"""ShortGPT's block influence and Gromov et al.'s angular distance, pinned against the
reference code itself: the reference functions are copied verbatim below (with their
commits) and run on each calibration sequence alone, unpadded, on hidden states taken by
transformers' own `output_hidden_states` (not by our hooks). Our scorers run on padded
batches of unequal sizes and must give the same numbers."""

import math

import pytest
import torch

from orchestrator.prune.importance import last_real_token, score_layers


# sramshetty/ShortGPT @ 78d9615fdcae6d90368832bd0a86c49c323549b9, short_gpt/metrics.py (verbatim)
def block_influence(
    input_hidden_state: torch.Tensor,
    output_hidden_state: torch.Tensor,
    angular=False,
):
    """
    input_hidden_state: B, S, D
    output_hidden_state: B, S, D
    """
    _, _, d = input_hidden_state.shape
    input_hidden_state = input_hidden_state.reshape(-1, d)
    output_hidden_state = output_hidden_state.reshape(-1, d)

    norm_input = input_hidden_state.norm(dim=-1, keepdim=True)
    norm_output = output_hidden_state.norm(dim=-1, keepdim=True)

    sim = (input_hidden_state @ output_hidden_state.T) / (norm_input * norm_output)
    sim = sim.diagonal().nan_to_num(nan=0.5)

    if angular:
        return torch.arccos(sim) / torch.pi

    return 1 - sim


# arcee-ai/PruneMe @ faee6c9dfb70841e8355908ecded2b25298cffc0, compute_block_similarity/utils.py (verbatim)
def angular_distance(x_l, x_l_plus_n) -> torch.Tensor:
    """Compute the angular distance between layer output tokens."""
    x_l_norm = x_l / torch.norm(x_l, dim=-1, keepdim=True)
    x_l_plus_n_norm = x_l_plus_n / torch.norm(x_l_plus_n, dim=-1, keepdim=True)
    cosine_similarity = (x_l_norm * x_l_plus_n_norm).sum(-1)
    return torch.acos(cosine_similarity.clamp(min=-1, max=1)) / torch.pi


@torch.no_grad()
def unpadded_states(model, ids: list[int]) -> list[torch.Tensor]:
    """[embeddings, output of layer 0, ..., output of the last layer], all before the final norm
    (ShortGPT's Llama wrapper), for one sequence with no padding: transformers' hidden states with
    the final norm made the identity, so the last entry is the last layer's raw output."""
    norm = model.model.norm
    model.model.norm = torch.nn.Identity()
    try:
        out = model(input_ids=torch.tensor([ids]), output_hidden_states=True, use_cache=False)
    finally:
        model.model.norm = norm
    return [h[0].float() for h in out.hidden_states]


@pytest.fixture
def ctx(tiny_cfg, tiny_world):
    from orchestrator.builders import scoring_context

    # 12 pairs in batches of 8: a padded batch of 8 and one of 4, padded to other widths
    c = scoring_context(tiny_cfg, tiny_world, n_drop=2)
    return type(c)(c.world, c.eval_cfg, c.n_items, 12, 2, 8)


def sequences(ctx) -> list[list[int]]:
    pairs = [ctx.world.train_pairs[i] for i in range(ctx.n_pairs)]
    return [ctx.world.family.training_ids(p, t)[0] for p, t in pairs]


def test_block_influence_is_shortgpts_expectation_over_all_tokens(random_teacher, ctx):
    batches = ctx.calibration_batches()
    assert [len(b["input_ids"]) for b in batches] == [8, 4]
    assert (batches[0]["attention_mask"] == 0).any()  # padding is present
    n_layers = len(random_teacher.model.layers)
    total, tokens = [0.0] * n_layers, 0
    for ids in sequences(ctx):  # ShortGPT: self.importances[i] += block_influence(...).sum()
        h = unpadded_states(random_teacher, ids)
        for i in range(n_layers):
            total[i] += block_influence(h[i][None], h[i + 1][None]).sum().item()
        tokens += len(ids)
    expected = [t / tokens for t in total]  # the expectation over every (real) token
    ours = score_layers("block_influence", random_teacher, ctx).scores
    assert ours == pytest.approx(expected, abs=1e-5)
    # the old per-batch mean, averaged unweighted over batches, is measurably off this
    per_batch = []
    for lo, hi in ((0, 8), (8, 12)):
        seqs = sequences(ctx)[lo:hi]
        s = [
            sum(
                block_influence(h[i][None], h[i + 1][None]).sum().item()
                for h in (unpadded_states(random_teacher, q) for q in seqs)
            )
            / sum(map(len, seqs))
            for i in range(n_layers)
        ]
        per_batch.append(s)
    unweighted = [(a + c) / 2 for a, c in zip(*per_batch)]
    assert max(abs(u - e) for u, e in zip(unweighted, expected)) > 1e-5


@pytest.mark.parametrize("gap", [1, 2])
def test_angular_distance_is_gromovs_last_token_quantity(random_teacher, ctx, gap):
    n_layers = len(random_teacher.model.layers)
    dist = [0.0] * (n_layers + 1 - gap)
    seqs = sequences(ctx)
    for ids in seqs:
        h = unpadded_states(random_teacher, ids)
        for l in range(n_layers + 1 - gap):
            last = slice(len(ids) - 1, len(ids))  # the sequence's last token
            d_pm = angular_distance(h[l][last], h[l + gap][last]).mean().item()
            d_sg = block_influence(h[l][None, last], h[l + gap][None, last], angular=True).sum().item()
            assert d_pm == pytest.approx(d_sg, abs=1e-6)  # the two references agree
            dist[l] += d_pm
    expected = [d / len(seqs) for d in dist]  # averaged over sequences
    s = score_layers("angular", random_teacher, ctx)
    ours = s.scores if gap == 1 else [s.block_scores[l] for l in sorted(s.block_scores)]
    assert s.block_size == 2
    assert ours == pytest.approx(expected, abs=1e-5)


def test_angular_is_not_the_all_token_mean_cosine(random_teacher, ctx):
    """The variant we had (mean cosine over all tokens, one arccos) is another quantity."""
    seqs = sequences(ctx)
    cos = [0.0] * len(random_teacher.model.layers)
    for ids in seqs:
        h = unpadded_states(random_teacher, ids)
        for l in range(len(cos)):
            cos[l] += (1 - block_influence(h[l][None], h[l + 1][None])).sum().item()
    all_tokens = [math.acos(c / sum(map(len, seqs))) / math.pi for c in cos]
    ours = score_layers("angular", random_teacher, ctx).scores
    assert max(abs(a - b) for a, b in zip(all_tokens, ours)) > 1e-3


def test_last_real_token_on_either_padding_side():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_real_token(right).tolist() == [2, 4, 0]
    assert last_real_token(left).tolist() == [4, 4, 4]
