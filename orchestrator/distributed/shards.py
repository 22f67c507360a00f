"""Turn the training manifest into speech-token shards once, in parallel with Ray Data:
a fixed pool of codec actors (one GPU each when `train.use_gpu`) encodes the audio,
the driver writes the shards in the manifest's order as the batches stream back.

A stopped run resumes: finished shards are kept and only the rest is encoded. The
shard folder must be one every node of the cluster can read.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray
import ray.data

from orchestrator.config import Config, ConfigError
from orchestrator.data.manifest import read_manifest
from orchestrator.data.shards import manifest_digest, read_index, shard_name, write_index, write_shard
from orchestrator.real import check_speech_encoder, speech_encoder
from orchestrator.speech.audio import load_audio


class _Encoder:
    """A Ray Data actor: loads the codec once, then encodes batches of recordings."""

    def __init__(self, cfg_dict: dict, use_gpu: bool):
        self.encoder = speech_encoder(Config.model_validate(cfg_dict), "cuda" if use_gpu else "cpu")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        codes = self.encoder.encode_batch([load_audio(p) for p in batch["audio"]])
        out = {k: batch[k] for k in ("id", "text", "speaker")}
        # an object array of ragged code arrays (the trailing None stops numpy making a 2-D array)
        out["codes"] = np.array([np.asarray(c, dtype=np.int64) for c in codes] + [None], dtype=object)[:-1]
        return out


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    rows: list
    out: Path
    codec: str
    digest: str
    done: bool  # the folder already holds these shards


def plan_shards(cfg: Config) -> ShardPlan:
    """Every check of `build_shards` (manifest lines, shard folder, codec), before Ray starts."""
    r = cfg.world.real
    if not r.train_manifest:
        raise ConfigError("world.real.train_manifest is not set: give the JSONL manifest of the training recordings")
    rows = read_manifest(r.train_manifest)  # every line checked before anything is encoded
    out = Path(r.shards)
    codec = r.codec if cfg.world.name == "llasa" else f"s3:{cfg.world.teacher.path}"
    digest = manifest_digest(rows, f"{codec}|{r.shard_size}")  # a new shard size never mixes with old shards
    index = read_index(out)
    if index and index["digest"] == digest:
        return ShardPlan(rows, out, codec, digest, True)
    if index:  # finished shards of another manifest or codec: never mixed with these
        raise ConfigError(f"world.real.shards: {out} holds shards of another manifest or codec; choose a new folder")
    marker = out / "digest"
    if out.exists() and any(out.iterdir()) and not (marker.is_file() and marker.read_text() == digest):
        raise ConfigError(
            f"world.real.shards: {out} is not empty and not a shard folder of this manifest; choose a new folder"
        )
    check_speech_encoder(cfg)  # a missing codec is named here, not in a Ray actor's traceback
    return ShardPlan(rows, out, codec, digest, False)


def build_shards(cfg: Config, plan: ShardPlan | None = None, log: Callable[[str], None] = print) -> Path:
    """Encode `world.real.train_manifest` into `world.real.shards`; returns the shard folder."""
    r = cfg.world.real
    plan = plan or plan_shards(cfg)
    rows, out, codec, digest = plan.rows, plan.out, plan.codec, plan.digest
    marker = out / "digest"
    if plan.done:
        log(f"shards: {out} already holds these {len(rows)} utterances")
        return out
    out.mkdir(parents=True, exist_ok=True)
    marker.write_text(digest)
    n_shards = math.ceil(len(rows) / r.shard_size)
    done = [i for i in range(n_shards) if (out / shard_name(i)).is_file()]
    first = len(done) if done == list(range(len(done))) else 0  # resume after the finished prefix
    todo = rows[first * r.shard_size :]
    log(
        f"shards: {len(rows)} utterances -> {n_shards} shards in {out} ({first} already done), "
        f"{r.encode_actors} encoder actor(s)"
    )
    if todo:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # shards follow the manifest's order
        ds = ray.data.from_items(todo).map_batches(
            _Encoder,
            batch_size=16,
            fn_constructor_args=(cfg.model_dump(), cfg.train.use_gpu),
            compute=ray.data.ActorPoolStrategy(size=r.encode_actors),
            num_gpus=1 if cfg.train.use_gpu else 0,
            num_cpus=1,
        )
        shard, current = [], first
        for row in ds.iter_rows():
            shard.append(row)
            if len(shard) == r.shard_size:
                write_shard(out / shard_name(current), shard)
                log(f"shards: {current + 1}/{n_shards} written")
                shard, current = [], current + 1
        if shard:
            write_shard(out / shard_name(current), shard)
    write_index(out, digest, codec, n_shards, len(rows))
    marker.unlink()
    log(f"shards: done, {out}")
    return out
