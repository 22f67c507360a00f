import pytest
import torch
from conftest import tiny_llama

from orchestrator.config import DistillConfig
from orchestrator.distill.loop import LossSpec, load_checkpoint, loss_spec, make_state, save_checkpoint, train_step
from orchestrator.prune.surgery import drop_layers

SPEECH = torch.arange(40, 97)


def random_batch(seed, rows=4, width=16):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (rows, width), generator=g)
    labels = ids.clone()
    labels[:, :6] = -100  # text span: no loss
    mask = torch.ones_like(ids)
    mask[0, -3:] = 0
    labels[0, -3:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def spec_for(weights, kept, n=6, **kw):
    kw.setdefault("on_policy", 0.0)  # random batches have no prompts to continue
    cfg = DistillConfig(weights=weights, **kw)
    return loss_spec(cfg, SPEECH, kept, n)


def test_distillation_moves_the_student_towards_the_teacher():
    teacher = tiny_llama(6)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = drop_layers(teacher, drop=[2, 3])
    for p in student.parameters():
        p.requires_grad_(True)
    spec = spec_for({"kl": 1, "latent": 1, "attention": 0.5, "embedding": 0.1, "ce": 0}, [0, 1, 4, 5])
    teacher.set_attn_implementation("eager")
    student.set_attn_implementation("eager")
    assert spec.targets == (0, 3, 4, 5)
    state = make_state(student, lr=3e-3, warmup=1, total_steps=40)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    batch = random_batch(0)
    first = train_step(state, [batch], spec, teacher)
    for _ in range(39):
        last = train_step(state, [batch], spec, teacher)
    assert set(first) >= {"kl", "latent", "attention", "embedding", "loss", "grad_norm", "lr"}
    assert first["embedding"] == pytest.approx(0.0, abs=1e-9)  # the student starts with the teacher's embeddings
    assert last["loss"] < 0.1 * first["loss"] and last["latent"] < 0.1 * first["latent"]
    assert last["kl"] < first["kl"]
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in before.items())  # frozen teacher
    assert state.step == 40 and state.tokens == 40 * int(batch["attention_mask"].sum())


def test_without_teacher_it_is_plain_speech_span_training():
    model = tiny_llama(2)
    state = make_state(model, lr=3e-3, warmup=1, total_steps=30)
    spec = LossSpec({"ce": 1.0}, 1.0, "mse", SPEECH)
    batch = random_batch(1)
    losses = [train_step(state, [batch], spec)["ce"] for _ in range(30)]
    assert losses[-1] < losses[0] - 1.0


