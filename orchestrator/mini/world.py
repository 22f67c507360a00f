"""The mini world's language: a phone set, a lexicon, a grammar, synthetic speakers.

Everything is drawn from one seed, so the same config always gives the same world.
Text is written phone by phone (one letter per phone), which keeps the
text-to-speech alignment learnable by a small model on a CPU.
"""

from __future__ import annotations

import dataclasses
import random
from functools import cached_property

import numpy as np

from orchestrator.world import Sample

# Bump when the rendering below changes, so cached teachers are retrained.
WORLD_VERSION = 2
CONSONANTS = "bdfgklmnprstvz"
VOWELS = "aeiou"
# Grammar: each template is a sequence of word classes; sentences are 3-5 words.
TEMPLATES = [
    ("det", "noun", "verb"),
    ("det", "adj", "noun", "verb"),
    ("det", "noun", "verb", "adv"),
    ("noun", "verb", "det", "noun"),
    ("det", "noun", "verb", "det", "noun"),
    ("det", "adj", "noun", "verb", "adv"),
    ("det", "noun", "verb", "prep", "noun"),
]
CLASS_SIZES = {"det": 6, "prep": 8, "adv": 30, "adj": 70, "verb": 90, "noun": 150}


@dataclasses.dataclass(frozen=True)
class Speaker:
    """A synthetic voice: how often it uses each timbre, and how long it holds a unit."""

    index: int
    timbre_probs: tuple[float, ...]
    duration_probs: tuple[float, ...]  # P(run length = 1, 2, 3, ...)


@dataclasses.dataclass(frozen=True)
class WorldSpec:
    seed: int = 0
    n_speakers: int = 8
    n_timbres: int = 4
    max_run: int = 3
    n_sentences: int = 6000
    dev_sentences: int = 200
    test_sentences: int = 200


class MiniWorld:
    """Phones, lexicon, sentences (split train/dev/test by sentence) and speakers."""

    def __init__(self, spec: WorldSpec):
        self.spec = spec
        rng = random.Random(spec.seed)
        self.phones: list[str] = list(CONSONANTS + VOWELS)
        self.lexicon: dict[str, list[str]] = self._make_lexicon(rng)
        self.words: list[str] = [w for ws in self.lexicon.values() for w in ws]
        self.train_sentences, self.dev_sentences, self.test_sentences = self._make_sentences(rng)
        self.speakers = self._make_speakers(np.random.default_rng(spec.seed))

    # -- language -------------------------------------------------------------------
    def _make_lexicon(self, rng: random.Random) -> dict[str, list[str]]:
        seen: set[str] = set()
        lexicon: dict[str, list[str]] = {}
        for cls, size in CLASS_SIZES.items():
            words = []
            while len(words) < size:
                # CV, CVC or CVCV: short words with no phone repeated back to back,
                # so a run of one unit always means one phone.
                shape = rng.choice(["CV", "CVC", "CVCV", "VC", "CVCV"])
                w = "".join(rng.choice(CONSONANTS if c == "C" else VOWELS) for c in shape)
                if w not in seen and all(a != b for a, b in zip(w, w[1:])):
                    seen.add(w)
                    words.append(w)
            lexicon[cls] = words
        return lexicon

    def sample_sentence(self, rng: random.Random) -> str:
        template = rng.choice(TEMPLATES)
        return " ".join(rng.choice(self.lexicon[cls]) for cls in template)

    def _make_sentences(self, rng: random.Random):
        s = self.spec
        total = s.n_sentences + s.dev_sentences + s.test_sentences
        sentences: list[str] = []
        seen: set[str] = set()
        while len(sentences) < total:
            sent = self.sample_sentence(rng)
            if sent not in seen:
                seen.add(sent)
                sentences.append(sent)
        dev_end = s.n_sentences + s.dev_sentences
        return sentences[: s.n_sentences], sentences[s.n_sentences : dev_end], sentences[dev_end:]

    # -- voices ---------------------------------------------------------------------
    def _make_speakers(self, rng: np.random.Generator) -> list[Speaker]:
        speakers = []
        for i in range(self.spec.n_speakers):
            timbre = rng.dirichlet(np.full(self.spec.n_timbres, 0.6))
            duration = rng.dirichlet(np.full(self.spec.max_run, 1.0))
            speakers.append(Speaker(i, tuple(timbre.round(4)), tuple(duration.round(4))))
        return speakers

    @cached_property
    def units(self) -> list[str]:
        """Speech units: one per phone plus the pause between words (index 0)."""
        return ["|"] + self.phones

    @property
    def n_codes(self) -> int:
        return len(self.units) * self.spec.n_timbres

    def speak(self, text: str, speaker: int, rng: np.random.Generator, trailing_pause: bool = False) -> Sample:
        """Render text as codes: each unit a run of (unit, timbre) codes of random length.

        `trailing_pause` ends with the pause that separates this speech from what
        follows it, as a recorded prompt ends in silence.
        """
        spk = self.speakers[speaker]
        unit_index = {u: i for i, u in enumerate(self.units)}
        units = list("|".join(text.split())) + (["|"] if trailing_pause else [])
        codes: list[int] = []
        for u in units:
            run = 1 + int(rng.choice(len(spk.duration_probs), p=_norm(spk.duration_probs)))
            timbres = rng.choice(self.spec.n_timbres, size=run, p=_norm(spk.timbre_probs))
            codes.extend(unit_index[u] * self.spec.n_timbres + int(t) for t in timbres)
        return Sample(text, f"spk{speaker}", tuple(codes))

    def unit_of(self, code: int) -> int:
        return code // self.spec.n_timbres

    def timbre_of(self, code: int) -> int:
        return code % self.spec.n_timbres


def _norm(p) -> np.ndarray:
    a = np.asarray(p, dtype=np.float64)
    return a / a.sum()
