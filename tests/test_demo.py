"""The whole method end to end on a reduced mini world: real code paths, seconds not minutes."""

import json

from orchestrator.cli import main


def test_demo_end_to_end_on_a_reduced_world(tiny_cfg, tmp_path, capsys, monkeypatch):
    runs = tmp_path / "runs"
    args = ["--config", "configs/mini.yaml", "--quiet"]
    from conftest import TINY_WORLD

    sets = TINY_WORLD + [
        f"world.teacher.path={tmp_path / 'no-teacher'}",
        f"output_dir={runs}",
        "distill.data_fraction=0.5",
        "distill.batch_size=4",
        "score.scorers=[wli, last_n, block_influence]",
    ]
    for s in sets:
        args += ["--set", s]
    assert main(["demo", *args]) == 0
    out = capsys.readouterr().out
    assert "| teacher" in out and "pruned + distilled" in out
    summary = json.loads((runs / "demo.json").read_text())
    assert summary["teacher"]["n_layers"] == 4
    assert summary["pruned"]["n_layers"] == summary["distilled"]["n_layers"] == 2
    assert summary["distilled"]["params"] < summary["teacher"]["params"]
    assert summary["scorer"] in ("wli", "last_n", "block_influence")
    assert 0 < summary["budget"]["data_fraction"] <= 0.5
    assert len(summary["dropped_layers"]) == 2
    for f in ("scores/layer_scores.csv", "scores/layer_importance.png", "demo.md"):
        assert (runs / f).is_file(), f
    student_dir = runs / "students" / ("drop-" + "-".join(map(str, summary["dropped_layers"]))) / "student"
    assert json.loads((student_dir / "config.json").read_text())["num_hidden_layers"] == 2
    # the teacher was trained once and cached by config hash: a second command reuses it
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and (cached[0] / "prun_tts_teacher.json").is_file()
    assert main(["evaluate", *args, "--model", str(student_dir)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n_layers"] == 2 and 0 <= result["wer"]
    assert list((tmp_path / "cache").iterdir()) == cached
