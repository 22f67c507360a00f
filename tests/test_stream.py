"""Training pairs streamed by Ray Data (a private Ray started here): every rank's batches equal
the one-process engine's, in order, with the on-policy texts, and a resumed stream skips what
was trained."""

import pytest
import torch

from orchestrator.builders import build_world
from orchestrator.distill.budget import DataBudget
from orchestrator.distill.data import batches
from orchestrator.distributed.cluster import ray_cluster

pytestmark = pytest.mark.slow(minutes=1)


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_each_rank_streams_the_batches_the_engine_reads_in_memory(tiny_cfg):
    from orchestrator.distributed.stream import dataset_name, pairs_datasets, streamed_batches

    cfg = tiny_cfg.model_copy(deep=True)
    cfg.distill.batch_size, cfg.distill.epochs, cfg.distill.seed = 4, 3, 11
    world = build_world(cfg)
    n_pairs, n_texts = 16, 5
    budget = DataBudget(0, n_pairs, 0, cfg.distill.epochs, 0.0, n_texts)
    pairs = [world.train_pairs[i] for i in range(n_pairs)]
    texts = [world.train_pairs[i][1].text for i in range(n_pairs, n_pairs + n_texts)]
    with ray_cluster(None, num_cpus=2, log_to_driver=False):
        datasets = pairs_datasets(cfg, budget, world_size=2, chunk_batches=5)  # 12 batches a rank: 3 blocks
        for rank in (0, 1):
            expect = list(batches(world.family, pairs, 2, cfg.distill.epochs, 11, rank, 2, texts))
            got = list(streamed_batches(datasets[dataset_name(rank)].iterator(), world.family, 2))
            assert len(got) == len(expect) == n_pairs // 4 * cfg.distill.epochs
            assert all(same(g, e) for g, e in zip(got, expect)), rank
            assert "text_input_ids" in got[0]  # the on-policy steps' new texts came along
            resumed = list(streamed_batches(datasets[dataset_name(rank)].iterator(), world.family, 2, skip=5))
            assert len(resumed) == len(expect) - 5 and all(same(g, e) for g, e in zip(resumed, expect[5:]))
        first0 = next(batches(world.family, pairs, 2, cfg.distill.epochs, 11, 0, 2, texts))
        assert not torch.equal(got[0]["index"], first0["index"])  # the ranks' pairs differ
