import pytest
import torch
import torch.nn.functional as F
from conftest import make_identity

from orchestrator.builders import scoring_context
from orchestrator.prune import select
from orchestrator.prune.importance import SCORERS, LayerScores, layer_io, score_layers
from orchestrator.prune.surgery import drop_layers


@pytest.fixture
def ctx(tiny_cfg, tiny_world):
    return scoring_context(tiny_cfg, tiny_world, n_drop=2)


@pytest.mark.parametrize("name", ["wli", "block_influence", "angular", "loss_delta"])
def test_an_identity_layer_scores_zero(name, random_teacher, ctx):
    make_identity(random_teacher, 2)
    s = score_layers(name, random_teacher, ctx)
    assert len(s.scores) == 4
    # arccos is steep at 1: an fp32 cosine of 1 - 1e-9 is already 1.4e-5 of angular distance
    assert s.scores[2] == pytest.approx(0.0, abs=1e-4 if name == "angular" else 1e-5)
    if name != "wli":  # a random model's WER is already ~100%, so only the identity layer is certain
        assert min(abs(x) for i, x in enumerate(s.scores) if i != 2) > 1e-4
    if name in ("block_influence", "angular"):  # never negative, so the identity layer is the least important
        assert select.lowest(s, 1) == [2]


def test_block_influence_is_one_minus_cosine(random_teacher, ctx):
    s = score_layers("block_influence", random_teacher, ctx)
    batch = ctx.calibration_batches()[0]
    states = layer_io(random_teacher, batch)
    mask = batch["attention_mask"].bool()
    cos = torch.nn.functional.cosine_similarity(states[1][mask], states[2][mask], dim=-1).mean()
    assert len(ctx.calibration_batches()) == 2  # 16 pairs in batches of 8: the score averages both
    s_one = score_layers(
        "block_influence", random_teacher, type(ctx)(ctx.world, ctx.eval_cfg, ctx.n_items, 8, ctx.n_drop, 8)
    )
    assert s_one.scores[1] == pytest.approx(1 - float(cos), abs=1e-5)
    assert s.evidence["cos_in_out"][1] == pytest.approx(1 - s.scores[1])


def test_angular_block_scores_cover_every_start(random_teacher, ctx):
    s = score_layers("angular", random_teacher, ctx)
    assert s.block_size == 2 and sorted(s.block_scores) == [0, 1, 2]
    assert all(0 <= v <= 1 for v in s.block_scores.values())
    assert select.contiguous(s, 2) == [min(s.block_scores, key=s.block_scores.get) + i for i in range(2)]


def test_loss_delta_matches_a_manual_computation(random_teacher, ctx):
    s = score_layers("loss_delta", random_teacher, ctx)
    batches = ctx.calibration_batches()

    def loss(m):  # next-token cross-entropy over the full vocabulary where the next label is speech
        with torch.no_grad():
            total = 0.0
            for b in batches:
                logits = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
                labels = b["labels"]
                total += float(
                    F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
                )
            return total / len(batches)

    assert s.scores[3] == pytest.approx(loss(drop_layers(random_teacher, drop=[3])) - loss(random_teacher), abs=1e-5)


def test_wli_is_wer_without_the_layer_minus_full_wer(random_teacher, ctx):
    s = score_layers("wli", random_teacher, ctx)
    ev = s.evidence
    assert ev["n_items"] == 8
    assert s.scores == pytest.approx([w - ev["full_wer"] for w in ev["wer_without"]])


def test_baselines(random_teacher, ctx):
    assert select.lowest(score_layers("last_n", random_teacher, ctx), 2) == [2, 3]
    r1, r2 = score_layers("random", random_teacher, ctx), score_layers("random", random_teacher, ctx)
    assert r1.scores == r2.scores and len(set(r1.scores)) == 4
    with pytest.raises(ValueError, match="choose one of"):
        score_layers("magic", random_teacher, ctx)
    assert set(SCORERS) == {"wli", "block_influence", "angular", "loss_delta", "last_n", "random"}


def test_selection_strategies():
    s = LayerScores("x", [5.0, 0.1, 0.3, 4.0, 0.2, 6.0])
    assert select.lowest(s, 2) == [1, 4]
    assert select.contiguous(s, 2) == [1, 2]
    assert select.contiguous(s, 3) == [0, 1, 2] or sum(s.scores[1:4]) < sum(s.scores[0:3])
    blocks = LayerScores("y", [0.0] * 6, block_scores={0: 0.9, 1: 0.5, 2: 0.1, 3: 0.7}, block_size=3)
    assert select.contiguous(blocks, 3) == [2, 3, 4]


def test_iterative_rescores_after_each_removal(random_teacher, ctx):
    make_identity(random_teacher, 1)
    dropped, rounds = select.iterative("block_influence", random_teacher, ctx, 2)
    assert len(rounds) == 2 and len(rounds[0].scores) == 4 and len(rounds[1].scores) == 3
    assert 1 in dropped and len(dropped) == 2
    assert random_teacher.config.num_hidden_layers == 4  # the teacher is left as it was
