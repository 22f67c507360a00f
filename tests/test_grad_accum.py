"""Gradient accumulation that is exact whatever the micro-batch sizes (per-token normalisation over
every micro-batch of every rank, DDP all-reducing once per step), and checkpoints that resume the
random number streams.

Gradients are read from the optimizer (`GradRecorder`, plain SGD that keeps the gradients it
applied) and compared with gradients computed by hand from the per-token mean losses of
`orchestrator.distill.losses` on the union of the micro-batches.
"""

import copy
import datetime
import random

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from conftest import free_port, tiny_llama
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks
from torch.nn.parallel import DistributedDataParallel

from orchestrator.distill import losses
from orchestrator.distill.data import student_rollouts
from orchestrator.distill.loop import LossSpec, TrainState, load_checkpoint, save_checkpoint, train_step
from orchestrator.files import StateError

SPEECH = torch.arange(40, 97)
WIDTH = 16
TARGETS = (0, 1)  # student layer i matched to teacher layer i (both have 2 layers)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and intra-op threads on busy cores spin (decoding: 20x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class GradRecorder(torch.optim.SGD):
    """Plain SGD that keeps the gradients of its last step (after DDP's all-reduce and clipping)."""

    def step(self, closure=None):
        self.grads = [
            torch.zeros_like(p) if p.grad is None else p.grad.detach().clone()
            for g in self.param_groups
            for p in g["params"]
        ]
        return super().step(closure)


def sgd_state(model, lr: float = 0.0) -> TrainState:
    opt = GradRecorder([p for p in model.parameters() if p.requires_grad], lr=lr)
    return TrainState(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0), None, None)


