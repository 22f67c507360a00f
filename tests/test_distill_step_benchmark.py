"""The distillation-step benchmark's code path, on the CPU with a tiny shape: both ways run in
their own processes, give the same loss, and the ratios come out of one run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_distill_step_benchmark_compares_the_two_ways_on_the_same_loss(tmp_path):
    out = tmp_path / "step"
    args = ["--shape", "tiny", "--dtype", "fp32", "--length", "48", "--text", "8", "--repeats", "1"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "distill_step.py"), *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert set(rows) == {"full", "speech"}
    assert rows["speech"]["loss"] == pytest.approx(rows["full"]["loss"], rel=1e-4)  # the same terms
    assert all(r["seconds"] > 0 and r["weights_bytes"] > 0 for r in rows.values())
    table = out.with_suffix(".md").read_text()
    assert "| full logits |" in table and "| speech head |" in table and "speech head against full logits" in table
