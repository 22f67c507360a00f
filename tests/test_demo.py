"""The whole method end to end in one process on a reduced mini world: real code paths,
seconds not minutes; and the same command again reuses every finished stage."""

import json

import pytest
from conftest import TINY_WORLD

from orchestrator.cli import main

pytestmark = pytest.mark.integration  # the whole method, end to end


def test_demo_end_to_end_on_a_reduced_world_then_resumes_from_its_stages(tiny_cfg, tmp_path, capsys):
    runs = tmp_path / "runs"
    sets = TINY_WORLD + [
        f"world.teacher.path={tmp_path / 'no-teacher'}",
        f"output_dir={runs}",
        "distill.data_fraction=0.5",
        "distill.batch_size=4",
        "score.scorers=[wli, last_n, block_influence]",
    ]
    args = ["--config", "configs/mini.yaml", "--quiet", *sum((["--set", s] for s in sets), [])]
    assert main(["demo", *args]) == 0
    out = capsys.readouterr().out
    assert "| teacher" in out and "[6/7] trade-off" in out
    summary = json.loads((runs / "demo.json").read_text())
    assert summary["teacher"]["n_layers"] == 4
    students = summary["students"]
    assert sorted(s["n_layers"] for s in students) == [2, 3]  # prune.ratio [0.25, 0.5] of 4 layers
    for s in students:
        assert s["status"] == "ok" and s["scorer"] in ("wli", "last_n", "block_influence")
        assert s["params_m"] < summary["teacher"]["params_m"]
        assert s["wer_delta"] == s["wer"] - summary["teacher"]["wer"]
        assert summary["pruned_only"][s["dropped_layers"]]["n_layers"] == s["n_layers"]
        assert s["pruned_wer"] == summary["pruned_only"][s["dropped_layers"]]["wer"]  # beside the distilled WER
    best = summary["plans"]["best/lowest/2"]
    assert set(best["dev_wer"]) == {"wli", "last_n", "block_influence"}
    assert best["dev_wer"][best["scorer"]] == min(best["dev_wer"].values())  # best: the lowest pruned-only dev WER
    assert 0 < summary["budget"]["data_fraction"] <= 0.5
    for f in ("scores/layer_scores.csv", "scores/layer_importance.png", "results/trials.csv", "results/pareto.png"):
        assert (runs / f).is_file(), f
    (two,) = [
        d for d in (runs / "students").iterdir() if d.name.startswith(f"drop-{best['drop'][0]}-{best['drop'][1]}-")
    ]
    student_dir = two / "student"
    assert json.loads((student_dir / "config.json").read_text())["num_hidden_layers"] == 2
    # the teacher was trained once and cached by config hash: a second command reuses it
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and (cached[0] / "prun_tts_teacher.json").is_file()

    # the same command again: every stage is read back, nothing is trained or overwritten
    stamp = (student_dir / "model.safetensors").stat().st_mtime_ns
    assert main(["demo", *args]) == 0
    again = capsys.readouterr().out
    assert again.count("reusing") >= 4  # baseline, plans, and each student's two evaluations
    assert json.loads((runs / "demo.json").read_text())["students"] == students
    assert (student_dir / "model.safetensors").stat().st_mtime_ns == stamp

    assert main(["evaluate", *args, "--model", str(student_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_layers"] == 2 and 0 <= result["wer"]
    assert list((tmp_path / "cache").iterdir()) == cached
