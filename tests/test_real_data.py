"""The real worlds' data plumbing on files written by the test: training manifest,
speech-token shards and pairs, Seed-TTS-eval lists, the hours budget, and evaluation
that resumes where a stopped run left off."""

import json

import numpy as np
import pytest
import soundfile as sf

from orchestrator.config import ConfigError
from orchestrator.data.manifest import read_manifest
from orchestrator.data.seedtts import SeedTTSItems, read_meta_list
from orchestrator.data.shards import ShardPairs, read_shards, shard_name, speaker_pairs, write_index, write_shard
from orchestrator.world import Sample


def _wav(path, seconds=0.2):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(16000 * seconds), dtype=np.float32), 16000)
    return path


def test_manifest_resolves_relative_audio_and_names_every_bad_line(tmp_path):
    _wav(tmp_path / "wavs" / "a.wav")
    good = {"audio": "wavs/a.wav", "text": "hello", "speaker": "s1"}
    (tmp_path / "ok.jsonl").write_text(json.dumps(good) + "\n\n")
    rows = read_manifest(tmp_path / "ok.jsonl")
    assert rows == [{"id": "00000001", "audio": str(tmp_path / "wavs" / "a.wav"), "text": "hello", "speaker": "s1"}]

    lines = [
        json.dumps(good),
        "{not json",
        json.dumps({"audio": "wavs/a.wav", "text": " "}),
        json.dumps({**good, "audio": "wavs/missing.wav"}),
    ]
    (tmp_path / "bad.jsonl").write_text("\n".join(lines))
    with pytest.raises(ConfigError) as e:
        read_manifest(tmp_path / "bad.jsonl")
    msg = str(e.value)
    assert "3 bad line(s)" in msg and "line 2: not JSON" in msg and "line 3: missing text, speaker" in msg
    assert "line 4: audio" in msg and "missing.wav does not exist" in msg
    with pytest.raises(ConfigError, match="does not exist"):
        read_manifest(tmp_path / "nothing.jsonl")


def test_pairs_prompt_each_utterance_with_the_same_speaker_in_manifest_order():
    s = [
        Sample("a", "x", (1,)),
        Sample("b", "y", (2,)),
        Sample("c", "x", (3,)),
        Sample("d", "z", (4,)),
        Sample("e", "y", (5,)),
        Sample("f", "x", (6,)),
    ]
    pairs = speaker_pairs(s)
    assert [(p.text, t.text) for p, t in pairs] == [("c", "a"), ("e", "b"), ("f", "c"), ("b", "e"), ("a", "f")]
    assert all(p.speaker == t.speaker and p is not t for p, t in pairs)  # z has one utterance: no pair


def test_shards_round_trip_and_unfinished_shards_are_refused(tmp_path):
    rows = [{"id": f"{i}", "text": f"t{i}", "speaker": "s", "codes": np.arange(i + 1)} for i in range(5)]
    with pytest.raises(ConfigError, match="prun-tts shards"):
        read_shards(tmp_path)
    write_shard(tmp_path / shard_name(0), rows[:3])
    write_shard(tmp_path / shard_name(1), rows[3:])
    write_index(tmp_path, "digest", "codec", 2, 5)
    samples = read_shards(tmp_path)
    assert [x.text for x in samples] == ["t0", "t1", "t2", "t3", "t4"]
    assert samples[4].codes == (0, 1, 2, 3, 4) and not list(tmp_path.glob("*.tmp"))