def make_batch(seed: int, rows: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Rows of (real tokens, first speech position): text before it, speech after, padding beyond."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (len(rows), WIDTH), generator=g)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for r, (n, speech_from) in enumerate(rows):
        mask[r, :n] = 1
        ids[r, n:] = 0
        labels[r, speech_from:n] = ids[r, speech_from:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "prompt_len": torch.tensor([6] * len(rows))}


def cat(batches):
    return {k: torch.cat([b[k] for b in batches]) for k in batches[0]}


def pad_to(batch, width):
    extra = width - batch["input_ids"].shape[1]
    fill = {"input_ids": 0, "attention_mask": 0, "labels": -100}
    return {k: torch.nn.functional.pad(v, (0, extra), value=fill[k]) if k in fill else v for k, v in batch.items()}


# deliberately unequal: few speech tokens and much padding, many speech tokens, a little of each
FEW = make_batch(10, [(9, 7), (12, 10)])  # 4 speech positions, 21 real tokens
MANY = make_batch(11, [(16, 2), (16, 3)])  # 27 speech positions, 32 real tokens
SOME = make_batch(12, [(14, 8), (5, 3)])  # 8 speech positions, 19 real tokens
NONE = make_batch(13, [(10, 10), (16, 16)])  # no speech position, 26 real tokens

WEIGHTS = {
    "ce": {"ce": 1.0},
    "kl": {"kl": 1.0},
    "ce+kl": {"ce": 0.5, "kl": 1.0},
    "per-position": {"latent": 1.0, "attention": 0.5, "embedding": 0.3},  # means over real positions
}


def models(attention: bool = False):
    student, teacher = tiny_llama(2, seed=1), tiny_llama(2, seed=2)
    student.train()
    for p in teacher.parameters():
        p.requires_grad_(False)
    if attention:  # attention maps come from the eager implementation only
        student.set_attn_implementation("eager")
        teacher.set_attn_implementation("eager")
    return student, teacher


def spec_of(weights, **kw) -> LossSpec:
    return LossSpec(weights, 2.0, "mse", SPEECH, TARGETS, **kw)


def mean_terms(student, teacher, batch, weights) -> dict[str, torch.Tensor]:
    """The per-token mean of each term on `batch`, by hand from the losses module."""
    kw = dict(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    kw.update(output_hidden_states=True, output_attentions="attention" in weights)
    s = student(**kw)
    with torch.no_grad():
        t = teacher(**kw)
    labels, mask = batch["labels"], batch["attention_mask"]
    at = labels[:, 1:] != -100  # positions whose next label is speech
    every = {
        "ce": lambda: F.cross_entropy(s.logits[:, :-1][at], labels[:, 1:][at]),  # over the full vocabulary
        "kl": lambda: losses.speech_kl(s.logits[:, :-1][at][:, SPEECH], t.logits[:, :-1][at][:, SPEECH], 2.0),
        "latent": lambda: losses.latent_loss(s.hidden_states[1:], t.hidden_states[1:], TARGETS, mask),
        "attention": lambda: losses.attention_loss(s.attentions, t.attentions, TARGETS, mask),
        "embedding": lambda: losses.embedding_loss(s.hidden_states[0], t.hidden_states[0], mask),
    }
    return {k: every[k]() for k in weights}


def hand_grads(student, teacher, batches, weights, per_micro_mean: bool = False):
    """Gradient of the per-token mean loss over the union of `batches` (or, `per_micro_mean`,
    of the mean of per-micro-batch means: what accumulation used to compute)."""
    model = copy.deepcopy(student)
    groups = [[b] for b in batches] if per_micro_mean else [batches]
    for group in groups:
        terms = mean_terms(model, teacher, cat(group), weights)
        loss = sum(weights[k] * v for k, v in terms.items())
        (loss / len(groups)).backward()
    return [p.grad.clone() for p in model.parameters()], {k: float(v.detach()) for k, v in terms.items()}


def step_grads(student, teacher, micro, spec):
    state = sgd_state(student)
    metrics = train_step(state, micro, spec, teacher, clip=1e9)
    return state.optimizer.grads, metrics, state


def assert_grads_close(a, b, rtol=2e-4, atol=1e-7):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol)


def relative_gap(a, b) -> float:
    flat_a, flat_b = torch.cat([x.flatten() for x in a]), torch.cat([x.flatten() for x in b])
    return float((flat_a - flat_b).norm() / flat_b.norm())


@pytest.mark.parametrize("name", list(WEIGHTS))
def test_accumulated_gradient_is_the_per_token_mean_over_all_micro_batches(name):
    weights = WEIGHTS[name]
    student, teacher = models(attention="attention" in weights)
    micro = [FEW, MANY]
    got, metrics, state = step_grads(student, teacher, micro, spec_of(weights))
    want, union_terms = hand_grads(student, teacher, micro, weights)
    assert_grads_close(got, want)
    # the old accumulation (mean of the per-micro-batch means) differs on this data: the test can fail
    old, _ = hand_grads(student, teacher, micro, weights, per_micro_mean=True)
    assert relative_gap(old, want) > 0.05
    # the reported terms are per-token means over the step; tokens count the real positions
    for k, v in union_terms.items():
        assert metrics[k] == pytest.approx(v, rel=1e-5)
    assert metrics["loss"] == pytest.approx(sum(weights[k] * v for k, v in union_terms.items()), rel=1e-5)
    assert state.tokens == int(FEW["attention_mask"].sum() + MANY["attention_mask"].sum())


def test_a_micro_batch_without_speech_tokens_adds_nothing_to_the_speech_terms():
    weights = {"ce": 0.5, "kl": 1.0, "latent": 0.2}
    student, teacher = models()
    micro = [SOME, NONE, FEW]
    got, metrics, _ = step_grads(student, teacher, micro, spec_of(weights))
    want, union_terms = hand_grads(student, teacher, micro, weights)
    assert_grads_close(got, want)
    assert all(np.isfinite(v) for v in metrics.values())
    assert metrics["kl"] == pytest.approx(union_terms["kl"], rel=1e-5)


def test_adaptive_weights_use_one_divisor_per_step():
    """Each term is divided by one running scale for the whole step (at the first step: the first
    micro-batch's mean), and the scale then takes the step's per-token mean."""
    weights = {"ce": 0.5, "kl": 1.0}
    student, teacher = models()
    state = sgd_state(student)
    state.adaptive = losses.AdaptiveWeights()
    train_step(state, [FEW, MANY], spec_of(weights), teacher, clip=1e9)
    first = {k: float(v.detach()) for k, v in mean_terms(copy.deepcopy(student), teacher, FEW, weights).items()}
    want, union_terms = hand_grads(student, teacher, [FEW, MANY], {k: w / first[k] for k, w in weights.items()})
    assert_grads_close(state.optimizer.grads, want)
    assert state.adaptive.scale == pytest.approx(union_terms)


def test_on_policy_steps_count_the_tokens_of_the_rollouts():
    """The student's continuations (of unequal lengths) are drawn for every micro-batch first, then
    normalised together: the gradient is the per-token mean over all the rollouts."""
    weights = {"kl": 1.0}
    student, teacher = models()
    spec = spec_of(weights, on_policy=1.0, pad_id=0, end_id=2, stop_ids=(2,))
    micro = [FEW, MANY]
    torch.manual_seed(7)
    rolled = [student_rollouts(student, b, 0, 2, 1.0, SPEECH, (2,)) for b in micro]
    counts = [int(losses.speech_positions(r["labels"]).sum()) for r in rolled]
    width = max(r["input_ids"].shape[1] for r in rolled)
    want, union_terms = hand_grads(student, teacher, [pad_to(r, width) for r in rolled], weights)
    torch.manual_seed(7)
    got, metrics, _ = step_grads(student, teacher, micro, spec)
    assert metrics["on_policy"] == 1.0 and counts[0] != counts[1]
    assert_grads_close(got, want)
    assert metrics["kl"] == pytest.approx(union_terms["kl"], rel=1e-5)


# --- DDP: two CPU processes (gloo), unequal tokens per rank, two micro-batches each ----------------

RANK_BATCHES = [[FEW, MANY], [SOME, make_batch(14, [(7, 5), (15, 4)])]]
DDP_WEIGHTS = {"ce": 0.5, "kl": 1.0, "latent": 0.2}


def _counting_hook(calls, bucket):
    calls.append(bucket.index())
    return default_hooks.allreduce_hook(None, bucket)


def _ddp_worker(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        student, teacher = models()
        ddp = DistributedDataParallel(student)
        calls: list[int] = []
        ddp.register_comm_hook(calls, _counting_hook)
        # how many all-reduces one synchronised backward takes (the number of buckets)
        b = RANK_BATCHES[rank][0]
        ddp(input_ids=b["input_ids"], attention_mask=b["attention_mask"], use_cache=False).logits.mean().backward()
        per_backward = len(calls)
        ddp.zero_grad(set_to_none=True)
        calls.clear()
        state = sgd_state(ddp, lr=1.0)
        metrics = train_step(state, RANK_BATCHES[rank], spec_of(DDP_WEIGHTS), teacher, clip=1e9)
        torch.save(
            {
                "calls": len(calls),
                "per_backward": per_backward,
                "grads": state.optimizer.grads,
                "weights": student.state_dict(),
                "metrics": metrics,
                "tokens": state.tokens,
            },
            f"{out}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_step_equals_one_process_step_on_the_union(tmp_path):
    mp.spawn(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]

    student, teacher = models()
    union = [b for bs in RANK_BATCHES for b in bs]
    state = sgd_state(student, lr=1.0)
    train_step(state, [cat(union)], spec_of(DDP_WEIGHTS), teacher, clip=1e9)
    want_grads, _ = hand_grads(models()[0], teacher, union, DDP_WEIGHTS)

    for r in ranks:
        assert_grads_close(r["grads"], want_grads)
        for k, v in student.state_dict().items():
            torch.testing.assert_close(r["weights"][k], v, rtol=1e-5, atol=1e-6, msg=k)
        # one synchronised backward per step: the first micro-batch ran under no_sync
        assert r["per_backward"] >= 1 and r["calls"] == r["per_backward"]
    # each rank reports its own per-token means and real tokens
    for r, bs in zip(ranks, RANK_BATCHES):
        _, own = hand_grads(models()[0], teacher, bs, DDP_WEIGHTS)
        assert r["metrics"]["kl"] == pytest.approx(own["kl"], rel=1e-5)
        assert r["tokens"] == sum(int(b["attention_mask"].sum()) for b in bs)


# --- checkpoints: random number streams, fingerprints, damaged files ------------------------------


def on_policy_run():
    student, teacher = models()
    state = sgd_state(student, lr=0.5)
    spec = spec_of({"kl": 1.0}, on_policy=1.0, pad_id=0, end_id=2, stop_ids=(2,))
    return state, spec, teacher


def steps(state, spec, teacher, n):
    for _ in range(n):
        train_step(state, [FEW, MANY], spec, teacher)


def test_a_resumed_run_draws_the_same_random_numbers(tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    straight, spec, teacher = on_policy_run()
    torch.manual_seed(0)
    steps(straight, spec, teacher, 4)

    first, spec, teacher = on_policy_run()
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    steps(first, spec, teacher, 2)
    save_checkpoint(first, ckpt)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind
    after_save = (torch.rand(3), np.random.rand(3), random.random())

    restarted, spec, teacher = on_policy_run()
    torch.manual_seed(0)  # what a fresh process does at start: the checkpoint overrides it
    load_checkpoint(restarted, ckpt)
    assert restarted.step == 2
    steps(restarted, spec, teacher, 2)
    for k, v in straight.model.state_dict().items():
        torch.testing.assert_close(restarted.model.state_dict()[k], v, rtol=0, atol=0, msg=k)

    # every generator is restored: torch, numpy's global, python's random
    probe, _, _ = on_policy_run()
    load_checkpoint(probe, ckpt)
    torch.testing.assert_close(torch.rand(3), after_save[0])
    np.testing.assert_array_equal(np.random.rand(3), after_save[1])
    assert random.random() == after_save[2]

    # seeding after the load replaces the restored stream: other rollouts, other weights
    reseeded, spec, teacher = on_policy_run()
    load_checkpoint(reseeded, ckpt)
    torch.manual_seed(0)
    steps(reseeded, spec, teacher, 2)
    assert any(not torch.equal(reseeded.model.state_dict()[k], v) for k, v in straight.model.state_dict().items())


def test_checkpoints_without_random_states_still_load(tmp_path):
    state, _, _ = on_policy_run()
    state.step = 3
    save_checkpoint(state, tmp_path / "new.pt")
    blob = torch.load(tmp_path / "new.pt", weights_only=False)
    del blob["rng"], blob["fingerprint"]  # what an older version wrote
    torch.save(blob, tmp_path / "old.pt")
    fresh, _, _ = on_policy_run()
    torch.manual_seed(5)
    load_checkpoint(fresh, tmp_path / "old.pt")
    drawn = torch.rand(3)
    torch.manual_seed(5)
    torch.testing.assert_close(drawn, torch.rand(3))  # the generator was left alone
    assert fresh.step == 3


def test_damaged_or_foreign_checkpoints_and_other_settings_are_refused(tmp_path):
    state, _, _ = on_policy_run()
    ckpt = tmp_path / "ckpt.pt"
    save_checkpoint(state, ckpt, fingerprint={"lr": 1e-3, "drop": (2, 3)})
    load_checkpoint(on_policy_run()[0], ckpt, fingerprint={"lr": 1e-3, "drop": [2, 3]})  # the same settings
    load_checkpoint(on_policy_run()[0], ckpt)  # no fingerprint asked for: not checked

    with pytest.raises(StateError, match=r"ckpt\.pt.*\(differing: lr\).*delete it"):
        load_checkpoint(on_policy_run()[0], ckpt, fingerprint={"lr": 2e-3, "drop": [2, 3]})
    save_checkpoint(state, tmp_path / "bare.pt")
    with pytest.raises(StateError, match="bare.pt.*no fingerprint"):
        load_checkpoint(on_policy_run()[0], tmp_path / "bare.pt", fingerprint={"lr": 1e-3})

    data = ckpt.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(StateError, match="cut.pt is damaged.*Delete it"):
        load_checkpoint(on_policy_run()[0], tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint\n")
    with pytest.raises(StateError, match="text.pt"):
        load_checkpoint(on_policy_run()[0], tmp_path / "text.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(StateError, match="other.pt is not a distillation checkpoint"):
        load_checkpoint(on_policy_run()[0], tmp_path / "other.pt")
