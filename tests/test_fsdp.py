"""FSDP2 (`sharding.shard_student`) against DDP on a tiny LLaSA (LLaSA's vocabulary and speech
ids, tied head, grouped-query attention), two CPU processes over gloo: the same losses, gradient
norms and updated weights step for step (AdamW, two micro-batches a step, the weight average on,
an on-policy step whose rollouts differ in length between the workers); and a sharded checkpoint,
written into one folder per worker as Ray Train workers do, resumed on another number of workers
to the student of an uninterrupted run.
"""

import datetime
import shutil

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port
from tiny_llasa import VOCAB
from torch.nn.parallel import DistributedDataParallel
from transformers import LlamaConfig, LlamaForCausalLM

from orchestrator.distill.engine import DistillRun, finished_student
from orchestrator.distill.loop import (
    LossSpec,
    load_sharded_checkpoint,
    make_state,
    save_sharded_checkpoint,
    train_step,
)
from orchestrator.distill.sharding import is_sharded, shard_student
from orchestrator.files import StateError
from orchestrator.prune.surgery import drop_layers

SPEECH_FROM, END = 128264, 128261  # LLaSA's first speech id and SPEECH_GENERATION_END
SPEECH = torch.arange(SPEECH_FROM, SPEECH_FROM + 65536)
WIDTH = 14