def test_shard_pairs_read_pair_by_pair_equal_the_pairs_of_all_shards(tmp_path):
    rng = np.random.default_rng(3)
    rows = [
        {"id": f"{i}", "text": f"t{i}", "speaker": f"s{rng.integers(4)}", "codes": rng.integers(0, 99, 1 + i % 7)}
        for i in range(23)
    ]
    rows[5]["codes"] = []  # no speech: not an utterance
    for k in range(0, 23, 5):
        write_shard(tmp_path / shard_name(k // 5), rows[k : k + 5])
    write_index(tmp_path, "digest", "codec", 5, 23)
    lazy, eager = ShardPairs(tmp_path), speaker_pairs(read_shards(tmp_path))
    assert len(lazy) == len(eager) > 15
    assert [lazy[i] for i in range(len(lazy))] == eager and lazy[-1] == eager[-1] and lazy[2:4] == eager[2:4]
    with pytest.raises(IndexError):
        lazy[len(eager)]
    assert lazy._where.nbytes + lazy._pairs.nbytes <= 32 * 23  # positions kept, never the codes
    assert len(ShardPairs(tmp_path / "none")) == 0


class CountingCodec:
    token_rate = 50.0

    def __init__(self):
        self.calls = []

    def encode(self, audio):
        self.calls.append(audio)
        return [len(self.calls), 7]


def test_seedtts_list_is_read_and_prompts_are_encoded_on_first_use(tmp_path):
    _wav(tmp_path / "prompt-wavs" / "p1.wav")
    _wav(tmp_path / "prompt-wavs" / "p2.wav")
    (tmp_path / "meta.lst").write_text(
        "u1|Prompt one.|prompt-wavs/p1.wav|Target one.\nu2|Prompt two.|prompt-wavs/p2.wav|Target two.|wavs/u2.wav\n"
    )
    # a fifth field is the target's ground-truth recording, kept only where the file is there
    assert read_meta_list(tmp_path / "meta.lst")[1] == {
        "name": "u2",
        "prompt_text": "Prompt two.",
        "prompt_audio": str(tmp_path / "prompt-wavs" / "p2.wav"),
        "target_text": "Target two.",
        "target_audio": "",
    }
    _wav(tmp_path / "wavs" / "u2.wav")
    assert read_meta_list(tmp_path / "meta.lst")[1]["target_audio"] == str(tmp_path / "wavs" / "u2.wav")
    codec = CountingCodec()
    items = SeedTTSItems(tmp_path / "meta.lst", codec)
    assert len(items) == 2 and codec.calls == []  # nothing encoded until an item is used
    first = items[:1]
    assert first[0].prompt_codes == (1, 7) and first[0].prompt_audio.endswith("p1.wav")
    assert items[0].prompt_codes == (1, 7) and len(codec.calls) == 1  # encoded once
    (tmp_path / "bad.lst").write_text("u3|text|prompt-wavs/none.wav|target\nonly|two\n")
    with pytest.raises(ConfigError) as e:
        read_meta_list(tmp_path / "bad.lst")
    assert "line 1: prompt audio" in str(e.value) and "line 2: expected name|prompt text" in str(e.value)


def test_budget_in_hours_counts_prompt_and_target_speech(tiny_cfg):
    from orchestrator.builders import build_world
    from orchestrator.distill.budget import plan_budget

    world = build_world(tiny_cfg)
    cfg = tiny_cfg.model_copy(deep=True)
    cfg.distill.data_hours = 0.005  # 18 s of speech: 900 codes at 50 codes/s
    b = plan_budget(cfg, world, None)  # no teacher token count needed
    sizes = [len(p.codes) + len(t.codes) for p, t in (world.train_pairs[i] for i in range(len(world.train_pairs)))]
    fit = int(np.searchsorted(np.cumsum(sizes), 900, side="right"))  # pairs that fit, in order
    assert 0 < b.pairs == fit - fit % cfg.distill.batch_size < len(sizes)
    assert b.hours == pytest.approx(sum(sizes[: b.pairs]) / 50.0 / 3600)
    cfg.distill.data_hours = 1e-6
    with pytest.raises(ConfigError, match="data_hours"):
        plan_budget(cfg, world, None)


def test_evaluation_resumes_where_a_stopped_run_left_off(tiny_cfg, tmp_path, monkeypatch):
    import orchestrator.evaluate.synthesis as synthesis
    from orchestrator.builders import build_world, load_teacher, pick_device

    world = build_world(tiny_cfg)
    teacher, _ = load_teacher(tiny_cfg, world, pick_device(tiny_cfg), progress=False)
    items = world.test_items[:8]
    ev = tiny_cfg.evaluate.model_copy(update={"batch_size": 4})
    results = tmp_path / "eval.jsonl"
    full = synthesis.evaluate_model(teacher, world, items, ev, results=results)
    lines = results.read_text().splitlines()
    assert [json.loads(x)["name"] for x in lines] == [it.name for it in items]

    results.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])  # stopped while writing the second batch
    seen = []
    real = synthesis.synthesize
    monkeypatch.setattr(
        synthesis, "synthesize", lambda m, f, its, *a, **k: seen.extend(its) or real(m, f, its, *a, **k)
    )
    again = synthesis.evaluate_model(teacher, world, items, ev, results=results)
    assert [it.name for it in seen] == [it.name for it in items[4:]]  # the first batch was complete: skipped
    assert [r["name"] for r in again.items] == [it.name for it in items]
    same = ("name", "hypothesis", "wer", "sim", "codes")
    assert [{k: r[k] for k in same} for r in again.items] == [{k: r[k] for k in same} for r in full.items]  # same draws
    assert again.wer == pytest.approx(full.wer)


def test_wli_refuses_a_world_without_audio(tiny_cfg, monkeypatch):
    from orchestrator.builders import build_world, load_teacher, pick_device, scoring_context
    from orchestrator.prune.importance import wer_without

    world = build_world(tiny_cfg)
    teacher, _ = load_teacher(tiny_cfg, world, pick_device(tiny_cfg), progress=False)
    monkeypatch.setattr(world.codec, "decode", lambda codes, prompt=None: None)  # a codec with no decoder here
    with pytest.raises(ConfigError, match="block_influence, angular or loss_delta"):
        wer_without(teacher, scoring_context(tiny_cfg, world, 1), [0])


def test_lazy_parts_copy_and_pickle_without_building():
    import copy
    import pickle

    from orchestrator.real import Lazy

    built = []
    lazy = Lazy(lambda: built.append(1) or "x", token_rate=50.0)
    assert lazy.token_rate == 50.0 and built == []
    assert copy.copy(lazy).token_rate == 50.0 and built == []
    assert pickle.loads(pickle.dumps(Lazy(str, token_rate=25.0))).token_rate == 25.0
    assert lazy.upper() == "X" and built == [1]


def test_several_passes_average_other_draws_of_the_same_items(tiny_cfg):
    from orchestrator.builders import build_world, load_teacher, pick_device
    from orchestrator.evaluate.synthesis import evaluate_model

    world = build_world(tiny_cfg)
    teacher, _ = load_teacher(tiny_cfg, world, pick_device(tiny_cfg), progress=False)
    items = world.test_items[:8]
    one = evaluate_model(teacher, world, items, tiny_cfg.evaluate)
    two = evaluate_model(teacher, world, items, tiny_cfg.evaluate.model_copy(update={"passes": 2}))
    assert [r["name"] for r in two.items] == [f"{it.name}#{p}" for p in (0, 1) for it in items]
    assert [r["codes"] for r in two.items[:8]] == [r["codes"] for r in one.items]  # pass 0 = the single pass
    assert [r["codes"] for r in two.items[8:]] != [r["codes"] for r in one.items]  # pass 1: other draws
    assert two.wer == pytest.approx((one.wer + np.mean([r["wer"] for r in two.items[8:]])) / 2)
