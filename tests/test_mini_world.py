import numpy as np
import pytest
import torch

from orchestrator.config import load_config
from orchestrator.distill.data import collate
from orchestrator.evaluate.metrics import utterance_wer
from orchestrator.mini import build_mini_world
from orchestrator.mini.family import SPECIAL_TOKENS
from orchestrator.mini.world import MiniWorld, WorldSpec

SPEC = WorldSpec(seed=3, n_sentences=300, dev_sentences=20, test_sentences=20)


def test_world_is_deterministic_and_split_by_sentence():
    a, b = MiniWorld(SPEC), MiniWorld(SPEC)
    assert a.words == b.words and a.train_sentences == b.train_sentences and a.speakers == b.speakers
    assert 300 <= len(a.words) <= 400
    train, dev, test = set(a.train_sentences), set(a.dev_sentences), set(a.test_sentences)
    assert not (train & dev or train & test or dev & test)
    assert MiniWorld(WorldSpec(seed=4, n_sentences=300)).words != a.words


def test_asr_inverts_every_speaker_and_a_wrong_code_is_a_word_error():
    w = MiniWorld(SPEC)
    from orchestrator.mini.speech import MiniASR

    asr = MiniASR(w)
    rng = np.random.default_rng(0)
    texts = w.test_sentences[:16]
    utts = [w.speak(t, i % SPEC.n_speakers, rng) for i, t in enumerate(texts)]
    assert all(utterance_wer(t, h) == 0.0 for t, h in zip(texts, asr.transcribe([u.codes for u in utts])))
    # replace the first phone of the first word with another phone: one word error
    codes = list(utts[0].codes)
    first = w.unit_of(codes[0])
    other = (first % (len(w.units) - 1)) + 1  # a different phone unit, never the pause
    codes = [other * SPEC.n_timbres if w.unit_of(c) == first and i < 4 else c for i, c in enumerate(codes)]
    hyp = asr.transcribe([codes])[0]
    assert hyp.split()[1:] == texts[0].split()[1:]
    assert 0 < utterance_wer(texts[0], hyp) <= 1 / len(texts[0].split()) + 1e-9


def test_speaker_verifier_tells_voices_apart():
    w = MiniWorld(SPEC)
    from orchestrator.mini.speech import MiniSpeakerVerifier

    v = MiniSpeakerVerifier(w)
    rng = np.random.default_rng(1)
    same, diff = [], []
    for i in range(40):
        a, b = w.test_sentences[i % 20], w.dev_sentences[i % 20]
        s1, s2 = i % SPEC.n_speakers, (i + 1) % SPEC.n_speakers
        ref = w.speak(a, s1, rng).codes
        same.append(v.similarity(w.speak(b, s1, rng).codes, ref))
        diff.append(v.similarity(w.speak(b, s2, rng).codes, ref))
    assert np.mean(same) > 0.7 and np.mean(same) > np.mean(diff) + 0.4


def test_family_follows_llasa_layout():
    cfg = load_config(
        None, ["world.mini.n_sentences=300", "world.mini.dev_sentences=20", "world.mini.test_sentences=20"]
    )
    world = build_mini_world(cfg, n_pairs=8)
    f = world.family
    n_text = len(f.text_vocab)
    assert [f.special[s] for s in SPECIAL_TOKENS] == list(range(n_text, n_text + 8))
    assert f.speech_offset == n_text + 8 and f.vocab_size == f.speech_offset + f.n_codes
    item = world.test_items[0]
    ids = f.prompt_ids(item.prompt_text, item.target_text, item.prompt_codes)
    sgs = ids.index(f.special["SPEECH_GENERATION_START"])
    assert ids[:2] == [f.bos_id, f.special["TEXT_UNDERSTANDING_START"]]
    assert ids[sgs - 1] == f.special["TEXT_UNDERSTANDING_END"]
    assert [t - f.speech_offset for t in ids[sgs + 1 :]] == list(item.prompt_codes)
    assert f.codes_of([f.speech_offset + 5, f.speech_offset, f.end_id, f.speech_offset + 1]) == [5, 0]
    batch = collate(f, [world.train_pairs[i] for i in range(4)])
    labels, ids = batch["labels"], batch["input_ids"]
    speech = labels != -100
    # labels cover exactly the speech span (codes and the end token), nothing before it
    assert ((ids[speech] >= f.speech_offset) | (ids[speech] == f.end_id)).all()
    assert (labels[speech] == ids[speech]).all()
    assert ((ids == f.end_id).sum(1) == 1).all()


@pytest.mark.integration  # the shipped teacher over the test list
def test_shipped_teacher_matches_its_config_and_speaks():
    """The teacher in orchestrator/assets was made by `make teacher` from configs/mini.yaml."""
    from pathlib import Path

    from orchestrator.builders import build_world
    from orchestrator.evaluate.synthesis import evaluate_model
    from orchestrator.mini.teacher import find_teacher, read_meta, teacher_digest
    from orchestrator.world import load_model

    cfg = load_config("configs/mini.yaml")
    path = Path(cfg.world.teacher.path)
    meta = read_meta(path)
    assert meta is not None, f"{path} has no prun_tts_teacher.json: run `make teacher`"
    assert meta["digest"] == teacher_digest(cfg)
    assert meta["teacher"]["seed"] == cfg.world.teacher.seed and meta["command"].startswith("prun-tts train-teacher")
    assert find_teacher(cfg) == path.resolve()
    world = build_world(cfg)
    model = load_model(world, path, torch.device("cpu"))
    t = cfg.world.teacher
    assert (model.config.num_hidden_layers, model.config.hidden_size, model.config.vocab_size) == (
        t.layers,
        t.hidden,
        world.family.vocab_size,
    )
    result = evaluate_model(model, world, world.test_items[:32], cfg.evaluate)
    assert result.wer < 0.10 and result.sim > 0.5