def test_checkpoint_restore_continues_exactly(tmp_path):
    teacher = tiny_llama(4)
    spec = spec_for({"kl": 1.0, "latent": 1.0, "ce": 0.5}, [0, 3], n=4, adaptive=True)
    batches = [random_batch(s) for s in range(6)]

    def fresh():
        torch.manual_seed(0)
        s = drop_layers(teacher, drop=[1, 2])
        for p in s.parameters():
            p.requires_grad_(True)
        return make_state(s, lr=1e-3, warmup=2, total_steps=6, adaptive=True, ema=0.9)

    straight = fresh()
    for b in batches:
        train_step(straight, [b], spec, teacher)

    resumed = fresh()
    for b in batches[:3]:
        train_step(resumed, [b], spec, teacher)
    save_checkpoint(resumed, tmp_path / "ckpt.pt")
    restarted = fresh()
    load_checkpoint(restarted, tmp_path / "ckpt.pt")
    assert restarted.step == 3 and restarted.tokens == resumed.tokens
    assert restarted.adaptive.scale == resumed.adaptive.scale
    for b in batches[3:]:
        train_step(restarted, [b], spec, teacher)
    for (k, a), b in zip(straight.model.state_dict().items(), restarted.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
    for k, a in straight.ema.shadow.items():
        torch.testing.assert_close(a, restarted.ema.shadow[k], msg=k)


def test_weight_average_of_a_wrapped_model_uses_the_plain_parameter_names():
    class Wrapper(torch.nn.Module):  # what DDP looks like from outside: the model under .module
        def __init__(self, m):
            super().__init__()
            self.module = m

    model = tiny_llama(2)
    state = make_state(Wrapper(model), lr=1e-3, warmup=0, total_steps=1, ema=0.5)
    assert set(state.ema.shadow) == {n for n, _ in model.named_parameters()}


def test_weight_average_follows_the_weights_by_its_decay():
    from orchestrator.distill.loop import WeightAverage

    model = tiny_llama(2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    avg = WeightAverage(model, decay=0.75)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    avg.update(model)
    avg.copy_to(model)
    for n, p in model.named_parameters():  # 0.75 * old + 0.25 * (old + 1)
        torch.testing.assert_close(p, before[n] + 0.25, msg=n)


def test_gradient_accumulation_averages_micro_batches():
    teacher = tiny_llama(4)
    spec = spec_for({"kl": 1.0}, [0, 1], n=4)
    b1, b2 = random_batch(3, rows=2), random_batch(4, rows=2)
    for b in (b1, b2):  # same number of speech positions in each, so the means agree
        b["attention_mask"][:] = 1
        b["labels"][:, :6] = -100
    both = {k: torch.cat([b1[k], b2[k]]) for k in b1}
    grads = []
    for micro in ([b1, b2], [both]):
        torch.manual_seed(0)
        s = drop_layers(teacher, drop=[2, 3])
        for p in s.parameters():
            p.requires_grad_(True)
        state = make_state(s, lr=0.0 + 1e-9, warmup=0, total_steps=1)
        state.optimizer.step = lambda: None  # keep the gradients to compare them
        state.optimizer.zero_grad = lambda set_to_none=True: None
        train_step(state, micro, spec, teacher, clip=1e9)
        grads.append(torch.cat([p.grad.flatten() for p in s.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_every_weight_zero_is_refused():
    with pytest.raises(ValueError, match="at least one term"):
        spec_for({"kl": 0, "latent": 0, "attention": 0, "embedding": 0, "ce": 0}, [0])


def test_data_budget_holds_distinct_pairs_within_the_fraction(tiny_cfg, tiny_world):
    from orchestrator.config import ConfigError
    from orchestrator.distill.budget import plan_budget

    teacher_tokens = sum(len(tiny_world.family.training_ids(*tiny_world.train_pairs[i])[0]) for i in range(64))
    cfg = tiny_cfg.model_copy(update={"distill": DistillConfig(data_fraction=0.25, batch_size=4, epochs=3)})
    b = plan_budget(cfg, tiny_world, teacher_tokens)
    assert b.pairs % 4 == 0 and b.pairs >= 4
    assert b.unique_tokens == sum(
        len(tiny_world.family.training_ids(*tiny_world.train_pairs[i])[0]) for i in range(b.pairs)
    )
    assert b.unique_tokens <= 0.25 * teacher_tokens
    assert b.tokens == 3 * b.unique_tokens  # processed = data x epochs
    tiny = tiny_cfg.model_copy(update={"distill": DistillConfig(data_fraction=0.001, batch_size=4)})
    with pytest.raises(ConfigError, match="less than one batch"):
        plan_budget(tiny, tiny_world, teacher_tokens)


def test_on_policy_rollouts_continue_the_prompt_and_keep_speech_labels(tiny_world, random_teacher):
    from orchestrator.distill.data import collate, student_rollouts
    from orchestrator.distill.loop import is_on_policy_step

    f = tiny_world.family
    batch = collate(f, [tiny_world.train_pairs[i] for i in range(3)])
    torch.manual_seed(0)
    rolled = student_rollouts(random_teacher, batch, f.pad_id, f.end_id)
    for i in range(3):
        p = int(batch["prompt_len"][i])
        n = int(rolled["attention_mask"][i].sum())
        assert torch.equal(rolled["input_ids"][i, :p], batch["input_ids"][i, :p])  # same prompt
        assert torch.equal(rolled["labels"][i, :p], batch["labels"][i, :p])
        assert torch.equal(rolled["labels"][i, p:n], rolled["input_ids"][i, p:n])  # every generated token is a label
        assert (rolled["labels"][i, n:] == -100).all()
        generated = rolled["input_ids"][i, p:n].tolist()
        assert f.end_id not in generated[:-1]  # cut at the end token
    assert [is_on_policy_step(s, 0.5) for s in range(6)] == [False, True, False, True, False, True]
    assert sum(is_on_policy_step(s, 0.25) for s in range(100)) == 25
    assert not any(is_on_policy_step(s, 0.0) for s in range(10))


def test_extra_texts_are_the_transcripts_after_the_budget_and_bounded(tiny_cfg, tiny_world):
    from orchestrator.config import ConfigError
    from orchestrator.distill.budget import extra_texts, plan_budget

    teacher_tokens = sum(len(tiny_world.family.training_ids(*tiny_world.train_pairs[i])[0]) for i in range(64))
    cfg = tiny_cfg.model_copy(
        update={"distill": DistillConfig(data_fraction=0.25, batch_size=4, extra_texts=10, seed=0)}
    )
    b = plan_budget(cfg, tiny_world, teacher_tokens)
    texts = extra_texts(tiny_world, b)
    assert b.extra_texts == 10 and len(texts) == 10
    assert texts == [tiny_world.train_pairs[i][1].text for i in range(b.pairs, b.pairs + 10)]
    assert b.unique_tokens == plan_budget(tiny_cfg.model_copy(update={"distill": DistillConfig(
        data_fraction=0.25, batch_size=4)}), tiny_world, teacher_tokens).unique_tokens  # fmt: skip
    too_many = cfg.model_copy(update={"distill": cfg.distill.model_copy(update={"extra_texts": 64})})
    with pytest.raises(ConfigError, match=r"distill.extra_texts=64: .* 64 training pairs .* at most \d+ texts"):
        plan_budget(too_many, tiny_world, teacher_tokens)


def test_batches_ask_for_the_new_texts_in_the_pairs_own_voices(tiny_world):
    from orchestrator.distill.data import batches, text_prompts

    f = tiny_world.family
    pairs = [tiny_world.train_pairs[i] for i in range(8)]
    texts = [tiny_world.train_pairs[i][1].text for i in range(8, 13)]  # 5 texts for 8 pairs
    stream = list(batches(f, pairs, 4, epochs=2, seed=3, texts=texts))
    plain = list(batches(f, pairs, 4, epochs=2, seed=3))
    seen = []
    for epoch, (b, p) in enumerate(zip(stream, plain)):
        for k in p:  # the training rows themselves are what they were
            assert torch.equal(b[k], p[k])
        asked = text_prompts(b)
        for row, i in enumerate(b["index"].tolist()):
            prompt, target = pairs[i]
            text = texts[((epoch // 2) * len(pairs) + i) % len(texts)]  # two batches an epoch
            seen.append(text)
            n = int(asked["prompt_len"][row])
            assert asked["input_ids"][row, :n].tolist() == f.prompt_ids(prompt.text, text, prompt.codes)
            assert (asked["attention_mask"][row, n:] == 0).all()
            # the prompt's own speech is labelled as in training, the text is not
            codes = len(prompt.codes)
            assert asked["labels"][row, n - codes : n].tolist() == asked["input_ids"][row, n - codes : n].tolist()
            assert (asked["labels"][row, : n - codes] == -100).all()
            expect = int(asked["expect_len"][row])
            assert expect == -(-len(target.codes) * len(text) // len(target.text))
    assert set(seen) == set(texts)  # every text used, another one for a pair in the next epoch


def test_on_policy_steps_speak_the_new_texts(tiny_world, random_teacher, monkeypatch):
    from orchestrator.distill import data
    from orchestrator.distill.data import batches

    f = tiny_world.family
    pairs = [tiny_world.train_pairs[i] for i in range(4)]
    texts = [tiny_world.train_pairs[i][1].text for i in range(4, 8)]
    batch = next(batches(f, pairs, 4, texts=texts))
    spoken = []
    real = data.student_rollouts

    def spy(model, b, *args):
        spoken.append(b)
        return real(model, b, *args)

    monkeypatch.setattr(data, "student_rollouts", spy)
    student = drop_layers(random_teacher, drop=[1]).train()
    spec = loss_spec(DistillConfig(on_policy=1.0), f.speech_ids, [0, 2, 3], 4, f.pad_id, f.end_id)
    state = make_state(student, lr=1e-3, warmup=1, total_steps=2)
    torch.manual_seed(0)
    out = train_step(state, [batch], spec, random_teacher)
    assert out["on_policy"] == 1.0 and out["kl"] > 0
    (asked,) = spoken
    assert torch.equal(asked["input_ids"], batch["text_input_ids"])
    assert not torch.equal(asked["input_ids"][:, : batch["input_ids"].shape[1]], batch["input_ids"])
