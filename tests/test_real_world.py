"""The LLaSA world end to end from a config, on tiny random versions of every real model
class saved to disk (LLaSA's Llama, X-Codec2, Whisper, WavLM): prompt audio -> codes ->
prompt -> generate -> decode -> transcribe -> WER and similarity; speech-token shards
with Ray Data; prune and distil from the shards; resumable `prun-tts evaluate`; and the
cosyvoice2 world's messages for what is not installed here."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_llasa import save_tiny_llasa  # noqa: E402
from tiny_speech import tiny_wavlm, tiny_whisper, tiny_xcodec2  # noqa: E402

from orchestrator.cli import main  # noqa: E402
from orchestrator.config import load_config  # noqa: E402
from orchestrator.data.shards import shard_name  # noqa: E402

pytestmark = pytest.mark.slow(minutes=3)


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: threads cost more than they bring on 2 shared cores
    yield
    torch.set_num_threads(n)


def _voice(path: Path, seconds: float, pitch: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    wav = 0.3 * np.sin(2 * np.pi * pitch * t) + 0.05 * rng.standard_normal(len(t))
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav.astype(np.float32), 16000)
    return path


@pytest.fixture(scope="module")
def llasa_setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("llasa-world")
    save_tiny_llasa(root / "llasa", layers=4)
    codec, asr, sv = tiny_xcodec2(), tiny_whisper(), tiny_wavlm()
    for part, d in (
        (codec.model, "xcodec2"),
        (codec.feature_extractor, "xcodec2"),
        (asr.model, "whisper"),
        (asr.feature_extractor, "whisper"),
        (asr.tokenizer, "whisper"),
        (sv.model, "wavlm"),
        (sv.feature_extractor, "wavlm"),
    ):
        part.save_pretrained(root / d)
    lines = []
    for i in range(6):  # two speakers, three utterances each
        _voice(root / "data" / f"u{i}.wav", 0.3 + 0.05 * i, 150 + 100 * (i % 2), i)
        lines.append(json.dumps({"audio": f"u{i}.wav", "text": f"utterance number {i}", "speaker": f"s{i % 2}"}))
    (root / "data" / "train.jsonl").write_text("\n".join(lines) + "\n")
    for i in range(3):
        _voice(root / "seedtts" / "prompt-wavs" / f"p{i}.wav", 0.4, 200 + 50 * i, 10 + i)
    (root / "seedtts" / "meta.lst").write_text(
        "".join(f"item{i}|A prompt, number {i}.|prompt-wavs/p{i}.wav|Say the words {i}.\n" for i in range(3))
    )
    overrides = [
        "world.name=llasa",
        f"world.teacher.path={root / 'llasa'}",
        f"world.real.codec={root / 'xcodec2'}",
        f"world.real.asr={root / 'whisper'}",
        f"world.real.verifier={root / 'wavlm'}",
        "world.real.dtype=float32",
        f"world.real.train_manifest={root / 'data' / 'train.jsonl'}",
        f"world.real.shards={root / 'shards'}",
        "world.real.shard_size=4",
        f"world.real.dev_list={root / 'seedtts' / 'meta.lst'}",
        f"world.real.test_list={root / 'seedtts' / 'meta.lst'}",
        "evaluate.n_items=3",
        "evaluate.batch_size=2",
        "evaluate.max_new_tokens=12",
        "evaluate.passes=1",
        "distill.data_hours=0.001",
        "distill.batch_size=2",
        "distill.epochs=1",
        "distill.on_policy=0",
        "distill.warmup=0",
        f"output_dir={root / 'runs'}",
        "device=cpu",
    ]
    return root, overrides


def test_full_path_from_prompt_audio_to_wer_and_similarity(llasa_setup):
    from orchestrator.builders import build_world, load_teacher, pick_device
    from orchestrator.evaluate.synthesis import evaluate_model
    from orchestrator.speech.audio import load_audio

    root, overrides = llasa_setup
    cfg = load_config(None, overrides)
    world = build_world(cfg)
    teacher, meta = load_teacher(cfg, world, pick_device(cfg), progress=False)
    assert meta["train_tokens"] == 250_000 * 3600 * 50  # LLaSA's hours, as X-Codec2 tokens
    item = world.test_items[0]
    n_samples = len(load_audio(root / "seedtts" / "prompt-wavs" / "p0.wav"))
    assert len(item.prompt_codes) == n_samples // 320 + 1  # the prompt recording went through X-Codec2
    e = evaluate_model(teacher, world, world.test_items[:3], cfg.evaluate)
    assert [r["name"] for r in e.items] == ["item0", "item1", "item2"]
    assert all(r["n_codes"] > 0 for r in e.items)  # the tiny LLaSA speaks...
    assert all(isinstance(r["hypothesis"], str) for r in e.items)  # ...Whisper transcribes the decoded audio...
    assert all(0.0 <= r["wer"] and -1.0 <= r["sim"] <= 1.0 for r in e.items)  # ...and both are scored
    assert e.wer == pytest.approx(np.mean([r["wer"] for r in e.items]))
    assert e.n_layers == 4 and e.rtf > 0


def test_shards_with_ray_data_then_prune_and_distil_from_them(llasa_setup, capsys):
    from orchestrator.builders import build_world, load_teacher, pick_device
    from orchestrator.distill.engine import distill, read_history

    root, overrides = llasa_setup
    args = ["--config", "configs/mini.yaml", "--quiet", *sum((["--set", o] for o in overrides), [])]
    assert main(["shards", *args]) == 0
    index = json.loads((root / "shards" / "index.json").read_text())
    assert index["shards"] == 2 and index["utterances"] == 6
    rows = [json.loads(x) for f in sorted((root / "shards").glob("shard-*.jsonl")) for x in f.read_text().splitlines()]
    assert [r["text"] for r in rows] == [f"utterance number {i}" for i in range(6)]  # the manifest's order
    assert len(rows[5]["codes"]) == int(16000 * 0.55) // 320 + 1
    assert main(["shards", *args]) == 0  # made once: the second run finds them
    assert "already holds these 6 utterances" in capsys.readouterr().out
    # a run stopped after its first shard: started again, it encodes only the rest
    first = (root / "shards" / shard_name(0)).stat().st_mtime_ns
    (root / "shards" / "digest").write_text(index["digest"])
    (root / "shards" / "index.json").unlink()
    (root / "shards" / shard_name(1)).unlink()
    assert main(["shards", *args]) == 0
    assert "(1 already done)" in capsys.readouterr().out
    assert (root / "shards" / shard_name(0)).stat().st_mtime_ns == first
    again = [json.loads(x) for f in sorted((root / "shards").glob("shard-*.jsonl")) for x in f.read_text().splitlines()]
    assert again == rows and json.loads((root / "shards" / "index.json").read_text()) == index
    assert not (root / "shards" / "digest").exists()

    cfg = load_config("configs/mini.yaml", overrides)
    world = build_world(cfg)
    assert len(world.train_pairs) == 6 and all(p.speaker == t.speaker for p, t in world.train_pairs)
    teacher, meta = load_teacher(cfg, world, pick_device(cfg), progress=False)
    student, budget = distill(cfg, world, teacher, meta["train_tokens"], [1, 2], root / "student", progress=False)
    history = read_history(root / "student" / "history.csv")
    assert len(student.model.layers) == 2 and student.config.prun_tts["kept_layers"] == [0, 3]
    assert budget.pairs >= 2 and budget.hours <= 0.001 and len(history) == budget.pairs // 2
    assert all(np.isfinite(h["loss"]) for h in history)
    assert (root / "student" / "student" / "config.json").is_file()


def test_evaluate_command_resumes_and_skips_scored_items(llasa_setup, capsys):
    root, overrides = llasa_setup
    args = ["evaluate", "--config", "configs/mini.yaml", "--quiet", *sum((["--set", o] for o in overrides), [])]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    [results] = (root / "runs" / "evaluations").glob("teacher-test-*.jsonl")
    assert len(results.read_text().splitlines()) == 3
    assert main(args) == 0  # everything already scored: nothing synthesized, the same summary
    again = json.loads(capsys.readouterr().out)
    assert len(results.read_text().splitlines()) == 3
    assert again["wer"] == first["wer"] and again["sim"] == first["sim"]


def test_missing_pieces_are_named_with_what_to_do(llasa_setup, tmp_path, capsys):
    root, overrides = llasa_setup
    bad = [o for o in overrides if not o.startswith("world.real.codec")] + ["world.real.codec=some-org/not-here"]
    args = ["evaluate", "--config", "configs/mini.yaml", "--quiet", *sum((["--set", o] for o in bad), [])]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "X-Codec2" in err and "huggingface-cli download some-org/not-here" in err and "world.real.codec" in err

    # cosyvoice2: a CosyVoice2-0.5B folder that is not there, then one without s3tokenizer installed
    cv = ["world.name=cosyvoice2", f"world.teacher.path={tmp_path / 'CosyVoice2-0.5B'}", f"output_dir={tmp_path}"]
    assert main(["evaluate", "--config", "configs/mini.yaml", "--quiet", *sum((["--set", o] for o in cv), [])]) == 2
    assert "CosyVoice2-0.5B: does not exist" in capsys.readouterr().err  # refused before anything loads
    from test_cosyvoice2 import tiny_lm, tokenizer

    from orchestrator.families.cosyvoice2 import BLANK, save_cosyvoice_llm

    folder = save_cosyvoice_llm(tiny_lm(2, speech_token_size=6561), tmp_path / "CosyVoice2-0.5B")
    tokenizer().save_pretrained(folder / BLANK)
    cv += [f"world.real.codec={folder}", f"world.real.test_list={root / 'seedtts' / 'meta.lst'}"]
    assert main(["evaluate", "--config", "configs/mini.yaml", "--quiet", *sum((["--set", o] for o in cv), [])]) == 2
    err = capsys.readouterr().err  # prompts need CosyVoice's speech tokenizer, whose weights are not here
    assert "S3 speech tokenizer" in err and "speech_tokenizer_v2.onnx" in err


def test_cosyvoice2_world_without_cosyvoice_code_reports_token_level_metrics(
    llasa_setup, tmp_path, monkeypatch, capsys
):
    """Prompt audio -> S3 tokens -> CosyVoice 2 LLM prompt -> generate; no CosyVoice code to make
    audio here, so WER and SIM are NaN, the speech tokens and speed are reported, and it says so."""
    from test_cosyvoice2 import tiny_lm, tiny_s3_tokenizer, tokenizer

    from orchestrator.families.cosyvoice2 import BLANK, save_cosyvoice_llm
    from orchestrator.speech.s3tokens import S3Tokenizer

    root, _ = llasa_setup
    model = tiny_lm(2, speech_token_size=6561)
    with torch.no_grad():
        model.llm_decoder.bias[6561:] = -1e4  # a random LLM that does not stop at once
    folder = save_cosyvoice_llm(model, tmp_path / "CosyVoice2-0.5B")
    tokenizer().save_pretrained(folder / BLANK)
    monkeypatch.setattr(S3Tokenizer, "from_pretrained", classmethod(lambda cls, *a, **k: tiny_s3_tokenizer()))
    cv = [
        "world.name=cosyvoice2",
        f"world.teacher.path={folder}",
        f"world.real.codec={folder}",
        f"world.real.test_list={root / 'seedtts' / 'meta.lst'}",
        "world.real.dtype=float32",
        "evaluate.n_items=3",
        "evaluate.batch_size=3",
        "evaluate.max_new_tokens=10",
        f"output_dir={tmp_path / 'runs'}",
        "device=cpu",
    ]
    assert main(["evaluate", "--config", "configs/mini.yaml", "--quiet", *sum((["--set", o] for o in cv), [])]) == 0
    out = capsys.readouterr()
    assert "token-level metrics only" in out.err and "CosyVoice" in out.err
    report = json.loads(next((tmp_path / "runs" / "evaluations").glob("teacher-test-*.json")).read_text())
    assert all(r["n_codes"] == 10 and all(0 <= c < 6561 for c in r["codes"]) for r in report["items"])
    assert np.isnan(report["wer"]) and np.isnan(report["sim"]) and report["tokens_per_s"] > 0


def test_evaluation_sharded_over_ray_tasks(llasa_setup, capsys):
    root, overrides = llasa_setup
    for shards, expected in ((2, [["item0", "item2"], ["item1"]]), (5, [["item0"], ["item1"], ["item2"]])):
        args = [
            "evaluate",
            "--config",
            "configs/mini.yaml",
            "--quiet",
            "--shards",
            str(shards),
            *sum((["--set", o] for o in overrides), []),
        ]
        assert main(args) == 0  # 5 shards of 3 items: 3 tasks
        summary = json.loads(capsys.readouterr().out)
        n = len(expected)
        shard_files = sorted((root / "runs" / "evaluations").glob(f"teacher-test-*.shard*of{n}.jsonl"))
        names = [[json.loads(x)["name"] for x in f.read_text().splitlines()] for f in shard_files]
        assert names == expected  # item i goes to shard i mod n
    report = json.loads(next((root / "runs" / "evaluations").glob("teacher-test-*.json")).read_text())
    assert [r["name"] for r in report["items"]] == ["item0", "item1", "item2"]
    assert summary["wer"] == pytest.approx(np.mean([r["wer"] for r in report["items"]]))


def test_sweep_on_the_llasa_world(llasa_setup, tmp_path):
    """Ray Tune + Ray Train (2 DDP workers) + MLflow on the tiny LLaSA: the same sweep as the
    mini world, with the world rebuilt from the config inside every Ray worker."""
    import csv

    root, overrides = llasa_setup
    sets = overrides + [
        "prune.ratio=[0.5]",
        "prune.scorer=[wli]",
        f"sweep.storage_path={tmp_path / 'sweeps'}",
        "score.n_items=2",
        "score.n_pairs=2",
        "score.batch_size=2",
        "train.report_every=1",
        "sweep.local_cpus=4",
    ]
    args = ["--config", "configs/mini.yaml", "--quiet", *sum((["--set", o] for o in sets), [])]
    assert main(["shards", *args]) == 0
    assert main(["sweep", *args]) == 0
    with (tmp_path / "sweeps" / "mini-sweep" / "results" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["dropped_layers"], r["n_layers"], r["status"]) for r in rows] == [("0-1", "2", "ok")]
    assert 0 <= float(rows[0]["wer"]) and float(rows[0]["speedup"]) > 0 and float(rows[0]["params_m"]) > 0
    baseline = json.loads((tmp_path / "sweeps" / "mini-sweep" / "results" / "baseline.json").read_text())
    assert baseline["n_layers"] == 4
    # the page plays X-Codec2's own decoding of every model's codes, and the list's prompt recordings
    page = tmp_path / "sweeps" / "mini-sweep" / "report"
    (section,) = json.loads((page / "results.json").read_text())["sections"]
    assert section["audio"]["columns"] == ["teacher", rows[0]["trial_id"]]  # this list has no ground truth
    for item, files in section["audio"]["audio"].items():
        for column, path in files.items():
            wav, rate = sf.read(page / path)
            assert rate == 16000 and len(wav) > 0, (item, column)
    html = (page / "index.html").read_text()
    assert html.count("<audio ") == len(section["audio"]["items"]) * 3  # prompt, teacher, student
