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
from collections.abc import Iterable, Sequence
from pathlib import Path

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


def read_shards(folder: str | Path) -> list[Sample]:
    index = read_index(folder)
    if index is None:
        raise ConfigError(
            f"world.real.shards: {folder} holds no finished shards ({INDEX} missing); make them with "
            "`prun-tts shards --config CFG` from world.real.train_manifest"
        )
    samples = []
    for i in range(index["shards"]):
        for line in (Path(folder) / shard_name(i)).read_text().splitlines():
            r = json.loads(line)
            if r["codes"]:
                samples.append(Sample(r["text"], r["speaker"], tuple(r["codes"])))
    return samples


def speaker_pairs(samples: Sequence[Sample]) -> list[tuple[Sample, Sample]]:
    """(prompt, target) for every utterance whose speaker has another one; shuffle the
    manifest if it is sorted by speaker, or a small budget sees few voices."""
    by_speaker: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        by_speaker[s.speaker].append(i)
    prompt_of: dict[int, int] = {}
    for same in by_speaker.values():
        if len(same) > 1:
            prompt_of.update({i: same[(k + 1) % len(same)] for k, i in enumerate(same)})
    # in the manifest's order, so a budget that takes the first pairs takes every speaker
    return [(samples[prompt_of[i]], samples[i]) for i in range(len(samples)) if i in prompt_of]


class ShardPairs(Sequence[tuple[Sample, Sample]]):
    """`speaker_pairs` of a shard folder, read on first use: every Ray worker builds the world,
    and those that only score or evaluate never read the shards. No finished shards: no pairs."""

    def __init__(self, folder: str | Path):
        self.folder = folder
        self._pairs: list[tuple[Sample, Sample]] | None = None

    def _all(self) -> list[tuple[Sample, Sample]]:
        if self._pairs is None:
            self._pairs = speaker_pairs(read_shards(self.folder)) if read_index(self.folder) else []
        return self._pairs

    def __len__(self) -> int:
        return len(self._all())

    def __getitem__(self, i):
        return self._all()[i]
