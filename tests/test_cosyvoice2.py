import json
import sys

import pytest
import torch
from tiny_tokenizers import char_tokenizer
from torch import nn
from transformers import Qwen2ForCausalLM

from orchestrator.batching import left_pad
from orchestrator.config import DistillConfig
from orchestrator.distill.data import collate
from orchestrator.distill.loop import loss_spec, make_state, train_step
from orchestrator.families.cosyvoice2 import (
    BLANK,
    CosyVoice2Family,
    CosyVoice2LM,
    CosyVoice2LMConfig,
    load_cosyvoice_llm,
    save_cosyvoice_llm,
)
from orchestrator.hub import MissingPiece
from orchestrator.prune.surgery import drop_layers, layers_removed
from orchestrator.world import Sample

S = 61  # speech tokens: ids 0..60 codes, 61 eos, 62/63 fill, 64 sos, 65 task, 66+ text
TEXT_VOCAB = 100
H, MLP, KV = 32, 64, 16  # KV: 2 kv heads x head dim 8


def tiny_lm(layers: int = 4, seed: int = 0, speech_token_size: int = S) -> CosyVoice2LM:
    torch.manual_seed(seed)
    cfg = CosyVoice2LMConfig(
        vocab_size=TEXT_VOCAB,
        hidden_size=H,
        intermediate_size=MLP,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        rope_theta=1e6,
        bos_token_id=99,
        eos_token_id=99,
        speech_token_size=speech_token_size,
    )
    return CosyVoice2LM(cfg).eval()


def tokenizer():
    return char_tokenizer(TEXT_VOCAB, {"<|endoftext|>": 99})


def expected_shapes(n_layers: int) -> dict[str, tuple[int, ...]]:
    """Qwen2LM's state dict as CosyVoice's llm.pt holds it, written out independently."""
    shapes = {"llm_embedding.weight": (2, H), "llm.model.model.embed_tokens.weight": (TEXT_VOCAB, H)}
    for i in range(n_layers):
        p = f"llm.model.model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (H, H),
            p + "self_attn.q_proj.bias": (H,),
            p + "self_attn.k_proj.weight": (KV, H),
            p + "self_attn.k_proj.bias": (KV,),
            p + "self_attn.v_proj.weight": (KV, H),
            p + "self_attn.v_proj.bias": (KV,),
            p + "self_attn.o_proj.weight": (H, H),
            p + "mlp.gate_proj.weight": (MLP, H),
            p + "mlp.up_proj.weight": (MLP, H),
            p + "mlp.down_proj.weight": (H, MLP),
            p + "input_layernorm.weight": (H,),
            p + "post_attention_layernorm.weight": (H,),
        }
    return shapes | {
        "llm.model.model.norm.weight": (H,),
        "llm.model.lm_head.weight": (TEXT_VOCAB, H),
        "llm_decoder.weight": (S + 3, H),
        "llm_decoder.bias": (S + 3,),
        "speech_embedding.weight": (S + 3, H),
    }


