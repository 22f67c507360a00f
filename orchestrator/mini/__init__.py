"""The offline mini world: a language, synthetic speakers, codec, ASR, verifier, teacher."""

from __future__ import annotations

import numpy as np

from orchestrator.config import Config
from orchestrator.mini.family import MiniFamily
from orchestrator.mini.speech import MiniASR, MiniCodec, MiniSpeakerVerifier
from orchestrator.mini.vocoder import MiniVocoder
from orchestrator.mini.world import MiniWorld, WorldSpec
from orchestrator.world import EvalItem, Sample, World


class MiniPairs:
    """Training pairs (prompt, target) of one speaker, made on demand from (seed, index)."""

    def __init__(self, world: MiniWorld, size: int):
        self.world, self.size = world, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[Sample, Sample]:
        if not 0 <= i < self.size:
            raise IndexError(i)
        rng = np.random.default_rng([self.world.spec.seed, 1, i])
        sents = self.world.train_sentences
        a, b = rng.choice(len(sents), size=2, replace=False)
        spk = int(rng.integers(len(self.world.speakers)))
        return self.world.speak(sents[a], spk, rng, trailing_pause=True), self.world.speak(sents[b], spk, rng)


def eval_items(world: MiniWorld, sentences: list[str], tag: str) -> list[EvalItem]:
    """Each held-out sentence, prompted by another held-out sentence of the same voice."""
    items = []
    for i, target in enumerate(sentences):
        rng = np.random.default_rng([world.spec.seed, 2, i, len(tag)])
        spk = i % len(world.speakers)
        prompt_text = sentences[(i + 1) % len(sentences)]
        prompt = world.speak(prompt_text, spk, rng, trailing_pause=True)  # a prompt ends in silence
        truth = world.speak(target, spk, rng)  # drawn after the prompt: the prompts stay what they were
        items.append(EvalItem(f"{tag}-{i:04d}-spk{spk}", prompt_text, prompt.codes, target, target_codes=truth.codes))
    return items


def build_mini_world(cfg: Config, n_pairs: int | None = None) -> World:
    m = cfg.world.mini
    world = MiniWorld(
        WorldSpec(m.seed, m.n_speakers, m.n_timbres, m.max_run, m.n_sentences, m.dev_sentences, m.test_sentences)
    )
    t = cfg.world.teacher
    return World(
        name="mini",
        family=MiniFamily(world.phones, world.n_codes),
        codec=MiniCodec(),
        asr=MiniASR(world),
        verifier=MiniSpeakerVerifier(world),
        train_pairs=MiniPairs(world, n_pairs if n_pairs is not None else t.steps * t.batch_size),
        dev_items=eval_items(world, world.dev_sentences, "dev"),
        test_items=eval_items(world, world.test_sentences, "test"),
        vocoder=MiniVocoder(world).render,  # for listening only: the ASR and verifier read the codes
    )
