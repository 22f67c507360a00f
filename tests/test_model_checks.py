"""check_model_dir and check_output_dir: bad model folders and output locations refused up front."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import tiny_llama, tiny_qwen2
from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

from orchestrator.config import ConfigError
from orchestrator.model_checks import check_model_dir, check_output_dir

MINI_TEACHER = Path(__file__).resolve().parents[1] / "orchestrator" / "assets" / "mini-teacher"


def refused(path, phrase: str, setting: str = "--model", family: str = "any") -> str:
    with pytest.raises(ConfigError) as e:
        check_model_dir(str(path), setting, family)
    msg = str(e.value)
    assert msg.startswith(setting), msg
    assert phrase in msg, msg
    return msg


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints, each saved once for the whole file."""
    root = tmp_path_factory.mktemp("models")
    out = {}
    out["llama"] = root / "llama"
    tiny_llama(layers=2).save_pretrained(out["llama"])
    out["qwen2"] = root / "qwen2"
    tiny_qwen2(layers=2).save_pretrained(out["qwen2"])
    torch.manual_seed(0)
    t5 = T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_decoder_layers=1, num_heads=2)
    out["t5"] = root / "t5"
    T5ForConditionalGeneration(t5).save_pretrained(out["t5"])
    gpt2 = GPT2Config(vocab_size=32, n_positions=16, n_embd=16, n_layer=2, n_head=2)
    out["gpt2"] = root / "gpt2"
    GPT2LMHeadModel(gpt2).save_pretrained(out["gpt2"])
    return out


def copy_of(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- models that pass ---


def test_good_models_pass(models):
    check_model_dir(str(models["llama"]), "--model")
    check_model_dir(str(models["llama"]), "world.teacher.path", "llasa")
    check_model_dir(str(models["llama"]), "world.teacher.path", "mini")
    check_model_dir(str(models["qwen2"]), "evaluate --model")


def test_shipped_mini_teacher_passes():
    check_model_dir(str(MINI_TEACHER), "world.teacher.path", "mini")
    check_model_dir(str(MINI_TEACHER), "--model")


def test_hub_id_passes_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # so owner/name is not a local path
    check_model_dir("HKUSTAudio/Llasa-1B", "world.teacher.path")
    check_model_dir("FunAudioLLM/CosyVoice2-0.5B", "world.teacher.path", "cosyvoice2")
    assert list(tmp_path.iterdir()) == []


def test_sharded_and_bin_weights_pass(models, tmp_path):
    sharded = tmp_path / "sharded"
    tiny_llama(layers=2).save_pretrained(sharded, max_shard_size="20KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    check_model_dir(str(sharded), "--model")
    shards = sorted(json.loads((sharded / "model.safetensors.index.json").read_text())["weight_map"].values())
    (sharded / shards[-1]).unlink()
    refused(sharded, shards[-1])
    refused(sharded, "re-download it")

    binary = copy_of(models["llama"], tmp_path / "bin")
    (binary / "model.safetensors").unlink()
    torch.save(tiny_llama(layers=2).state_dict(), binary / "pytorch_model.bin")
    check_model_dir(str(binary), "--model")
    data = (binary / "pytorch_model.bin").read_bytes()
    (binary / "pytorch_model.bin").write_bytes(data[: len(data) // 2])
    refused(binary, "cut short")


# --- models that are refused ---


def test_encoder_decoder_refused(models):
    msg = refused(models["t5"], "an encoder-decoder model", setting="world.teacher.path")
    assert "decoder-only LMs whose layers are under model.layers" in msg
    assert msg.startswith(f"world.teacher.path={models['t5']}:")


def test_gpt2_refused_naming_where_layers_are(models):
    msg = refused(models["gpt2"], "transformer.h, not model.layers")
    assert "llama" in msg and "qwen2" in msg  # the accepted model types are listed


def test_config_without_weights_refused(models, tmp_path):
    d = copy_of(models["llama"], tmp_path / "config-only")
    (d / "model.safetensors").unlink()
    refused(d, "holds a config but no weights")


def test_truncated_safetensors_refused(models, tmp_path):
    d = copy_of(models["llama"], tmp_path / "truncated")
    f = d / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    msg = refused(d, "model.safetensors")
    assert "cut short" in msg
    f.write_bytes(data[:5])
    refused(d, "too short for a safetensors file")
    f.write_bytes(data[:8] + b"{not json" + data[17:])
    refused(d, "damaged header")


def test_damaged_config_refused(models, tmp_path):
    d = copy_of(models["llama"], tmp_path / "damaged")
    (d / "config.json").write_text('{"model_type": "llama", ')
    refused(d, "config.json is damaged")


def test_other_configs_refused(models, tmp_path):
    d = copy_of(models["llama"], tmp_path / "other")
    cfg = json.loads((d / "config.json").read_text())
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "bert", "architectures": ["BertModel"]}))
    refused(d, "encoder-only")
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "opt", "architectures": ["OPTForCausalLM"]}))
    refused(d, "model.decoder.layers")
    (d / "config.json").write_text(json.dumps({**cfg, "model_type": "made_up"}))
    refused(d, "accepted model types: llama")
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if k != "model_type"}))
    refused(d, "names no model_type")
    (d / "config.json").write_text(json.dumps({**cfg, "architectures": ["LlamaForSequenceClassification"]}))
    refused(d, "not a causal LM")