def shapes_of(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


@pytest.fixture
def teacher_dir(tmp_path):
    """A CosyVoice2-0.5B-style directory of the tiny teacher, with its tokenizer beside the Qwen2 config."""
    d = save_cosyvoice_llm(tiny_lm(4), tmp_path / "teacher")
    tokenizer().save_pretrained(d / BLANK)
    return d


def cosyvoice_logits(model_dir, text_ids: list[int], prompt_codes: list[int]) -> torch.Tensor:
    """What CosyVoice's own code computes: Qwen2Encoder = stock Qwen2ForCausalLM.from_pretrained(CosyVoice-BlankEN),
    llm.pt loaded on top, input = sos, text embeddings, task id, prompt speech embeddings (Qwen2LM.inference)."""
    state = torch.load(model_dir / "llm.pt", weights_only=True)
    qwen = Qwen2ForCausalLM.from_pretrained(model_dir / BLANK).eval()
    qwen.load_state_dict({k[len("llm.model.") :]: v for k, v in state.items() if k.startswith("llm.model.")})
    llm_embedding = nn.Embedding.from_pretrained(state["llm_embedding.weight"])
    speech_embedding = nn.Embedding.from_pretrained(state["speech_embedding.weight"])
    decoder = nn.Linear(H, S + 3)
    decoder.load_state_dict({"weight": state["llm_decoder.weight"], "bias": state["llm_decoder.bias"]})
    with torch.no_grad():
        lm_input = torch.cat(
            [
                llm_embedding.weight[0:1],
                qwen.model.embed_tokens(torch.tensor(text_ids)),
                llm_embedding.weight[1:2],
                speech_embedding(torch.tensor(prompt_codes)),
            ]
        )[None]
        hidden = qwen(inputs_embeds=lm_input, output_hidden_states=True).hidden_states[-1]
        return decoder(hidden)


def test_state_dict_has_cosyvoice_keys_and_round_trips(tmp_path):
    model = tiny_lm(4)
    assert shapes_of(model.state_dict()) == expected_shapes(4)
    out = save_cosyvoice_llm(model, tmp_path / "cv")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cv"]  # no temporary left behind
    saved = torch.load(out / "llm.pt", weights_only=True)
    assert list(saved) == list(model.state_dict()) and shapes_of(saved) == expected_shapes(4)
    loaded = load_cosyvoice_llm(out)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    ids = torch.tensor([[S + 3, S + 5, S + 9, S + 4, 3, 17, 60]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not empty"):
        save_cosyvoice_llm(model, out)


def test_loads_a_download_written_by_cosyvoice_and_keeps_its_config_format(tmp_path):
    """llm.pt as CosyVoice saves it (a plain state dict, here with a training checkpoint's extra
    entries) beside a transformers-4 Qwen2.5 config.json (rope_theta, torch_dtype, no layer_types)."""
    model = tiny_lm(4)
    d = tmp_path / "CosyVoice2-0.5B"
    (d / BLANK).mkdir(parents=True)
    torch.save({**model.state_dict(), "epoch": 3, "step": 1000}, d / "llm.pt")
    (d / BLANK / "config.json").write_text(
        json.dumps(
            {
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "attention_dropout": 0.0,
                "bos_token_id": 99,
                "eos_token_id": 99,
                "hidden_act": "silu",
                "hidden_size": H,
                "initializer_range": 0.02,
                "intermediate_size": MLP,
                "max_position_embeddings": 256,
                "max_window_layers": 4,
                "num_attention_heads": 4,
                "num_hidden_layers": 4,
                "num_key_value_heads": 2,
                "rms_norm_eps": 1e-6,
                "rope_theta": 1000000.0,
                "sliding_window": 256,
                "tie_word_embeddings": True,
                "torch_dtype": "bfloat16",
                "transformers_version": "4.43.1",
                "use_cache": True,
                "use_sliding_window": False,
                "vocab_size": TEXT_VOCAB,
            }
        )
    )
    loaded = load_cosyvoice_llm(d)
    assert loaded.config.speech_token_size == S and loaded.dtype == torch.float32
    ids = torch.tensor([[S + 3, S + 5, S + 9, S + 12, S + 4, 3, 17, 60, 5]])
    with torch.no_grad():  # equal logits: rope_theta 1e6 was read, not a default
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    out = save_cosyvoice_llm(drop_layers(loaded, drop=[0]), tmp_path / "student", source_dir=d)
    qwen_cfg = json.loads((out / BLANK / "config.json").read_text())
    assert qwen_cfg["num_hidden_layers"] == 3 and qwen_cfg["rope_theta"] == 1e6
    assert qwen_cfg["torch_dtype"] == "bfloat16" and "rope_parameters" not in qwen_cfg and "layer_types" not in qwen_cfg
    (out / BLANK / "config.json").write_text((d / BLANK / "config.json").read_text())  # 4 layers, llm.pt has 3
    with pytest.raises(MissingPiece, match="does not fit"):
        load_cosyvoice_llm(out)


def test_forward_maps_each_id_range_to_its_table():
    model = tiny_lm(2)
    ids = torch.tensor([[S + 3, S + 5 + 7, S + 5 + 99, S + 4, 0, S - 1, S, S + 2]])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
        emb = out.hidden_states[0][0]
        qwen = model.llm.model.model
        torch.testing.assert_close(emb[0], model.llm_embedding.weight[0])
        torch.testing.assert_close(emb[1], qwen.embed_tokens.weight[7])
        torch.testing.assert_close(emb[2], qwen.embed_tokens.weight[99])
        torch.testing.assert_close(emb[3], model.llm_embedding.weight[1])
        for pos, row in [(4, 0), (5, S - 1), (6, S), (7, S + 2)]:
            torch.testing.assert_close(emb[pos], model.speech_embedding.weight[row])
        assert len(out.hidden_states) == 3 and out.logits.shape == (1, 8, S + 3)
        torch.testing.assert_close(out.logits, model.llm_decoder(out.hidden_states[-1]))


def test_pruned_student_exports_for_cosyvoice(teacher_dir, tmp_path):
    teacher = load_cosyvoice_llm(teacher_dir)
    student = drop_layers(teacher, drop=[1, 2])
    assert student.llm.model.config is student.config  # one config: the inner Qwen2 sees the new layer count
    assert shapes_of(student.state_dict()) == expected_shapes(2)
    torch.testing.assert_close(
        student.state_dict()["llm.model.model.layers.1.mlp.up_proj.weight"],
        teacher.state_dict()["llm.model.model.layers.3.mlp.up_proj.weight"],
    )
    ids = torch.tensor([[S + 3, S + 5, S + 4, 1, 2]])
    with torch.no_grad(), layers_removed(teacher, [1, 2]):  # how the importance scorers try layer sets
        torch.testing.assert_close(teacher(input_ids=ids).logits, student(input_ids=ids).logits)
    assert teacher.config.num_hidden_layers == 4 and len(teacher.llm.model.model.layers) == 4
    out = save_cosyvoice_llm(student, tmp_path / "student", source_dir=teacher_dir)
    qwen_cfg = json.loads((out / BLANK / "config.json").read_text())
    assert qwen_cfg["model_type"] == "qwen2" and qwen_cfg["num_hidden_layers"] == 2
    assert qwen_cfg["rope_theta"] == 1e6  # what CosyVoice's transformers 4.x reads
    assert qwen_cfg["prun_tts"]["kept_layers"] == [0, 3]
    assert (out / BLANK / "tokenizer_config.json").is_file()
    assert shapes_of(torch.load(out / "llm.pt", weights_only=True)) == expected_shapes(2)

    family = CosyVoice2Family.from_dir(out, speech_token_size=S)
    prompt = family.prompt_ids("hi there", "ok", [5, 9, 2])
    text = family.tokenizer.encode("hi there", add_special_tokens=False) + family.tokenizer.encode(
        "ok", add_special_tokens=False
    )
    with torch.no_grad():
        ours = load_cosyvoice_llm(out)(input_ids=torch.tensor([prompt])).logits
    torch.testing.assert_close(ours, cosyvoice_logits(out, text, [5, 9, 2]))


def test_generate_with_cache_left_padding_and_one_at_a_time():
    model = tiny_lm(4, seed=2)
    with torch.no_grad():  # clear greedy margins, and eos reached at different steps per prompt
        model.llm_decoder.weight.mul_(40)
        model.llm_decoder.bias[S] += 4
    f = CosyVoice2Family(tokenizer(), S)
    prompts = [f.prompt_ids("ab", "cde", [1, 2, 3]), f.prompt_ids("x", "yz w", [5]), f.prompt_ids("", "q", [])]
    kw = dict(do_sample=False, max_new_tokens=12, eos_token_id=f.end_id, pad_token_id=f.pad_id)
    ids, mask = left_pad(prompts, f.pad_id)
    with torch.no_grad():
        cached = model.generate(input_ids=ids, attention_mask=mask, **kw)[:, ids.shape[1] :]
        uncached = model.generate(input_ids=ids, attention_mask=mask, use_cache=False, **kw)[:, ids.shape[1] :]
        singles = [model.generate(input_ids=torch.tensor([p]), **kw)[0, len(p) :] for p in prompts]
    assert torch.equal(cached, uncached)
    assert (cached < S + 3).all()  # only speech ids come out, so they feed back through speech_embedding
    assert [len(f.codes_of(row.tolist())) for row in cached] == [1, 5, 7]
    for row, single in zip(cached, singles):
        assert single[-1] == f.end_id
        assert torch.equal(row[: len(single)], single)
        assert (row[len(single) :] == f.pad_id).all()  # finished early: padded after eos


def test_save_pretrained_round_trip_and_family_loads_both_layouts(teacher_dir, tmp_path):
    f = CosyVoice2Family.from_dir(teacher_dir, speech_token_size=S)
    from_llm_pt = f.load_model(str(teacher_dir))
    from_llm_pt.save_pretrained(tmp_path / "hf")
    from_hf = f.load_model(str(tmp_path / "hf"))
    assert from_hf.generation_config.eos_token_id == S and from_hf.generation_config.pad_token_id == S + 1
    assert from_hf.llm.model.lm_head.weight is from_hf.llm.model.model.embed_tokens.weight  # tied again
    ids = torch.tensor([f.prompt_ids("ab", "c", [1, 2])])
    with torch.no_grad():
        torch.testing.assert_close(from_hf(input_ids=ids).logits, from_llm_pt(input_ids=ids).logits, rtol=0, atol=0)
    with pytest.raises(MissingPiece, match="speech tokens"):
        CosyVoice2Family(tokenizer(), speech_token_size=6561).load_model(str(teacher_dir))


def test_family_layout_by_hand():
    f = CosyVoice2Family(tokenizer(), S)
    assert (f.end_id, f.pad_id, f.sos_id, f.task_id) == (61, 62, 64, 65)
    assert torch.equal(f.speech_ids, torch.arange(62))
    # 'a', 'b', 'c' are the char tokenizer's ids 0, 1, 2 -> 66, 67, 68; prompt and target text are joined
    assert f.prompt_ids("ab", "c", [4, 0, 60]) == [64, 66, 67, 68, 65, 4, 0, 60]
    ids, labels = f.training_ids(Sample("ab", "x", (4, 0, 60)), Sample("c", "x", (7, 8)))
    assert ids == [64, 66, 67, 68, 65, 4, 0, 60, 7, 8, 61]
    assert labels == [-100] * 5 + [4, 0, 60, 7, 8, 61]
    assert f.codes_of([3, 62, 63, 5, 70, 64, 61, 9]) == [3, 5]
    assert f.codes_of([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="0..60"):
        f.prompt_ids("a", "b", [61])


def test_one_distillation_step_moves_the_student():
    teacher = tiny_lm(4)
    for p in teacher.parameters():
        p.requires_grad_(False)
    student = drop_layers(teacher, drop=[1, 2])
    for p in student.parameters():
        p.requires_grad_(True)
    teacher.set_attn_implementation("eager")  # attention maps for the attention term
    student.set_attn_implementation("eager")
    f = CosyVoice2Family(tokenizer(), S)
    pairs = [
        (Sample("ab c", "x", (1, 2, 3)), Sample("de", "x", (4, 5, 6, 7))),
        (Sample("f", "y", (8,)), Sample("gh ij", "y", (9, 10))),
    ]
    batch = collate(f, pairs)
    weights = {"kl": 1.0, "latent": 1.0, "attention": 0.5, "embedding": 0.1, "ce": 0.5}
    spec = loss_spec(DistillConfig(weights=weights, on_policy=0.0), f.speech_ids, [0, 3], 4, f.pad_id, f.end_id)
    state = make_state(student, lr=1e-3, warmup=1, total_steps=2)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    terms = train_step(state, [batch], spec, teacher)
    assert {"kl", "latent", "attention", "embedding", "ce"} <= set(terms)
    assert all(torch.isfinite(torch.tensor(terms[k])) for k in weights) and terms["latent"] > 0
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("llm.model.model.layers.") for k in changed)
    assert "llm_decoder.weight" in changed and "speech_embedding.weight" in changed


def test_missing_pieces_say_what_to_get(tmp_path, monkeypatch):
    with pytest.raises(MissingPiece, match=r"llm\.pt.*huggingface-cli download FunAudioLLM/CosyVoice2-0\.5B"):
        load_cosyvoice_llm(tmp_path)
    torch.save({}, tmp_path / "llm.pt")
    with pytest.raises(MissingPiece, match="CosyVoice-BlankEN/config.json"):
        load_cosyvoice_llm(tmp_path)
    with pytest.raises(MissingPiece, match="CosyVoice-BlankEN"):
        CosyVoice2Family.from_dir(tmp_path / "nowhere")
    with pytest.raises(MissingPiece, match="CosyVoice 2 LLM"):
        CosyVoice2Family(tokenizer(), S).load_model(str(tmp_path / "no-model"))

    from orchestrator.speech.cosyvoice_vocoder import CosyVoiceVocoder
    from orchestrator.speech.s3tokens import S3Tokenizer

    with pytest.raises(MissingPiece, match="speech_tokenizer_v2.onnx"):  # offline: no download of the weights
        S3Tokenizer.from_pretrained(tmp_path / "speech_tokenizer_v2.onnx")
    monkeypatch.setitem(sys.modules, "s3tokenizer", None)  # as if not installed, whatever this machine has
    with pytest.raises(MissingPiece, match="pip install s3tokenizer"):
        S3Tokenizer.from_pretrained()
    monkeypatch.setitem(sys.modules, "cosyvoice", None)
    with pytest.raises(MissingPiece, match=r"github\.com/FunAudioLLM/CosyVoice.*Matcha-TTS.*PYTHONPATH"):
        CosyVoiceVocoder(tmp_path)


def test_a_saved_student_carries_the_cosyvoice_format(teacher_dir, tmp_path):
    """What distillation writes for a CosyVoice 2 student: the HF checkpoint and native/llm.pt."""
    from types import SimpleNamespace

    from orchestrator.world import save_student

    family = CosyVoice2Family.from_dir(teacher_dir, speech_token_size=S)
    student = drop_layers(family.load_model(str(teacher_dir)), drop=[0, 3])
    save_student(SimpleNamespace(family=family), student, tmp_path / "student")
    native = load_cosyvoice_llm(tmp_path / "student" / "native")
    assert shapes_of(native.state_dict()) == expected_shapes(2)
    assert (tmp_path / "student" / "native" / BLANK / "tokenizer.json").is_file()  # copied from the source
    again = family.load_model(str(tmp_path / "student"))  # the save_pretrained copy
    for k, v in student.state_dict().items():
        assert torch.equal(v, native.state_dict()[k]) and torch.equal(v, again.state_dict()[k])


def test_prune_command_on_a_cosyvoice_folder_writes_cosyvoice_layout(teacher_dir, tmp_path, capsys):
    from orchestrator.cli import main

    out = tmp_path / "lite"
    assert main(["prune", "--model", str(teacher_dir), "--drop", "1,2", "--out", str(out)]) == 0
    assert "kept layers [0, 3] of 4" in capsys.readouterr().out
    assert shapes_of(torch.load(out / "llm.pt", weights_only=True)) == expected_shapes(2)
    assert json.loads((out / BLANK / "config.json").read_text())["num_hidden_layers"] == 2
    assert main(["prune", "--model", str(teacher_dir), "--drop", "0,1,2,3", "--out", str(tmp_path / "x")]) == 2
    assert "remove all 4 layers" in capsys.readouterr().err and not (tmp_path / "x").exists()


def tiny_s3_tokenizer():
    """s3tokenizer's CosyVoice 2 model class with tiny random weights (the real one loads from ONNX)."""
    from s3tokenizer.model_v2 import ModelConfig, S3TokenizerV2

    from orchestrator.speech.s3tokens import S3Tokenizer

    torch.manual_seed(0)
    return S3Tokenizer(
        S3TokenizerV2("speech_tokenizer_v2_25hz", ModelConfig(n_audio_state=128, n_audio_head=2, n_audio_layer=1))
    )


def test_s3_tokens_of_audio_at_25_per_second(tmp_path):
    import numpy as np
    import soundfile as sf

    tok = tiny_s3_tokenizer()
    wav = torch.sin(torch.arange(32000) / 16000 * 2 * torch.pi * 220) * 0.3
    codes = tok.encode(wav)  # 2 s of audio
    assert len(codes) == 50 and all(isinstance(c, int) and 0 <= c < 6561 for c in codes)
    sf.write(tmp_path / "a.wav", wav.numpy().astype(np.float32), 16000)
    assert tok.encode(str(tmp_path / "a.wav")) == codes  # a path and the waveform agree
    assert tok.encode_batch([wav[:16000], wav]) == [tok.encode(wav[:16000]), codes]
