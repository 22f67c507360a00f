import json

import pytest
import torch
from conftest import tiny_llama, tiny_qwen2
from transformers import AutoModelForCausalLM

from orchestrator.cli import main


@pytest.fixture(params=[tiny_llama, tiny_qwen2], ids=["llama", "qwen2"])
def saved_model(request, tmp_path):
    path = tmp_path / "teacher"
    request.param(6).save_pretrained(path)
    return path


def test_prune_command_writes_a_loadable_student(saved_model, tmp_path, capsys):
    out = tmp_path / "student"
    assert main(["prune", "--model", str(saved_model), "--drop", "1,3", "--out", str(out)]) == 0
    assert "kept layers [0, 2, 4, 5] of 6" in capsys.readouterr().out
    student = AutoModelForCausalLM.from_pretrained(out)
    assert student.config.num_hidden_layers == 4
    assert json.loads((out / "config.json").read_text())["prun_tts"]["kept_layers"] == [0, 2, 4, 5]
    out2 = tmp_path / "student2"
    assert main(["prune", "--model", str(saved_model), "--keep", "0,2,4,5", "--out", str(out2)]) == 0
    ids = torch.randint(3, 90, (1, 6))
    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(out2)(ids).logits, student(ids).logits)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--drop", "6"], "must be in 0..5"),
        (["--drop", "1,1"], "more than once"),
        (["--drop", "0,1,2,3,4,5"], "remove all 6 layers"),
        (["--keep", "0,9"], "must be in 0..5"),
    ],
)
def test_prune_refuses_bad_layer_sets_and_writes_nothing(saved_model, tmp_path, capsys, args, message):
    out = tmp_path / "student"
    assert main(["prune", "--model", str(saved_model), *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["teacher"]  # no temporary left behind


def test_prune_never_overwrites_an_existing_directory(saved_model, tmp_path, capsys):
    out = tmp_path / "student"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["prune", "--model", str(saved_model), "--drop", "1", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_prune_unknown_model_is_a_clear_error(tmp_path, capsys):
    assert main(["prune", "--model", str(tmp_path / "nope"), "--drop", "1", "--out", str(tmp_path / "o")]) == 2
    assert "nope: does not exist" in capsys.readouterr().err


def test_train_teacher_records_its_command_and_never_overwrites(tiny_cfg, tmp_path, capsys):
    from conftest import TINY_WORLD

    sets = sum((["--set", s] for s in TINY_WORLD), [])
    out = tmp_path / "teacher"
    assert main(["train-teacher", "--config", "configs/mini.yaml", *sets, "--quiet", "--out", str(out)]) == 0
    meta = json.loads((out / "prun_tts_teacher.json").read_text())
    assert (
        meta["command"].startswith("prun-tts train-teacher --config configs/mini.yaml") and str(out) in meta["command"]
    )
    assert meta["steps"] == 3 and meta["train_tokens"] > 0
    before = (out / "model.safetensors").read_bytes()
    assert main(["train-teacher", "--config", "configs/mini.yaml", *sets, "--quiet", "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (out / "model.safetensors").read_bytes() == before


def test_sigterm_exits_143_even_when_a_library_reraises_a_plain_keyboard_interrupt(monkeypatch, capsys):
    """Tune catches the KeyboardInterrupt SIGTERM raises and raises a plain one: the exit code still
    says SIGTERM (143), not Ctrl-C (130)."""
    import os
    import signal

    from orchestrator import cli, console

    def like_tune(args):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler stop_on_sigterm installed raises here
        except KeyboardInterrupt:
            raise KeyboardInterrupt from None

    monkeypatch.setitem(cli.COMMANDS, "report", like_tune)
    monkeypatch.setattr(console, "TERMINATED", console.threading.Event())
    monkeypatch.setattr(cli, "TERMINATED", console.TERMINATED)
    try:
        assert main(["report", "--sweep", "x"]) == 143
        assert "interrupted" in capsys.readouterr().err
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
