"""The DDP-against-FSDP benchmark's code path, on the CPU with a tiny shape and 2 gloo workers:
both strategies in their own processes, the same loss, the estimate beside each measured peak."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_fsdp_step_benchmark_compares_ddp_and_fsdp_on_the_same_loss(tmp_path):
    out = tmp_path / "fsdp"
    args = ["--shape", "tiny", "--length", "48", "--text", "8", "--repeats", "1", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "fsdp_step.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    runs = json.loads(out.with_suffix(".json").read_text())["runs"]
    assert set(runs) == {"ddp", "fsdp"} and all(len(ranks) == 2 for ranks in runs.values())
    for r in range(2):  # the FSDP step is the DDP step, worker for worker
        assert runs["fsdp"][r]["loss"] == pytest.approx(runs["ddp"][r]["loss"], rel=1e-4)
    for ranks in runs.values():
        for row in ranks:
            terms = row["estimate_terms"]
            assert row["estimate"] == pytest.approx(sum(terms.values()) + row["runtime_rss"])
            assert row["peak_rss"] >= row["runtime_rss"] > 0 and row["seconds"] > 0
    # the student's training state is split under FSDP: less optimizer state per worker
    assert runs["fsdp"][0]["estimate_terms"]["optimizer"] == pytest.approx(
        runs["ddp"][0]["estimate_terms"]["optimizer"] / 2
    )
    table = out.with_suffix(".md").read_text()
    assert "| ddp |" in table and "| fsdp |" in table and "FSDP against DDP: time x" in table
