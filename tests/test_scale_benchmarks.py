"""The code paths of two scale-out benchmarks, at tiny sizes: a Train worker's peak memory with
1x and 10x the shards (pairs streamed by Ray Data, or held), and a trial's evaluation on one
worker against two (rows gathered equal to one worker's)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow(minutes=3)


def bench(script: str, *args: str) -> str:
    cmd = [sys.executable, str(ROOT / "benchmarks" / script), *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done.stdout


def test_stream_memory_measures_one_worker_with_pairs_streamed_and_held(tmp_path):
    out = tmp_path / "stream"
    bench("stream_memory.py", "--utterances", "60", "--steps", "2", "--out", str(out))
    results = json.loads(out.with_suffix(".json").read_text())["results"]
    assert [(r["scale"], r["streamed"]) for r in results] == [(1, False), (1, True), (10, False), (10, True)]
    pairs = {r["scale"]: r["pairs"] for r in results}
    assert pairs[10] > 8 * pairs[1] > 0  # the budget grows with the shards
    for r in results:  # held: the budget's pairs in the worker; streamed: none
        assert r["held_pairs"] == (0 if r["streamed"] else r["pairs"]) and r["peak_rss"] > 0
    assert "streamed pairs: one worker's peak RSS at 10x the shards / 1x = " in out.with_suffix(".md").read_text()


def test_eval_workers_times_one_worker_against_two_with_equal_rows(tmp_path):
    out = tmp_path / "eval"
    stdout = bench("eval_workers.py", "--items", "4", "--passes", "1", "--out", str(out))
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["rows"] == 4 and record["one_worker_s"] > 0 and record["two_workers_s"] > 0
    assert "(rows equal, item for item)" in stdout