def teacher_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # large speech rows: rollouts speak rather than stop at once
        model.model.embed_tokens.weight[SPEECH_FROM:].normal_(0, 1.0)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def batch(seed: int, rows: list[tuple[int, int]]) -> dict[str, torch.Tensor]:
    """Rows of (real tokens, first speech position): text ids before it, speech ids after."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(SPEECH_FROM, SPEECH_FROM + 200, (len(rows), WIDTH), generator=g)
    mask, labels = torch.zeros_like(ids), torch.full_like(ids, -100)
    for r, (n, speech_from) in enumerate(rows):
        ids[r, :speech_from] = torch.randint(1000, 2000, (speech_from,), generator=g)
        mask[r, :n] = 1
        ids[r, n:] = 0
        labels[r, speech_from:n] = ids[r, speech_from:n]
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "prompt_len": torch.tensor([4] * len(rows))}


# two micro-batches a step per worker, unequal token counts
RANK_BATCHES = [
    [batch(1, [(9, 5), (14, 4)]), batch(2, [(12, 6), (7, 4)])],
    [batch(3, [(14, 4), (10, 8)]), batch(4, [(6, 5), (13, 4)])],
]
WEIGHTS = {"ce": 0.5, "kl": 1.0, "latent": 0.2}
DROP = (1, 2)


def spec(on_policy: float) -> LossSpec:
    return LossSpec(WEIGHTS, 2.0, "mse", SPEECH, (0, 3), on_policy, 1.0, 0, END, stop_ids=(END,))


def run_of(strategy: str, teacher) -> DistillRun:
    """A student (teacher minus DROP) under `strategy`, with AdamW and the weight average."""

    def cut():
        student = drop_layers(teacher, drop=DROP).float()
        for p in student.parameters():
            p.requires_grad_(True)
        return student

    model = cut()
    if strategy == "ddp":
        model = DistributedDataParallel(model)
    elif strategy == "fsdp":
        model = shard_student(model, torch.device("cpu"))
    state = make_state(model, lr=1e-2, warmup=1, total_steps=4, ema=0.5)
    return DistillRun(state, spec(0.5), None, 4, cut=cut)


def _init(rank: int, world_size: int, port: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
    )


def _steps(run: DistillRun, teacher, rank: int, steps: range, world_size: int = 2) -> list[dict]:
    out = []
    for step in steps:
        # the same draws on both strategies (rollouts): a seed per step and rank
        torch.manual_seed(1000 * step + rank)
        micro = RANK_BATCHES[rank] if world_size == 2 else RANK_BATCHES[0] + RANK_BATCHES[1]
        out.append(train_step(run.state, micro, run.spec, teacher, clip=0.5))
    return out


def _compare_worker(rank: int, port: int, out: str) -> None:
    _init(rank, 2, port)
    try:
        teacher = teacher_model()
        results = {}
        for strategy in ("ddp", "fsdp"):
            run = run_of(strategy, teacher)
            metrics = _steps(run, teacher, rank, range(2))  # step 1 is on-policy (share 0.5)
            student = finished_student(run)
            results[strategy] = {
                "metrics": metrics,
                "weights": {k: v.clone() for k, v in student.state_dict().items()},
                "sharded": is_sharded(run.state.model),
                "plain": type(student).__name__,
            }
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_fsdp_steps_equal_ddp_steps(tmp_path):
    mp.spawn(_compare_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    for r in ranks:
        ddp, fsdp = r["ddp"], r["fsdp"]
        assert fsdp["sharded"] and not ddp["sharded"] and fsdp["plain"] == "LlamaForCausalLM"
        assert [m["on_policy"] for m in fsdp["metrics"]] == [0.0, 1.0]
        for a, b in zip(ddp["metrics"], fsdp["metrics"]):
            assert set(a) == set(b)
            for k in a:
                assert b[k] == pytest.approx(a[k], rel=1e-4, abs=1e-6), k
        for k, v in ddp["weights"].items():
            torch.testing.assert_close(fsdp["weights"][k], v, rtol=1e-4, atol=1e-6, msg=k)
    # the step moved the weights, and both workers hold the same student
    teacher_weights = drop_layers(teacher_model(), drop=DROP).state_dict()
    assert any(not torch.allclose(ranks[0]["fsdp"]["weights"][k], v) for k, v in teacher_weights.items())
    for k, v in ranks[0]["fsdp"]["weights"].items():
        torch.testing.assert_close(ranks[1]["fsdp"]["weights"][k], v, rtol=0, atol=0)
    # the rollouts were the workers' own (unequal lengths), yet nothing waited on anything
    assert ranks[0]["fsdp"]["metrics"][1]["kl"] != ranks[1]["fsdp"]["metrics"][1]["kl"]


def _resume_worker(rank: int, world_size: int, port: int, out: str, phase: str) -> None:
    _init(rank, world_size, port)
    try:
        teacher = teacher_model()
        run = run_of("fsdp", teacher)
        run.spec = spec(0.0)  # off-policy: a step on one worker is then the step of two on their union
        if phase == "straight":
            _steps(run, teacher, rank, range(2), world_size)
        elif phase == "first":
            _steps(run, teacher, rank, range(1), world_size)
            # each worker its own folder (Ray Train merges them into the checkpoint)
            save_sharded_checkpoint(run.state, f"{out}/worker{rank}", fingerprint={"drop": list(DROP)})
        else:
            with pytest.raises(StateError, match="differing: drop"):
                load_sharded_checkpoint(run.state, f"{out}/merged", fingerprint={"drop": [1]})
            load_sharded_checkpoint(run.state, f"{out}/merged", fingerprint={"drop": list(DROP)})
            assert run.state.step == 1
            _steps(run, teacher, rank, range(1, 2), world_size)
        student = finished_student(run)
        torch.save({k: v.clone() for k, v in student.state_dict().items()}, f"{out}/{phase}{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_a_sharded_checkpoint_resumes_on_another_number_of_workers(tmp_path):
    out = str(tmp_path)
    mp.spawn(_resume_worker, args=(2, free_port(), out, "straight"), nprocs=2, join=True)
    mp.spawn(_resume_worker, args=(2, free_port(), out, "first"), nprocs=2, join=True)
    assert not (tmp_path / "worker1" / "train_state.pt").exists()  # rank 0 writes what is not sharded
    merged = tmp_path / "merged"
    for w in ("worker0", "worker1"):
        shutil.copytree(tmp_path / w, merged, dirs_exist_ok=True)
    mp.spawn(_resume_worker, args=(1, free_port(), out, "resumed"), nprocs=1, join=True)

    straight = torch.load(tmp_path / "straight0.pt")
    resumed = torch.load(tmp_path / "resumed0.pt")
    first = torch.load(tmp_path / "first0.pt")
    assert any(not torch.allclose(first[k], v) for k, v in straight.items())  # step 2 changed the student
    for k, v in straight.items():
        torch.testing.assert_close(resumed[k], v, rtol=1e-4, atol=1e-6, msg=k)
