"""`prun-tts sweep` on a private local Ray (no --address): 2 trials x 2 Train workers on a
reduced mini world, MLflow in a local sqlite file; then the same command resumes the
finished sweep without re-running a trial; and a trial bigger than the cluster is refused."""

import csv
import json
import re
from pathlib import Path

import pytest
from conftest import TINY_WORLD, free_port
from mlflow import MlflowClient
from mlflow_checks import check_listening_and_registry

from orchestrator.cli import main

pytestmark = pytest.mark.slow(minutes=2)


def sweep_args(tmp_path, *extra):
    sets = TINY_WORLD + [
        f"world.teacher.path={tmp_path / 'no-teacher'}",
        f"output_dir={tmp_path / 'runs'}",
        f"sweep.storage_path={tmp_path / 'sweeps'}",
        "sweep.local_cpus=6",
        "prune.scorer=[wli]",
        "train.report_every=2",
        "distill.data_fraction=0.5",
        "distill.batch_size=4",
        "distill.epochs=1",
        "distill.ema=0.9",
        "distill.teacher_cache=true",
        "distill.extra_texts=4",  # on-policy steps speak 4 texts beyond the budget
        "evaluate.batch_size=4",  # two test batches: each Train worker synthesizes one
        *extra,
    ]
    args = ["sweep", "--config", "configs/mini.yaml", "--quiet"]
    for s in sets:
        args += ["--set", s]
    return args


def test_local_sweep_tracks_trials_and_resumes(tiny_cfg, tiny_world, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(sweep_args(tmp_path)) == 0
    out = capsys.readouterr().out
    db = tmp_path / "runs" / "mlflow.db"
    assert f"sqlite:///{db}" in out  # where the results are
    results = tmp_path / "sweeps" / "mini-sweep" / "results"
    with (results / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(float(r["n_layers"])) for r in rows) == [2, 3] and all(r["status"] == "ok" for r in rows)
    assert (results / "pareto.png").stat().st_size > 5000
    front = json.loads((results / "pareto.json").read_text())
    assert front and all(r["status"] == "ok" for r in front)
    (state,) = (tmp_path / "sweeps" / "mini-sweep" / "state").glob("plans-*.json")
    plans = json.loads(state.read_text())["value"]
    assert set(plans) == {"wli/lowest/1", "wli/lowest/2"} and len(plans["wli/lowest/2"]["drop"]) == 2

    client = MlflowClient(f"sqlite:///{db}")
    exp = client.get_experiment_by_name("prun-tts").experiment_id
    runs = client.search_runs([exp])
    roles = sorted(r.data.tags["prun_tts.role"] for r in runs)
    assert roles == ["baseline", "sweep", "trial", "trial"]
    trial = next(r for r in runs if r.data.tags["prun_tts.role"] == "trial")
    assert trial.data.metrics["teacher_cache_hits"] > 0  # off-policy steps were served from the cache
    budget = json.loads(Path(client.download_artifacts(trial.info.run_id, "budget.json", str(tmp_path))).read_text())
    assert trial.data.metrics["data_pairs"] == budget["pairs"] > 0  # the data budget, logged with the run
    assert trial.data.metrics["data_hours"] == pytest.approx(budget["hours"]) and budget["hours"] > 0
    assert budget["extra_texts"] == 4
    evaluation = json.loads(
        Path(client.download_artifacts(trial.info.run_id, "evaluation.json", str(tmp_path))).read_text()
    )
    # both workers' batches gathered, in the list's order: every test item once
    assert [it["name"] for it in evaluation["items"]] == [it.name for it in tiny_world.test_items[:8]]
    history = client.get_metric_history(trial.info.run_id, "train/loss")
    assert [m.step for m in history] == sorted(m.step for m in history) and len(history) >= 2
    # the sweep's last stage: its page, with each trial's curve as MLflow holds it
    (section,) = json.loads((results.parent / "report" / "results.json").read_text())["sections"]
    assert sorted(s["n_layers"] for s in section["students"]) == [2, 3]
    assert section["key_results"]["extra_texts"] == 4
    trial_id = trial.data.tags["prun_tts.trial_id"]
    with (results / "curves" / f"{trial_id}.csv").open() as f:
        curve = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(f)]
    assert curve == [(m.step, m.value) for m in history]

    # in the UI: each run's audio and item table, the chosen student in the registry
    name = check_listening_and_registry(f"sqlite:///{db}", tmp_path / "downloads")
    assert f"Model Registry: models:/{name}/1" in out

    # the same command again: the finished sweep is kept, nothing is trained, logged or registered twice
    assert main(sweep_args(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "already holds this sweep's chosen student" in out
    assert len(client.search_runs([exp])) == 4
    check_listening_and_registry(f"sqlite:///{db}", tmp_path / "downloads-again")
    # the same sweep name with other settings is refused, not mixed in
    assert main(sweep_args(tmp_path, "distill.lr=0.01")) == 2
    assert "different config" in capsys.readouterr().err


def test_fsdp_sweep_shards_the_students_and_ships_whole_ones(tiny_cfg, tmp_path, capsys, monkeypatch):
    """train.strategy=fsdp: each trial's 2 Train workers hold half the student; every checkpoint
    holds both workers' shards (torch.distributed.checkpoint), and the chosen student is a whole
    Hugging Face checkpoint that stock `from_pretrained` loads from the registry."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert main(sweep_args(tmp_path, "train.strategy=fsdp")) == 0
    out = capsys.readouterr().out
    assert re.search(r"memory per Train worker \(estimate\): [0-9.]+ GiB per worker \(teacher .*optimizer", out)
    with (tmp_path / "sweeps" / "mini-sweep" / "results" / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(float(r["n_layers"])) for r in rows) == [2, 3] and all(r["status"] == "ok" for r in rows)
    assert all(float(r["wer"]) >= 0 for r in rows)
    shards = [sorted(p.name for p in d.iterdir()) for d in (tmp_path / "sweeps").rglob("sharded-state")]
    assert shards and all(s == [".metadata", "__0_0.distcp", "__1_0.distcp", "train_state.pt"] for s in shards)
    name = check_listening_and_registry(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}", tmp_path / "downloads")
    assert f"Model Registry: models:/{name}/1" in out


def test_trial_bigger_than_the_cluster_is_refused_before_anything_is_written(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(sweep_args(tmp_path, "sweep.local_cpus=2", "train.num_workers=4")) == 2
    assert "train.num_workers=4: one trial needs 4.75 CPU" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()


def test_unreachable_address_or_tracking_server_stops_the_command(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    port = free_port()
    assert main([*sweep_args(tmp_path), "--address", f"127.0.0.1:{port}"]) == 2
    assert "no Ray cluster answers" in capsys.readouterr().err
    assert main(sweep_args(tmp_path, f"tracking.uri=http://127.0.0.1:{port}")) == 2
    assert "MLflow server does not answer" in capsys.readouterr().err
    assert not (tmp_path / "sweeps").exists()
