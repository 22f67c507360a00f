"""A trial's training pairs streamed by Ray Data: each Train worker reads its own rank's
batches, in the order the one-process engine takes them (`distill.data.batch_order`), from a
dataset Ray Data tasks fill from the world's pairs (speech-token shards, read pair by pair)
as the worker consumes them. A worker holds the batches in flight, never the data set, and its
memory does not grow with the shards or the budget.

One dataset per rank (`pairs0`, `pairs1`, ...), not one split by Ray Data: `streaming_split`
hands blocks to whichever worker asks first, and the batches must be the same ones, in the same
order, for a given seed (a resumed run trains on what an uninterrupted one would).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator

import numpy as np
import ray.data
import ray.train

from orchestrator.builders import build_world
from orchestrator.config import Config
from orchestrator.distill.budget import DataBudget, extra_texts
from orchestrator.distill.data import batch_order, pairs_batch
from orchestrator.world import Family

CHUNK_BATCHES = 16  # batches a dataset block holds: what a reading task makes at a time


def dataset_name(rank: int) -> str:
    return f"pairs{rank}"


def pairs_datasets(
    cfg: Config, budget: DataBudget, world_size: int, chunk_batches: int = CHUNK_BATCHES
) -> dict[str, ray.data.Dataset]:
    """One lazy dataset per rank, read by Ray Data tasks (`train.data_cpus` shared by the
    ranks): a row per training pair of that rank's batches, every epoch,
    in training order (`index`, `pair`: the pickled (prompt, target), `text`: the new text of
    the on-policy steps or ''). Nothing is read before a worker asks for it."""
    per_rank = cfg.distill.batch_size // world_size
    n_batches = budget.pairs // world_size // per_rank * cfg.distill.epochs  # whole batches, every rank alike
    chunks = [{"first": b, "last": min(b + chunk_batches, n_batches)} for b in range(0, n_batches, chunk_batches)]
    datasets = {}
    for rank in range(world_size):
        ds = ray.data.from_items(chunks).map_batches(
            rank_pairs,
            batch_size=1,  # one chunk of batches a call
            fn_args=(cfg.model_dump(), budget.pairs, budget.extra_texts, rank, world_size),
            concurrency=1,  # one reading task at a time a rank: the blocks stay in order and few
            num_cpus=cfg.train.data_cpus / world_size,  # train.data_cpus is the trial's, over its ranks' readers
        )
        ds.context.execution_options.preserve_order = True  # blocks otherwise arrive as they finish
        datasets[dataset_name(rank)] = ds
    return datasets


def data_config() -> ray.train.DataConfig:
    """Every worker gets every dataset whole (it reads only its own), in order."""
    options = ray.train.DataConfig.default_ingest_options()
    options.preserve_order = True  # Train's ingest options replace the dataset's own
    return ray.train.DataConfig(datasets_to_split=[], execution_options=options)


_READERS: dict = {}  # in a Ray worker process: one rank's (world, texts, batch order), built once


def rank_pairs(chunk: dict[str, np.ndarray], cfg_dict: dict, n_pairs: int, n_texts: int, rank: int, size: int):
    """A Ray Data task: the rows of one chunk of a rank's batches. A task, not an actor: it runs in
    Ray's pooled worker processes (which the stage tasks already loaded), where an actor a rank
    would be one more process of torch and the world per worker."""
    key = (json.dumps(cfg_dict, sort_keys=True, default=str), n_pairs, n_texts, rank, size)
    if key not in _READERS:
        _READERS.clear()  # one rank's reader a process: a worker reused by another trial frees the last
        cfg = Config.model_validate(cfg_dict)
        d = cfg.distill
        world = build_world(cfg)
        texts = extra_texts(world, DataBudget(0, n_pairs, 0, d.epochs, 0.0, n_texts))
        # the rank's order: two integers a pair and epoch
        order = list(batch_order(n_pairs, d.batch_size // size, d.epochs, d.seed, rank, size, n_texts))
        _READERS[key] = world, texts, order
    world, texts, order = _READERS[key]
    rows = [row for b in range(int(chunk["first"][0]), int(chunk["last"][0])) for row in order[b]]
    pairs = [pickle.dumps(world.train_pairs[i]) for i, _ in rows]
    return {
        "index": np.array([i for i, _ in rows], dtype=np.int64),
        "pair": np.array(pairs + [None], dtype=object)[:-1],  # bytes, not a fixed-width numpy string
        "text": np.array([texts[t] if t >= 0 else "" for _, t in rows], dtype=object),
    }


def streamed_batches(shard: ray.data.DataIterator, family: Family, batch_size: int, skip: int = 0) -> Iterator[dict]:
    """This worker's batches from its dataset, as `distill.data.batches` makes them; `skip`:
    batches a resumed run already trained on (read and dropped, never collated)."""
    for n, rows in enumerate(shard.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2)):
        if n < skip:
            continue
        texts = [str(t) for t in rows["text"]]
        pairs = [pickle.loads(p) for p in rows["pair"]]
        yield pairs_batch(family, pairs, rows["index"].tolist(), texts if any(texts) else ())
