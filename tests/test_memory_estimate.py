"""The memory a Train worker needs (`distill.memory`), counted independently here from a real
student's parameters, and the sweep's refusal when a device cannot hold it."""

import pytest
from conftest import tiny_llama

from orchestrator.config import ConfigError, load_config
from orchestrator.distill.memory import estimate_step_memory
from orchestrator.pipeline.preflight import check_trial_memory
from orchestrator.prune.surgery import drop_layers


def counts(teacher, kept):
    student = drop_layers(teacher, keep=list(range(kept)))
    total = sum(p.numel() for p in student.parameters())  # tied head counted once
    layer = sum(p.numel() for p in student.model.layers[0].parameters())
    return total, layer, total - kept * layer


def test_training_state_is_whole_under_ddp_and_split_under_fsdp():
    teacher = tiny_llama(6)
    total, layer, root = counts(teacher, 3)
    ddp = estimate_step_memory(teacher, 3, "ddp", 4, tokens=100, speech_tokens=60)
    # fp32 weights, gradients (and DDP's buckets: a copy of them) and AdamW's two moments
    assert (ddp.weights, ddp.gradients, ddp.optimizer) == (4 * total, 8 * total, 8 * total)
    assert ddp.teacher == sum(p.numel() * p.element_size() for p in teacher.parameters())
    fsdp = estimate_step_memory(teacher, 3, "fsdp", 4, tokens=100, speech_tokens=60)
    gathered = root + 2 * layer  # the root from forward to backward, two layers at a time
    assert fsdp.weights == fsdp.gradients == pytest.approx(4 * (total / 4 + gathered))
    assert fsdp.optimizer == pytest.approx(8 * total / 4)
    assert fsdp.activations == ddp.activations and fsdp.teacher == ddp.teacher
    # activations grow with the tokens and the kept layers; the logits with the speech positions (to a chunk)
    more = estimate_step_memory(teacher, 3, "ddp", 4, tokens=200, speech_tokens=60)
    deeper = estimate_step_memory(teacher, 5, "ddp", 4, tokens=100, speech_tokens=60)
    assert more.activations > ddp.activations and deeper.activations > ddp.activations
    assert estimate_step_memory(teacher, 3, "ddp", 4, 100, 120).logits == 2 * ddp.logits
    without = estimate_step_memory(teacher, 3, "ddp", 4, 100, 60, latent=False)
    assert without.activations == ddp.activations - 100 * 32 * 4 * 7  # the teacher's 7 hidden states (H=32)
    assert ddp.total == sum(vars(ddp).values())


def test_a_trial_too_big_for_its_devices_is_refused_with_what_would_fit():
    teacher = tiny_llama(6)
    ddp_cfg = load_config("configs/mini.yaml", [])
    est = estimate_step_memory(teacher, 3, "ddp", 2, tokens=100, speech_tokens=60)
    check_trial_memory(ddp_cfg, est, est.total)  # fits exactly: nothing said
    with pytest.raises(ConfigError, match=r"train\.strategy=fsdp.*distill\.batch_size \(now"):
        check_trial_memory(ddp_cfg, est, est.total - 1)
    fsdp_cfg = load_config("configs/mini.yaml", ["train.strategy=fsdp"])
    with pytest.raises(ConfigError, match=r"more train\.num_workers \(now 2") as e:
        check_trial_memory(fsdp_cfg, est, est.total // 2)
    assert "GiB per worker" in str(e.value) and "strategy=fsdp (" not in str(e.value)


def test_the_sweep_estimates_from_the_config_before_any_stage(tiny_cfg, tmp_path):
    """Before stage 1: the largest student of the space on the budget's longest pair, for a mini
    teacher not trained yet (its shape on the meta device: nothing trained, nothing written)."""
    from transformers import LlamaForCausalLM

    from orchestrator.builders import build_world
    from orchestrator.distill.budget import plan_budget
    from orchestrator.mini.teacher import expected_train_tokens, teacher_model_config
    from orchestrator.sweep.runner import trial_memory

    cfg = tiny_cfg.model_copy(deep=True)
    cfg.prune.ratio, cfg.distill.batch_size, cfg.train.num_workers = [0.25, 0.5], 4, 2
    cfg.distill.data_fraction = 0.5
    world = build_world(cfg)
    budget = plan_budget(cfg, world, expected_train_tokens(cfg, world))
    used = [world.family.training_ids(*world.train_pairs[i]) for i in range(budget.pairs)]
    assert budget.longest == max(len(ids) for ids, _ in used)
    assert budget.most_speech == max(sum(x != -100 for x in labels) for _, labels in used)
    est = trial_memory(cfg)
    teacher = LlamaForCausalLM(teacher_model_config(cfg, world))
    # 4 layers, ratios 0.25 and 0.5: the largest student keeps 3; micro-batch 4 / 2 workers = 2 rows
    expect = estimate_step_memory(teacher, 3, "ddp", 2, 2 * budget.longest, 2 * budget.most_speech)
    assert vars(est) == vars(expect)
    assert not any((tmp_path / "cache").rglob("*.safetensors"))  # no teacher was trained for it