def test_missing_path_refused(tmp_path):
    refused(tmp_path / "no" / "such" / "model", "does not exist")
    refused("./student", "does not exist")  # leading ., not a hub id
    refused("~/models/x", "the shell did not expand ~")


def test_file_as_model_refused(models):
    refused(models["llama"] / "config.json", "is a file, not a model directory")


def test_empty_and_parent_dirs_refused(models, tmp_path):
    refused(tmp_path, "holds no config.json")
    run = tmp_path / "run"
    run.mkdir()
    copy_of(models["llama"], run / "student")
    refused(run, f"did you mean {run / 'student'}")


# --- CosyVoice 2 folders ---


def cosyvoice_like(root: Path, llm: bytes | None, blank_config: bool = True) -> Path:
    root.mkdir()
    if llm is not None:
        (root / "llm.pt").write_bytes(llm)
    if blank_config:
        (root / "CosyVoice-BlankEN").mkdir()
        (root / "CosyVoice-BlankEN" / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    return root


def test_cosyvoice_empty_llm_refused(tmp_path):
    d = cosyvoice_like(tmp_path / "cv", b"")
    refused(d, "llm.pt (the CosyVoice 2 LLM weights) is empty", setting="world.teacher.path", family="cosyvoice2")


def test_cosyvoice_files_checked(tmp_path):
    good = tmp_path / "state.pt"
    torch.save({"speech_embedding.weight": torch.zeros(4, 2)}, good)
    data = good.read_bytes()
    ok = cosyvoice_like(tmp_path / "ok", data)
    check_model_dir(str(ok), "world.teacher.path", "cosyvoice2")
    check_model_dir(str(ok), "--model")
    refused(ok, "set world.name=cosyvoice2", setting="world.teacher.path", family="llasa")
    refused(ok / "CosyVoice-BlankEN", "pass its parent", setting="world.teacher.path", family="cosyvoice2")
    refused(cosyvoice_like(tmp_path / "cut", data[: len(data) // 2]), "cut short")
    refused(cosyvoice_like(tmp_path / "junk", b"hello world"), "not a torch checkpoint")
    refused(cosyvoice_like(tmp_path / "noblank", data, blank_config=False), "no CosyVoice-BlankEN/config.json")
    refused(cosyvoice_like(tmp_path / "nollm", None), "without its LLM weights")


def test_cosyvoice_students_pass(tmp_path):
    from orchestrator.families.cosyvoice2 import CosyVoice2LM, CosyVoice2LMConfig, save_cosyvoice_llm

    torch.manual_seed(0)
    cfg = CosyVoice2LMConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        speech_token_size=10,
    )
    model = CosyVoice2LM(cfg)
    model.save_pretrained(tmp_path / "hf")
    native = save_cosyvoice_llm(model, tmp_path / "native")
    for d in (tmp_path / "hf", native):
        check_model_dir(str(d), "world.teacher.path", "cosyvoice2")
        check_model_dir(str(d), "--model")
    refused(tmp_path / "hf", "not a llasa model", setting="world.teacher.path", family="llasa")
    refused(tmp_path / "hf", "set world.name=cosyvoice2", setting="world.teacher.path", family="mini")


def test_plain_qwen2_refused_for_cosyvoice(models):
    refused(models["qwen2"], "not a CosyVoice 2 LLM", setting="world.teacher.path", family="cosyvoice2")


# --- output locations ---


def test_output_under_a_file_refused(tmp_path):
    (tmp_path / "some_file").write_text("x")
    before = tree(tmp_path)
    with pytest.raises(ConfigError, match=r"^--out .*some_file is a file, so .* cannot be created"):
        check_output_dir(str(tmp_path / "some_file" / "student"), "--out")
    with pytest.raises(ConfigError, match=r"^--out .*: is a file, not a directory"):
        check_output_dir(str(tmp_path / "some_file"), "--out")
    with pytest.raises(ConfigError, match="is a file, so"):
        check_output_dir(str(tmp_path / "some_file" / "a" / "b"), "output_dir")
    assert tree(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_output_in_read_only_dir_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ConfigError, match=r"^output_dir=.*not writable"):
            check_output_dir(str(ro / "runs" / "x"), "output_dir")
        with pytest.raises(ConfigError, match="not writable"):
            check_output_dir(str(ro), "--out")
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o700)


def test_fine_output_paths_pass_and_create_nothing(tmp_path, monkeypatch):
    before = tree(tmp_path)
    check_output_dir(str(tmp_path / "a" / "b" / "student"), "--out")
    check_output_dir(str(tmp_path), "--out")  # an existing writable directory
    monkeypatch.chdir(tmp_path)
    check_output_dir("runs/new", "output_dir")
    assert tree(tmp_path) == before


def test_output_in_unwritable_dir_refused_whoever_runs(tmp_path, monkeypatch):
    """The same refusal as above with os.access answering as it would for a non-root user (root passes
    every permission check, so the test above is skipped under root)."""
    import orchestrator.model_checks as mc

    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    monkeypatch.setattr(mc.os, "access", lambda p, mode: False if Path(p) == ro else real_access(p, mode))
    with pytest.raises(ConfigError, match=rf"^--out {ro / 'student'}: cannot create it, {ro} is not writable"):
        check_output_dir(str(ro / "student"), "--out")
    assert list(ro.iterdir()) == []
