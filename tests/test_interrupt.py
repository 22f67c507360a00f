"""Ctrl-C: one line saying how to resume, exit code 130; the same command then finishes from
what was kept. And the commands find the shipped teacher from any working directory."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_WORLD

pytestmark = pytest.mark.slow(minutes=1)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize(
    "sig, code, resume", [(signal.SIGINT, 130, True), (signal.SIGTERM, 143, False)], ids=["ctrl-c", "sigterm"]
)
def test_ctrl_c_in_the_demo_exits_130_with_one_line_and_the_same_command_resumes(tmp_path, sig, code, resume):
    """Ctrl-C, and SIGTERM (kill, timeout, a scheduler) the same way with exit code 143. Both
    leave the same state (the handler is one), so the resume is run after Ctrl-C only."""
    sets = TINY_WORLD + [
        f"world.teacher.path={tmp_path / 'no-teacher'}",
        f"output_dir={tmp_path / 'runs'}",
        "distill.data_fraction=0.5",
        "distill.batch_size=4",
        "distill.epochs=200",  # long enough to be interrupted mid-distillation, even on a loaded machine
        "prune.ratio=0.5",
        "prune.scorer=wli",
    ]
    cmd = [str(BIN / "prun-tts"), "demo", "--config", str(REPO / "configs/mini.yaml"), "--quiet"]
    cmd += sum((["--set", s] for s in sets), [])
    env = {**os.environ, "PRUN_TTS_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not list((tmp_path / "runs" / "students").glob("*/checkpoint.pt")):  # the first checkpoint (step 50)
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.5)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [
        "prun-tts demo: interrupted. Run the same command again to resume: finished stages are kept, "
        "a distillation continues from its last checkpoint."
    ]
    assert "reusing" not in out
    assert list((tmp_path / "runs" / "students").glob("*/checkpoint.pt"))  # what the resume starts from
    if not resume:
        return
    # the same command: the finished stages are read back, the distillation continues
    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("reusing") >= 2  # the baseline and the plans
    summary = json.loads((tmp_path / "runs" / "demo.json").read_text())
    (student,) = summary["students"]
    history = (next((tmp_path / "runs" / "students").iterdir()) / "history.csv").read_text().splitlines()
    steps = [int(line.split(",")[0]) for line in history[1:]]
    assert steps == list(range(1, len(steps) + 1))  # every step once, across the interruption
    assert student["status"] == "ok"


def test_the_shipped_teacher_is_found_from_another_directory(tmp_path, monkeypatch, capsys):
    """Run from tmp_path: the relative world.teacher.path of configs/mini.yaml still finds
    orchestrator/assets/mini-teacher (no teacher is trained into the cache)."""
    from orchestrator.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRUN_TTS_CACHE", str(tmp_path / "cache"))
    sets = ["evaluate.n_items=2", "evaluate.passes=1", "evaluate.max_new_tokens=20", f"output_dir={tmp_path / 'runs'}"]
    assert (
        main(
            ["evaluate", "--config", str(REPO / "configs/mini.yaml"), "--quiet", *sum((["--set", s] for s in sets), [])]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["n_layers"] == 16
    assert not (tmp_path / "cache").exists()
    assert not (tmp_path / "orchestrator").exists()
