"""The mini world's codec, ASR and speaker verifier.

The mini "waveform" is the code sequence itself, so the codec is the identity;
the ASR inverts the speakers' rendering (unit of each code, collapse runs, split
at pauses, nearest lexicon word), so a wrong code becomes a word error exactly as
a mispronounced phone does for a real ASR.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from orchestrator.mini.world import MiniWorld


class MiniCodec:
    token_rate = 50.0  # like X-Codec2: 50 codes per second

    def encode(self, audio: Sequence[int]) -> list[int]:
        return [int(c) for c in audio]

    def decode(self, codes: Sequence[int], prompt: str | None = None) -> np.ndarray:
        return np.asarray(codes, dtype=np.int64)


class MiniASR:
    def __init__(self, world: MiniWorld):
        self.world = world
        self._lexicon = tuple(world.words)

    def transcribe(self, audios: Sequence[Sequence[int]]) -> list[str]:
        return [self._transcribe_one(a) for a in audios]

    def _transcribe_one(self, codes: Sequence[int]) -> str:
        units = [self.world.units[self.world.unit_of(int(c))] for c in codes if 0 <= c < self.world.n_codes]
        collapsed = [u for i, u in enumerate(units) if i == 0 or u != units[i - 1]]
        words = "".join(collapsed).split("|")
        return " ".join(self._nearest(w) for w in words if w)

    @lru_cache(maxsize=100_000)  # noqa: B019 (one ASR per world, kept for the process)
    def _nearest(self, phones: str) -> str:
        return min(self._lexicon, key=lambda w: (edit_distance(w, phones), w))


class MiniSpeakerVerifier:
    """Embedding of a realisation: how it uses timbres and how long it holds units."""

    def __init__(self, world: MiniWorld):
        self.world = world

    def embed(self, codes: Sequence[int]) -> np.ndarray:
        spec = self.world.spec
        codes = [int(c) for c in codes if 0 <= c < self.world.n_codes]
        timbre = np.bincount([self.world.timbre_of(c) for c in codes], minlength=spec.n_timbres).astype(float)
        runs, prev, length = [], None, 0
        for c in codes:
            u = self.world.unit_of(c)
            if u == prev:
                length += 1
            else:
                if prev is not None:
                    runs.append(length)
                prev, length = u, 1
        if prev is not None:
            runs.append(length)
        duration = np.bincount(np.minimum(runs, spec.max_run + 1) - 1 if runs else [], minlength=spec.max_run + 1)
        parts = []
        for h in (timbre, duration.astype(float)):
            p = h / h.sum() if h.sum() else np.zeros_like(h)
            parts.append(p - 1.0 / len(h))  # centred: unrelated voices score near 0
        return np.concatenate(parts)

    def similarity(self, audio: Sequence[int], reference: Sequence[int]) -> float:
        a, b = self.embed(audio), self.embed(reference)
        na, nb = np.linalg.norm(a), np.linalg.norm(b)
        return float(a @ b / (na * nb)) if na and nb else 0.0


def edit_distance(a: str, b: str) -> int:
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]
