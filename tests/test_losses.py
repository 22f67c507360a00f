import math

import pytest
import torch
import torch.nn.functional as F

from orchestrator.distill import losses


def test_latent_targets_follow_the_paper_mapping():
    # teacher 0..5, layers 2 and 3 cut: student 1 (teacher 1) stands for 1..3
    assert losses.latent_targets([0, 1, 4, 5], 6) == [0, 3, 4, 5]
    assert losses.latent_targets([0, 2, 4, 6], 8) == [1, 3, 5, 7]
    assert losses.latent_targets([3], 8) == [7]
    assert losses.latent_targets([1, 2], 4) == [1, 3]


def _logits(rows):
    """(positions, speech ids) logits whose softmax is the given probabilities."""
    return torch.log(torch.tensor(rows))


def test_speech_kl_known_value():
    teacher = _logits([[0.5, 0.5], [0.5, 0.5]])
    student = _logits([[0.25, 0.75], [0.5, 0.5]])
    expected = (0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)) / 2  # batchmean over 2 positions
    assert losses.speech_kl(student, teacher) == pytest.approx(expected, rel=1e-5)
    assert losses.speech_kl(student, teacher, reduction="sum") == pytest.approx(2 * expected, rel=1e-5)
    assert losses.speech_kl(teacher, teacher) == pytest.approx(0.0, abs=1e-7)


def test_reverse_kl_and_jsd_known_values():
    teacher = _logits([[0.5, 0.5], [0.5, 0.5]])
    student = _logits([[0.25, 0.75], [0.5, 0.5]])
    reverse = (0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)) / 2  # KL(S||T), batchmean
    assert losses.speech_kl(student, teacher, kind="reverse") == pytest.approx(reverse, rel=1e-5)
    beta = 0.3
    m = [beta * 0.5 + (1 - beta) * 0.25, beta * 0.5 + (1 - beta) * 0.75]
    kl_t = 0.5 * math.log(0.5 / m[0]) + 0.5 * math.log(0.5 / m[1])
    kl_s = 0.25 * math.log(0.25 / m[0]) + 0.75 * math.log(0.75 / m[1])
    jsd = (beta * kl_t + (1 - beta) * kl_s) / 2
    assert losses.speech_kl(student, teacher, kind="jsd", beta=beta) == pytest.approx(jsd, rel=1e-5)
    for kind in ("reverse", "jsd"):
        assert losses.speech_kl(teacher, teacher, kind=kind) == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="forward"):
        losses.speech_kl(student, teacher, kind="sideways")


def test_speech_targets_are_the_next_speech_labels_in_position_order():
    labels = torch.tensor([[-100, -100, 4, 5], [-100, 3, -100, -100]])
    assert losses.speech_positions(labels).tolist() == [[False, True, True], [True, False, False]]
    assert losses.speech_targets(labels).tolist() == [4, 5, 3]


def test_speech_kl_temperature_scaling():
    t = torch.tensor([[2.0, 0.0]])
    s = torch.zeros(1, 2)
    p = torch.softmax(torch.tensor([1.0, 0.0]), 0)  # teacher at T=2
    expected = float((p * torch.log(p / 0.5)).sum()) * 4
    assert losses.speech_kl(s, t, temperature=2.0) == pytest.approx(expected, rel=1e-5)


def test_speech_ce_is_log_vocab_for_a_uniform_head():
    hidden = torch.randn(5, 4)
    weight = torch.zeros(11, 4)  # every logit 0: uniform over the 11 ids
    targets = torch.tensor([7, 7, 1, 0, 10])
    assert losses.speech_terms(hidden, weight, None, targets)["ce"] == pytest.approx(math.log(11), rel=1e-6)
    summed = losses.speech_terms(hidden, weight, None, targets, reduction="sum")["ce"]
    assert summed == pytest.approx(5 * math.log(11), rel=1e-6)
    bias = torch.zeros(11)
    bias[7] = math.log(3.0)  # id 7 now has probability 3 / 13
    expected = (2 * math.log(13 / 3) + 3 * math.log(13)) / 5  # two targets are id 7
    assert losses.speech_terms(hidden, weight, bias, targets)["ce"] == pytest.approx(expected, rel=1e-6)


