"""The decode benchmark's code path, on the CPU with a tiny shape: every path of every model is
measured in one run, ratios are relative to the teacher of the same batch."""

import importlib.util
from pathlib import Path

import pytest
import torch


def load_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "decode_speed.py"
    spec = importlib.util.spec_from_file_location("decode_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_benchmark_measures_students_and_paths_against_the_teacher():
    bench = load_benchmark()
    rows = bench.run_shape(
        "tiny",
        [0.5],
        [1, 2],
        prompt=8,
        new=6,
        repeats=1,
        device=torch.device("cpu"),
        dtype=torch.float32,
        fast="static",
        log=lambda *_: None,
    )
    paths = ["eager, full head", "eager, speech head", "fast (static), speech head"]
    assert [(r["model"], r["path"], r["batch"]) for r in rows] == [
        (m, p, b) for b in (1, 2) for m in ("8 layers (teacher)", "4 layers") for p in paths
    ]
    by = {(r["model"], r["path"], r["batch"]): r for r in rows}
    eager_teacher = by[("8 layers (teacher)", "eager, full head", 1)]
    student = by[("4 layers", "eager, speech head", 1)]
    teacher_same = by[("8 layers (teacher)", "eager, speech head", 1)]
    assert eager_teacher["speedup"] == 1.0 and eager_teacher["speedup_vs_eager_teacher"] == 1.0
    assert student["speedup"] == pytest.approx(student["tokens_per_s"] / teacher_same["tokens_per_s"])
    assert student["speedup_vs_eager_teacher"] == pytest.approx(student["tokens_per_s"] / eager_teacher["tokens_per_s"])
    assert student["params_m"] < eager_teacher["params_m"]
    assert student["rtf"] == 50.0 / student["tokens_per_s"]
    # the speech head reads fewer head rows, half the layers fewer layer weights: higher bounds
    full_bound = by[("4 layers", "eager, full head", 1)]["bound_tokens_per_s"]
    assert student["bound_tokens_per_s"] > full_bound > eager_teacher["bound_tokens_per_s"]
    table = bench.format_rows(rows)
    assert "| tiny | 4 layers | fast (static), speech head | 2 |" in table
    assert "tiny: 4 layers, speech head" in bench.goals(rows)


def test_weight_bytes_count_the_head_slice_and_not_the_input_table():
    bench = load_benchmark()
    model, head_ids, *_ = bench.SHAPES["tiny"]()
    layers = sum(p.numel() * 4 for p in model.model.layers.parameters()) + model.model.norm.weight.numel() * 4
    hidden = model.config.hidden_size
    assert bench.weight_bytes_per_token(model) == layers + model.config.vocab_size * hidden * 4
    span = max(head_ids) - min(head_ids) + 1
    assert bench.weight_bytes_per_token(model, head_ids) == layers + span * hidden * 4 + span * 4  # rows + bias
