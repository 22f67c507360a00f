import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# the suite runs two workers, each with its own Ray clusters, on one 24 GiB machine: Ray's memory
# monitor (default: kill at 95% of the node) counts both suites' processes as one node's
os.environ.setdefault("RAY_memory_usage_threshold", "0.98")

import socket

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM


def _tiny(model_cls, config_cls, vocab: int, layers: int, seed: int):
    torch.manual_seed(seed)
    cfg = config_cls(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return model_cls(cfg).eval()


def tiny_llama(layers: int = 6, seed: int = 0) -> LlamaForCausalLM:
    return _tiny(LlamaForCausalLM, LlamaConfig, 97, layers, seed)


def tiny_qwen2(layers: int = 6, seed: int = 0) -> Qwen2ForCausalLM:
    return _tiny(Qwen2ForCausalLM, Qwen2Config, 101, layers, seed)


@pytest.fixture(params=["llama", "qwen2"])
def tiny_model(request):
    return (tiny_llama if request.param == "llama" else tiny_qwen2)()


TINY_WORLD = [
    "world.mini.n_sentences=300",
    "world.mini.dev_sentences=16",
    "world.mini.test_sentences=16",
    "world.teacher.layers=4",
    "world.teacher.hidden=32",
    "world.teacher.heads=2",
    "world.teacher.kv_heads=2",
    "world.teacher.mlp=64",
    "world.teacher.steps=3",
    "world.teacher.batch_size=8",
    "world.teacher.warmup=1",
    "score.n_items=8",
    "score.n_pairs=16",
    "score.batch_size=8",
    "evaluate.n_items=8",
    "evaluate.batch_size=8",
    "evaluate.max_new_tokens=60",
    "evaluate.passes=1",
    "tracking.system_metrics=false",
]


@pytest.fixture
def tiny_cfg(tmp_path, monkeypatch):
    """A reduced mini world and teacher: the real code paths, in seconds."""
    from orchestrator.config import load_config

    monkeypatch.setenv("PRUN_TTS_CACHE", str(tmp_path / "cache"))
    return load_config(
        "configs/mini.yaml",
        TINY_WORLD + [f"world.teacher.path={tmp_path / 'no-teacher'}", f"output_dir={tmp_path / 'runs'}"],
    )


@pytest.fixture
def tiny_world(tiny_cfg):
    from orchestrator.mini import build_mini_world

    return build_mini_world(tiny_cfg, n_pairs=64)


@pytest.fixture
def random_teacher(tiny_cfg, tiny_world):
    from transformers import LlamaForCausalLM

    from orchestrator.mini.teacher import teacher_model_config

    torch.manual_seed(0)
    return LlamaForCausalLM(teacher_model_config(tiny_cfg, tiny_world)).eval()


def make_identity(model, layer: int):
    """Zero a layer's output projections: its residual branch adds nothing, so the layer is the identity."""
    from orchestrator.anatomy import decoder_layers

    block = decoder_layers(model)[layer]
    with torch.no_grad():
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()
    return model


def free_port() -> int:
    """A port nothing listens on (for servers the test starts, or as an address that does not answer)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pytest_collection_modifyitems(items):
    """The longest files first (`slow(minutes=...)`): with `make test`'s two workers taking a file
    at a time (pytest-xdist, --dist loadfile), the short files then fill both workers' ends."""
    items.sort(key=lambda item: -(m.kwargs.get("minutes", 1) if (m := item.get_closest_marker("slow")) else 0))
