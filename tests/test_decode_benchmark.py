"""The GPU decode benchmark's code path, on the CPU with a tiny shape: students are
measured beside the teacher, ratios are relative to the teacher of the same batch."""
import importlib.util
from pathlib import Path

import torch


def load_benchmark():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "decode_speed.py"
    spec = importlib.util.spec_from_file_location("decode_speed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_decode_benchmark_measures_students_against_the_teacher():
    bench = load_benchmark()
    rows = bench.run_shape("tiny", [0.5], [1, 2], prompt=8, new=6, repeats=1, device=torch.device("cpu"),
                           dtype=torch.float32, log=lambda *_: None)
    assert [(r["model"], r["batch"]) for r in rows] == [("8 layers (teacher)", 1), ("4 layers", 1),
                                                       ("8 layers (teacher)", 2), ("4 layers", 2)]
    teacher, student = rows[0], rows[1]
    assert teacher["speedup"] == 1.0 and student["speedup"] == student["tokens_per_s"] / teacher["tokens_per_s"]
    assert student["params_m"] < teacher["params_m"]
    # half the layers: fewer weight bytes per token, so a higher bandwidth bound
    assert student["bound_tokens_per_s"] > teacher["bound_tokens_per_s"]
    assert student["rtf"] == 50.0 / student["tokens_per_s"]
    assert "| tiny | 4 layers | 2 |" in bench.format_rows(rows)


def test_weight_bytes_skip_the_embedding_table_only_when_untied():
    bench = load_benchmark()
    cls, kwargs, _ = bench.SHAPES["tiny"]
    tied = cls(cls.config_class(**kwargs))
    untied = cls(cls.config_class(**{**kwargs, "tie_word_embeddings": False}))
    all_bytes = sum(p.numel() * 4 for p in tied.parameters())
    assert bench.weight_bytes_per_token(tied) == all_bytes  # the tied table is read as the output head
    emb = untied.get_input_embeddings().weight
    assert bench.weight_bytes_per_token(untied) == sum(p.numel() * 4 for p in untied.parameters()) - emb.numel() * 4
