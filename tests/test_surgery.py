import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from orchestrator.anatomy import count_parameters, decoder_layers, kept_layers
from orchestrator.prune.surgery import LayerSetError, drop_layers, layers_removed, resolve_keep


def manual_forward(teacher, input_ids, keep):
    """The teacher's forward pass, written out by hand, visiting only the `keep` layers."""
    m = teacher.model
    T = input_ids.shape[1]
    h = m.embed_tokens(input_ids)
    pos = torch.arange(T)[None]
    pe = m.rotary_emb(h, pos)
    mask = torch.full((T, T), float("-inf")).triu(1)[None, None]
    outs = []
    for i in keep:
        out = m.layers[i](h, attention_mask=mask, position_ids=pos, position_embeddings=pe)
        h = out[0] if isinstance(out, tuple) else out
        outs.append(h)
    return outs, teacher.lm_head(m.norm(h))


@pytest.mark.parametrize("drop", [[1, 3], [0], [5], [0, 1, 2, 3, 4]])
def test_student_matches_teacher_skipping_dropped_layers(tiny_model, drop):
    tiny_model.set_attn_implementation("eager")
    student = drop_layers(tiny_model, drop=drop)
    keep = [i for i in range(6) if i not in drop]
    ids = torch.randint(3, 90, (2, 11))
    with torch.no_grad():
        expected_layers, expected_logits = manual_forward(tiny_model, ids, keep)
        out = student(input_ids=ids, output_hidden_states=True, use_cache=False)
    assert len(decoder_layers(student)) == len(keep)
    # hidden_states = (embeddings, layer 0, ..., normed last layer): compare the un-normed ones
    for j, h in enumerate(expected_layers[:-1]):
        torch.testing.assert_close(out.hidden_states[j + 1], h, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.logits, expected_logits, rtol=1e-5, atol=1e-5)


def test_saved_student_loads_with_stock_transformers(tiny_model, tmp_path):
    student = drop_layers(tiny_model, keep=[0, 2, 5])
    student.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["num_hidden_layers"] == 3
    assert cfg["prun_tts"] == {"kept_layers": [0, 2, 5], "teacher_layers": 6}
    if "layer_types" in cfg:
        assert len(cfg["layer_types"]) == 3
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(tiny_model)
    assert [layer.self_attn.layer_idx for layer in decoder_layers(loaded)] == [0, 1, 2]
    assert kept_layers(loaded) == [0, 2, 5]
    ids = torch.randint(3, 90, (1, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, student(ids).logits)
    assert count_parameters(loaded) < count_parameters(tiny_model)


def test_generation_same_with_and_without_cache(tiny_model):
    student = drop_layers(tiny_model, drop=[1, 4])
    ids = torch.randint(3, 90, (2, 7))
    kw = dict(do_sample=False, max_new_tokens=12, min_new_tokens=12, pad_token_id=0)
    with torch.no_grad():
        cached = student.generate(ids, use_cache=True, **kw)
        uncached = student.generate(ids, use_cache=False, **kw)
    assert cached.shape == (2, 19)
    assert torch.equal(cached, uncached)


def test_pruning_a_pruned_model_records_original_indices(tiny_model):
    once = drop_layers(tiny_model, drop=[1])  # keeps 0,2,3,4,5
    twice = drop_layers(once, drop=[0, 2])  # of those, drops teacher 0 and 3
    assert kept_layers(twice) == [2, 4, 5]
    assert twice.config.prun_tts["teacher_layers"] == 6


def test_layers_removed_restores_the_model(tiny_model):
    ids = torch.randint(3, 90, (1, 8))
    with torch.no_grad():
        before = tiny_model(ids).logits
        with layers_removed(tiny_model, [2, 3]) as m:
            assert m.config.num_hidden_layers == 4
            during = m(ids).logits
            nested_gen = m.generate(ids, do_sample=False, max_new_tokens=4, pad_token_id=0)
        after = tiny_model(ids).logits
    expected = drop_layers(tiny_model, drop=[2, 3])
    with torch.no_grad():
        torch.testing.assert_close(during, expected(ids).logits)
        assert torch.equal(nested_gen, expected.generate(ids, do_sample=False, max_new_tokens=4, pad_token_id=0))
    torch.testing.assert_close(before, after)
    assert tiny_model.config.num_hidden_layers == 6
    assert not hasattr(tiny_model.config, "prun_tts")
    assert [layer.self_attn.layer_idx for layer in decoder_layers(tiny_model)] == list(range(6))


@pytest.mark.parametrize(
    "keep,drop,message",
    [
        (None, [6], "must be in 0..5"),
        (None, [-1], "must be in 0..5"),
        (None, [1, 1], "more than once"),
        (None, list(range(6)), "remove all 6 layers"),
        ([], None, "remove all 6 layers"),
        ([0, 0, 1], None, "more than once"),
    ],
)
def test_bad_layer_sets_are_refused(keep, drop, message):
    with pytest.raises(LayerSetError, match=message):
        resolve_keep(6, keep=keep, drop=drop)


def test_a_grafted_student_cut_again_keeps_its_trained_weights(tiny_model):
    """Pruning in steps: a student cut from the graft of a shallower-cut student has that
    student's weights (layers and the rest), not the teacher's; the teacher is untouched."""
    from orchestrator.prune.surgery import graft

    teacher_before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    first = drop_layers(tiny_model, drop=[1])  # teacher layers 0, 2, 3, 4, 5
    with torch.no_grad():
        for p in first.parameters():
            p.add_(torch.randn_like(p))  # "distilled": every weight moved
    grafted = graft(tiny_model, first)
    second = drop_layers(grafted, drop=[1, 3])  # teacher layers 0, 2, 4, 5
    assert kept_layers(second) == [0, 2, 4, 5]
    for j, i in enumerate([0, 2, 4, 5]):  # layer i of the second student is layer i of the first
        mine, theirs = (
            decoder_layers(second)[j].state_dict(),
            decoder_layers(first)[[0, 2, 3, 4, 5].index(i)].state_dict(),
        )
        assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    for name in ("model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"):
        assert torch.equal(second.state_dict()[name], first.state_dict()[name])
    assert all(torch.equal(v, teacher_before[k]) for k, v in tiny_model.state_dict().items())
    # the dropped teacher layer 1 keeps the teacher's weights in the graft (nothing of the student's there)
    assert all(
        torch.equal(decoder_layers(grafted)[1].state_dict()[k], v)
        for k, v in decoder_layers(tiny_model)[1].state_dict().items()
    )