def test_speech_terms_in_chunks_have_the_whole_values_and_gradients():
    torch.manual_seed(0)
    hidden = torch.randn(13, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    bias = torch.randn(50, requires_grad=True)
    targets = torch.randint(0, 50, (13,))
    speech = torch.tensor([40, 41, 42, 43, 44, 45, 3])  # the speech ids and a stop id, out of order
    teacher = torch.randn(13, len(speech))
    # the references, from the whole logits: CE over all 50 ids, KL(T||S) over the speech columns x T^2
    logits = hidden @ weight.T + bias
    ref = {"ce": F.cross_entropy(logits, targets, reduction="sum")}
    s, t = F.log_softmax(logits[:, speech] / 2, -1), F.log_softmax(teacher / 2, -1)
    ref["kl"] = (t.exp() * (t - s)).sum() * 4
    params = (hidden, weight, bias)
    for ce in (True, False):
        want = ref if ce else {"kl": ref["kl"]}
        for rows in (1, 4, 13, 100):
            got = losses.speech_terms(
                hidden, weight, bias, targets, teacher, speech, ce=ce, temperature=2.0, reduction="sum", chunk_rows=rows
            )
            assert set(got) == set(want)
            for k in want:
                torch.testing.assert_close(got[k], want[k])
                g = torch.autograd.grad(got[k], params, retain_graph=True)
                w = torch.autograd.grad(want[k], params, retain_graph=True)
                for a, b in zip(g, w, strict=True):
                    torch.testing.assert_close(a, b)


def test_speech_terms_without_speech_positions_are_zero_and_reach_the_head():
    weight = torch.randn(9, 4, requires_grad=True)
    hidden = torch.zeros(0, 4, requires_grad=True)
    got = losses.speech_terms(
        hidden, weight, None, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2), torch.tensor([1, 2])
    )
    assert float(got["ce"]) == 0.0 and float(got["kl"]) == 0.0
    (grad,) = torch.autograd.grad(got["ce"] + got["kl"], [weight])  # a gradient (of zeros): DDP needs one
    assert not grad.any()


def test_latent_loss_uses_the_mapping_and_the_mask():
    torch.manual_seed(0)
    teacher = [torch.randn(2, 4, 8) for _ in range(4)]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    student = [teacher[1] + 1.0, teacher[3].clone()]
    student[1][~mask.bool()] = 100.0  # padding does not count
    assert losses.latent_loss(student, teacher, [1, 3], mask, "mse") == pytest.approx(0.5)
    assert losses.latent_loss([teacher[1], teacher[3]], teacher, [1, 3], mask, "cosine") == pytest.approx(0.0, abs=1e-6)
    orth_s = [torch.tensor([[[1.0, 0.0]]])]
    orth_t = [torch.tensor([[[0.0, 2.0]]])]
    assert losses.latent_loss(orth_s, orth_t, [0], torch.ones(1, 1), "cosine") == pytest.approx(1.0)


def test_attention_loss_known_value():
    t = torch.tensor([[[[1.0, 0.0], [0.5, 0.5]]]])  # (B=1, H=1, T=2, T=2)
    s = torch.tensor([[[[1.0, 0.0], [0.25, 0.75]]]])
    mask = torch.ones(1, 2)
    expected = (0.0 + 0.5 * math.log(2) + 0.5 * math.log(0.5 / 0.75)) / 2
    assert losses.attention_loss([s], [t], [0], mask) == pytest.approx(expected, rel=1e-4)
    assert losses.attention_loss([t], [t], [0], mask) == pytest.approx(0.0, abs=1e-6)


def test_embedding_loss_known_value():
    t = torch.zeros(1, 3, 4)
    s = torch.full((1, 3, 4), 2.0)
    assert losses.embedding_loss(s, t, torch.ones(1, 3)) == pytest.approx(4.0)


def test_adaptive_weights_normalise_by_running_magnitude():
    aw = losses.AdaptiveWeights(momentum=0.5)
    assert float(aw("kl", torch.tensor(8.0))) == pytest.approx(1.0)
    assert float(aw("kl", torch.tensor(4.0))) == pytest.approx(4.0 / 6.0)  # running scale 0.5*8 + 0.5*4
    assert float(aw("ce", torch.tensor(0.01))) == pytest.approx(1.0, rel=1e-4)
    restored = losses.AdaptiveWeights(momentum=0.5)
    restored.load_state_dict(aw.state_dict())
    assert restored.scale == aw.scale
