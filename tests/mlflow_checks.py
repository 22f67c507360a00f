"""What a person comparing students in the MLflow UI finds after a sweep, checked the same way on
the local sqlite file and on a real MLflow server: audio they can play and a per-item table in
the teacher's run and every trial's, the prompts in the sweep's run, and the chosen student in
the Model Registry, downloadable and loadable by stock `from_pretrained`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from pathlib import Path

import pytest
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM


def runs_by_role(client: MlflowClient, experiment: str) -> dict[str, list]:
    exp = client.get_experiment_by_name(experiment).experiment_id
    out: dict[str, list] = {}
    for run in client.search_runs([exp]):
        out.setdefault(run.data.tags["prun_tts.role"], []).append(run)
    return out


def playable(client: MlflowClient, run_id: str, folder: str, dest: Path) -> list[str]:
    """The run's WAV files under `folder` that open as audio with samples in them."""
    names = []
    for f in client.list_artifacts(run_id, folder):
        if f.path.endswith(".wav"):
            with wave.open(client.download_artifacts(run_id, f.path, str(dest))) as w:
                assert w.getnframes() > 0 and w.getframerate() > 0, f.path
            names.append(Path(f.path).name)
    return names


def check_listening_and_registry(uri: str, dest: Path, experiment: str = "prun-tts") -> str:
    """The checks; returns the registered model's name (the default: after the teacher's folder)."""
    client = MlflowClient(uri)
    roles = runs_by_role(client, experiment)
    (parent,) = roles["sweep"]
    model_name = "prun-tts-" + Path(parent.data.tags["prun_tts.teacher"]).name
    heard = {}
    for run in roles["baseline"] + roles["trial"]:
        rid = run.info.run_id
        audio = playable(client, rid, "audio", dest / rid)
        assert len(audio) >= 4, (run.info.run_name, audio)
        table = json.loads(Path(client.download_artifacts(rid, "items.json", str(dest / rid))).read_text())
        rows = [dict(zip(table["columns"], r)) for r in table["data"]]
        assert table["columns"] == ["item", "target", "heard", "wer", "sim", "audio"]
        # the table is the run's evaluation, item by item (WER in %), and points at the run's audio
        if "prun_tts.trial_id" in run.data.tags:
            ev = json.loads(Path(client.download_artifacts(rid, "evaluation.json", str(dest / rid))).read_text())
            assert [(r["item"], r["heard"]) for r in rows] == [(i["name"], i["hypothesis"]) for i in ev["items"]]
            assert [r["wer"] for r in rows] == [100 * i["wer"] for i in ev["items"]]
            assert sum(r["wer"] for r in rows) / len(rows) == pytest.approx(run.data.metrics["wer"])
        assert sorted(Path(r["audio"]).name for r in rows if r["audio"]) == sorted(audio)
        heard[rid] = sorted(audio)
    assert len(set(map(tuple, heard.values()))) == 1  # the same items in every run
    prompts = playable(client, parent.info.run_id, "audio/prompt", dest / "prompts")
    assert sorted(prompts) == next(iter(heard.values()))

    (version,) = client.search_model_versions(f"name='{model_name}'")
    (chosen,) = [r for r in roles["trial"] if r.info.run_id == version.run_id]
    tags = version.tags
    assert tags["dropped_layers"] == chosen.data.params["dropped_layers"]
    assert tags["sweep_run_id"] == parent.info.run_id
    assert float(tags["wer_delta"]) == round(chosen.data.metrics["wer_delta"], 4)
    assert float(tags["wer_delta_ci_low"]) - 1e-4 <= float(tags["wer_delta"]) <= float(tags["wer_delta_ci_high"]) + 1e-4
    for run in roles["trial"]:  # each trial run holds its dWER's paired interval beside it
        m = run.data.metrics
        assert m["wer_delta_ci_low"] - 1e-9 <= m["wer_delta"] <= m["wer_delta_ci_high"] + 1e-9, run.info.run_name
        assert m["sim_delta_ci_low"] <= m["sim_delta_ci_high"]
    assert float(tags["wer_delta_ci_low"]) == round(chosen.data.metrics["wer_delta_ci_low"], 4)
    assert "paired 95% interval" in version.description
    # the README's command, in a process of its own: the registry is the tracking server's
    code = f"import mlflow; print(mlflow.artifacts.download_artifacts('models:/{model_name}/{version.version}'))"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}
    got = subprocess.run([sys.executable, "-c", code], env=env, cwd=dest, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr[-3000:]
    folder = got.stdout.strip().splitlines()[-1]
    student = AutoModelForCausalLM.from_pretrained(folder)
    assert student.config.num_hidden_layers == chosen.data.metrics["n_layers"]
    return model_name
