"""Speech-token shards: the training manifest with each recording replaced by its codes.

A shard folder holds `shard-NNNNN.jsonl` files (`{"id", "text", "speaker", "codes"}` a
line) and `index.json` (the codec and manifest they were made from). Shards are made
once (`prun-tts shards`, with Ray Data on a cluster) and read by every trial.

Training pairs follow zero-shot synthesis: the target utterance is prompted by another
utterance of the same speaker (the next one in the manifest's order, wrapping around).
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from orchestrator.config import ConfigError
from orchestrator.world import Sample

INDEX = "index.json"


def manifest_digest(rows: Sequence[dict], codec: str) -> str:
    h = hashlib.sha256(codec.encode())
    for r in rows:
        h.update(f"{r['id']}|{r['audio']}|{r['text']}|{r['speaker']}\n".encode())
    return h.hexdigest()[:16]


def shard_name(i: int) -> str:
    return f"shard-{i:05d}.jsonl"


def write_shard(path: Path, rows: Iterable[dict]) -> None:
    """One shard, written to a temporary name first so a stopped run leaves no half shard."""
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as f:
        for r in rows:
            f.write(
                json.dumps(
                    {"id": r["id"], "text": r["text"], "speaker": r["speaker"], "codes": [int(c) for c in r["codes"]]}
                )
                + "\n"
            )
    tmp.replace(path)


def read_index(folder: str | Path) -> dict | None:
    p = Path(folder) / INDEX
    return json.loads(p.read_text()) if p.is_file() else None


def write_index(folder: str | Path, digest: str, codec: str, n_shards: int, n_rows: int) -> None:
    (Path(folder) / INDEX).write_text(
        json.dumps({"digest": digest, "codec": codec, "shards": n_shards, "utterances": n_rows}, indent=2)
    )


def _shard_lines(folder: str | Path) -> Iterator[tuple[int, int, dict]]:
    """(shard number, byte offset, row) of every utterance with speech, in the manifest's order."""
    index = read_index(folder)
    if index is None:
        raise ConfigError(
            f"world.real.shards: {folder} holds no finished shards ({INDEX} missing); make them with "
            "`prun-tts shards --config CFG` from world.real.train_manifest"
        )
    for i in range(index["shards"]):
        with (Path(folder) / shard_name(i)).open("rb") as f:
            offset = 0
            for line in f:
                r = json.loads(line)
                if r["codes"]:
                    yield i, offset, r
                offset += len(line)


def read_shards(folder: str | Path) -> list[Sample]:
    return [Sample(r["text"], r["speaker"], tuple(r["codes"])) for _, _, r in _shard_lines(folder)]


def speaker_pairs(samples: Sequence[Sample]) -> list[tuple[Sample, Sample]]:
    """(prompt, target) for every utterance whose speaker has another one; shuffle the
    manifest if it is sorted by speaker, or a small budget sees few voices."""
    return [(samples[p], samples[t]) for p, t in _pair_indices([s.speaker for s in samples])]


def _pair_indices(speakers: Sequence[str]) -> list[tuple[int, int]]:
    """(prompt, target) positions: each utterance prompted by the next one of its speaker
    (wrapping around), in the manifest's order, so a budget that takes the first pairs takes
    every speaker."""
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(speakers):
        by_speaker[s].append(i)
    prompt_of: dict[int, int] = {}
    for same in by_speaker.values():
        if len(same) > 1:
            prompt_of.update({i: same[(k + 1) % len(same)] for k, i in enumerate(same)})
    return [(prompt_of[i], i) for i in range(len(speakers)) if i in prompt_of]


class ShardPairs(Sequence[tuple[Sample, Sample]]):
    """`speaker_pairs` of a shard folder, read pair by pair: one pass on first use keeps where
    each utterance starts (shard, byte offset: no codes), and a pair is read from its two lines
    when asked for. Memory does not grow with the shards' speech, only by two integers an
    utterance. Every Ray worker builds the world, and those that only score or evaluate never
    read the shards. No finished shards: no pairs."""

    def __init__(self, folder: str | Path):
        self.folder = folder
        self._where: np.ndarray | None = None  # (shard, offset) of each utterance
        self._pairs: np.ndarray | None = None  # (prompt, target) utterance numbers of each pair

    def _index(self) -> np.ndarray:
        if self._pairs is None:
            where, speakers = [], []
            if read_index(self.folder):
                for shard, offset, r in _shard_lines(self.folder):
                    where.append((shard, offset))
                    speakers.append(r["speaker"])
            self._where = np.array(where, dtype=np.int64).reshape(-1, 2)
            self._pairs = np.array(_pair_indices(speakers), dtype=np.int64).reshape(-1, 2)
        return self._pairs

    def _sample(self, utterance: int) -> Sample:
        shard, offset = self._where[utterance]
        with (Path(self.folder) / shard_name(int(shard))).open("rb") as f:
            f.seek(int(offset))
            r = json.loads(f.readline())
        return Sample(r["text"], r["speaker"], tuple(r["codes"]))

    def __len__(self) -> int:
        return len(self._index())

    def __getitem__(self, i):
        pairs = self._index()
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(pairs)))]
        prompt, target = pairs[i]  # IndexError past the end, as a list
        return self._sample(int(prompt)), self._sample(int(target))
