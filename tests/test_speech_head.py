"""The losses read the output head only at speech positions (and the divergence only the speech
ids), and are the losses the full batch x length x vocabulary logits gave, values and gradients."""

import pytest
import torch
import torch.nn.functional as F
from test_cosyvoice2 import S, tiny_lm, tokenizer

from orchestrator.config import DistillConfig
from orchestrator.distill.data import collate
from orchestrator.distill.loop import compute_losses, loss_spec, model_outputs
from orchestrator.families.cosyvoice2 import CosyVoice2Family
from orchestrator.generation.decode import decoder_parts
from orchestrator.prune.surgery import drop_layers
from orchestrator.world import Sample

WEIGHTS = {"ce": 0.5, "kl": 1.0, "latent": 1.0, "embedding": 0.1}


def reference_terms(student, teacher, batch, speech_ids, temperature):
    """The terms from the whole logits, written out from their definitions: cross-entropy over
    the full vocabulary at positions whose next label is speech; KL(teacher || student) over the
    speech ids there, times T^2."""
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    s_logits = student(**inputs).logits
    with torch.no_grad():
        t_logits = teacher(**inputs).logits
    labels = batch["labels"]
    ce = F.cross_entropy(s_logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")
    at = labels[:, 1:] != -100
    s = F.log_softmax(s_logits[:, :-1][at][:, speech_ids] / temperature, -1)
    t = F.log_softmax(t_logits[:, :-1][at][:, speech_ids] / temperature, -1)
    kl = (t.exp() * (t - s)).sum() * temperature**2
    return {"ce": ce, "kl": kl}


def check_against_reference(student, teacher, batch, speech_ids, n_teacher, kept):
    spec = loss_spec(DistillConfig(weights=WEIGHTS, temperature=2.0), speech_ids, kept, n_teacher)
    inputs = dict(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_hidden_states=True,
        use_cache=False,
    )
    widths = []  # how many positions the output head ever ran on at once, in the model's forward
    hook = decoder_parts(student)[2].register_forward_hook(lambda _m, _a, out: widths.append(out.shape[1]))
    with torch.no_grad():
        t_out = model_outputs(teacher, inputs, batch, spec, "teacher")
    terms = compute_losses(model_outputs(student, inputs, batch, spec, "student"), t_out, batch, spec, reduction="sum")
    hook.remove()
    assert widths == [1]  # logits_to_keep=1: never batch x length x vocabulary
    ref = reference_terms(student, teacher, batch, speech_ids, 2.0)
    params = [p for p in student.parameters() if p.requires_grad]
    for k in ("ce", "kl"):
        torch.testing.assert_close(terms[k], ref[k], rtol=1e-5, atol=1e-5)
        got = torch.autograd.grad(terms[k], params, allow_unused=True, retain_graph=True)
        want = torch.autograd.grad(ref[k], params, allow_unused=True, retain_graph=True)
        for g, w in zip(got, want, strict=True):
            if w is None:
                assert g is None or not g.any()
            else:
                torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)
    assert {"latent", "embedding"} <= set(terms)


def test_llasa_layout_losses_equal_the_full_logits_ones(tiny_world, random_teacher):
    pairs = [tiny_world.train_pairs[i] for i in range(4)]
    batch = collate(tiny_world.family, pairs)
    student = drop_layers(random_teacher, drop=[1, 2])
    student.train()
    for p in student.parameters():
        p.requires_grad_(True)
    ids = tiny_world.family.speech_ids
    assert len(ids) < random_teacher.config.vocab_size  # the divergence reads a part of the head
    check_against_reference(student, random_teacher, batch, ids, 4, [0, 3])


def test_cosyvoice_layout_losses_equal_the_full_logits_ones():
    teacher = tiny_lm(4)
    student = drop_layers(teacher, drop=[2])
    family = CosyVoice2Family(tokenizer(), S)
    pairs = [
        (Sample("ab c", "x", (1, 2, 3)), Sample("de", "x", (4, 5, 6, 7))),
        (Sample("f", "y", (8,)), Sample("gh ij", "y", (9, 10))),
    ]
    check_against_reference(student, teacher, collate(family, pairs), family.speech_ids, 4, [0, 1, 3])


def test_the_teacher_gives_speech_id_logits_the_student_its_final_states(tiny_world, random_teacher):
    batch = collate(tiny_world.family, [tiny_world.train_pairs[0]])
    inputs = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    n_speech, n_ids = int((batch["labels"][:, 1:] != -100).sum()), len(tiny_world.family.speech_ids)
    spec = loss_spec(DistillConfig(weights={"kl": 1.0, "ce": 0.5, "latent": 0.0}), tiny_world.family.speech_ids)
    teacher = model_outputs(random_teacher, inputs, batch, spec, "teacher")
    assert teacher.speech_logits.shape == (n_speech, n_ids)
    full = random_teacher(**inputs).logits[:, :-1][batch["labels"][:, 1:] != -100]
    torch.testing.assert_close(teacher.speech_logits, full[:, tiny_world.family.speech_ids])
    student = model_outputs(random_teacher, inputs, batch, spec, "student")
    assert student.speech_logits is None and student.final.shape == (n_speech, random_teacher.config.hidden_size)


@pytest.mark.parametrize("rows", [1, 3])
def test_a_training_step_with_the_ce_in_chunks_matches_one_chunk(tiny_world, random_teacher, rows, monkeypatch):
    from orchestrator.distill import losses
    from orchestrator.distill.loop import make_state, train_step

    batch = collate(tiny_world.family, [tiny_world.train_pairs[i] for i in range(3)])
    spec = loss_spec(DistillConfig(weights={"ce": 1.0, "kl": 1.0, "latent": 0.0}), tiny_world.family.speech_ids)
    results = []
    for chunk in (None, rows * random_teacher.config.vocab_size):
        if chunk:
            monkeypatch.setattr(losses, "CHUNK_ELEMENTS", chunk)  # `rows` positions per chunk
        student = drop_layers(random_teacher, drop=[1])
        for p in student.parameters():
            p.requires_grad_(True)
        # a small step: Adam's first update is about lr x sign(gradient), whatever its size
        state = make_state(student, lr=1e-4, warmup=1, total_steps=2)
        terms = train_step(state, [batch], spec, random_teacher)
        results.append((terms, {k: v.clone() for k, v in student.state_dict().items()}))
    (a, wa), (b, wb) = results
    assert a["ce"] == pytest.approx(b["ce"], rel=1e-5) and a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)
