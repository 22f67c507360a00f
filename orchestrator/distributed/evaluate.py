"""An evaluation list sharded over Ray tasks (one GPU each with `train.use_gpu`).

Task i scores items i, i+n, i+2n, ... into its own results file, so a stopped run
started again skips what every shard already scored; the driver merges the rows.
"""

from __future__ import annotations

from pathlib import Path

import ray

from orchestrator.anatomy import count_parameters, decoder_layers
from orchestrator.builders import build_world, load_teacher, pick_device
from orchestrator.config import Config
from orchestrator.evaluate.synthesis import Evaluation, evaluate_model, summarize
from orchestrator.world import load_model


@ray.remote
def _evaluate_shard(
    cfg_dict: dict, model_path: str | None, split: str, shard: int, n_shards: int, results: str
) -> tuple[list[dict], int, int]:
    cfg = Config.model_validate(cfg_dict)
    world = build_world(cfg)
    device = pick_device(cfg)
    model = load_model(world, model_path, device) if model_path else load_teacher(cfg, world, device, False)[0]
    every = world.test_items if split == "test" else world.dev_items
    items = [every[i] for i in range(min(cfg.evaluate.n_items, len(every)))[shard::n_shards]]  # encodes only these
    e = evaluate_model(model, world, items, cfg.evaluate, results=results)
    return e.items, len(decoder_layers(model)), count_parameters(model)


def evaluate_sharded(
    cfg, model_path: str | None, split: str, n_shards: int, results_stem: Path, token_rate: float
) -> Evaluation:
    opts = {"num_gpus": 1, "num_cpus": 1} if cfg.train.use_gpu else {"num_cpus": cfg.train.cpus_per_worker}
    refs = [
        _evaluate_shard.options(**opts).remote(
            cfg.model_dump(), model_path, split, i, n_shards, f"{results_stem}.shard{i}of{n_shards}.jsonl"
        )
        for i in range(n_shards)
    ]
    done = ray.get(refs)
    rows = [row for items, _, _ in done for row in items]
    return summarize(sorted(rows, key=lambda r: r["name"]), done[0][1], done[0][2], token_rate)
