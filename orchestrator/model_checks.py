"""Checks of the model folders and output locations a user names, before any work starts.

`check_model_dir` reads only small files (config.json, a safetensors header, a zip's
central directory) and loads no weights, so a wrong `--model`, `evaluate --model` or
`world.teacher.path` is refused in a fraction of a second with one message that says
what to change, instead of a traceback minutes into a run. `check_output_dir` refuses an
output location that cannot be created or written, and creates nothing.

Both raise a `ConfigError` subclass: the CLI prints the message and exits 2.
"""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from pathlib import Path

from orchestrator.config import ConfigError

__all__ = [
    "ACCEPTED_MODEL_TYPES",
    "FAMILIES",
    "ModelDirError",
    "OutputDirError",
    "check_model_dir",
    "check_output_dir",
    "check_tokenizer_dir",
    "check_vocab_size",
]

FAMILIES = ("any", "mini", "llasa", "cosyvoice2")

COSYVOICE2_LM = "prun_tts_cosyvoice2_lm"  # CosyVoice2LMConfig.model_type (orchestrator/families/cosyvoice2.py)
BLANK = "CosyVoice-BlankEN"  # the Qwen2 config beside CosyVoice 2's llm.pt

# Decoder-only causal LMs whose `*ForCausalLM` keeps its decoder layers at `model.layers`
# (checked against transformers 5.x: `self.model = XModel(config)`, `XModel.layers = nn.ModuleList`),
# plus the project's CosyVoice 2 LLM (layers at `llm.model.model.layers`, found by prune.surgery).
ACCEPTED_MODEL_TYPES = (
    "llama",  # LLaSA, the mini teacher
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
    "mistral",
    "ministral",
    "mixtral",
    "gemma",
    "gemma2",
    "gemma3_text",
    "phi",
    "phi3",
    "olmo",
    "olmo2",
    "granite",
    "cohere",
    "cohere2",
    "starcoder2",
    "stablelm",
    "smollm3",
    "glm",
    "glm4",
    "helium",
    "nemotron",
    "deepseek_v3",
    COSYVOICE2_LM,
)

# Decoder-only LMs whose layers sit elsewhere: where they are.
_LAYERS_ELSEWHERE = {
    "gpt2": "transformer.h",
    "gptj": "transformer.h",
    "gpt_neo": "transformer.h",
    "gpt_bigcode": "transformer.h",
    "codegen": "transformer.h",
    "ctrl": "transformer.h",
    "falcon": "transformer.h",
    "bloom": "transformer.h",
    "openai-gpt": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
    "gpt_neox_japanese": "gpt_neox_japanese.layers",
    "opt": "model.decoder.layers",
    "mpt": "transformer.blocks",
    "dbrx": "transformer.blocks",
    "biogpt": "biogpt.layers",
    "mamba": "backbone.layers",
    "mamba2": "backbone.layers",
    "falcon_mamba": "backbone.layers",
    "rwkv": "rwkv.blocks",
    "xlnet": "transformer.layer",
}

_ENCODER_DECODER = {
    "t5",
    "mt5",
    "umt5",
    "longt5",
    "switch_transformers",
    "bart",
    "mbart",
    "pegasus",
    "pegasus_x",
    "bigbird_pegasus",
    "marian",
    "blenderbot",
    "blenderbot-small",
    "plbart",
    "mvp",
    "led",
    "fsmt",
    "m2m_100",
    "nllb-moe",
    "prophetnet",
    "whisper",
    "speech_to_text",
    "seamless_m4t",
    "seamless_m4t_v2",
    "encoder-decoder",
    "pop2piano",
}

_ENCODER_ONLY = {
    "bert",
    "roberta",
    "xlm-roberta",
    "distilbert",
    "albert",
    "electra",
    "deberta",
    "deberta-v2",
    "camembert",
    "modernbert",
    "wavlm",
    "wav2vec2",
    "hubert",
}

_WHAT_WE_PRUNE = (
    "prun-tts prunes decoder-only LMs whose layers are under model.layers, "
    "such as Llama (LLaSA) and Qwen2 (CosyVoice 2)"
)
_SAVE_HINT = "pass a directory written by prun-tts or save_pretrained"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_MAX_HEADER = 100 * 2**20  # a safetensors header this large is corruption, not metadata


class ModelDirError(ConfigError):
    """A model folder that cannot be what the setting asks for; the message says what to change."""


class OutputDirError(ConfigError):
    """An output location that cannot be created or written."""


def _named(setting: str, path: str | Path) -> str:
    """How the message names what the user typed: `--model DIR` or `world.teacher.path=DIR`."""
    return f"{setting} {path}" if setting.startswith("-") else f"{setting}={path}"


def looks_like_hub_id(path: str) -> bool:
    """`owner/name` as the model hub spells repository ids (one slash, no leading . or /)."""
    return bool(_HUB_ID.match(path)) and ".." not in path and "--" not in path


def check_model_dir(path: str, setting: str, family: str = "any") -> None:
    """Refuse (ModelDirError) a model folder prun-tts cannot load or prune, reading no weights.

    `setting`: what the user typed the path into (`--model`, `world.teacher.path`), named at the
    start of every message. `family`: "any", or the world (`mini`, `llasa`, `cosyvoice2`) whose
    model it must be. A missing path that reads like a hub id (`owner/name`) passes: the loaders
    explain a hub failure themselves.
    """
    if family not in FAMILIES:
        raise ValueError(f"family={family!r}; expected one of {', '.join(FAMILIES)}")
    p = Path(path)
    name = _named(setting, path)

    def refuse(why: str) -> ModelDirError:
        return ModelDirError(f"{name}: {why}")

    if not p.exists():
        if looks_like_hub_id(str(path)):
            return
        hint = (
            "; the shell did not expand ~, write the full path"
            if str(path).startswith("~")
            else f"; {_SAVE_HINT}, or a model-hub id (owner/name)"
        )
        if os.path.lexists(p):
            raise refuse(f"is a broken symbolic link (to {os.readlink(p)}){hint}")
        raise refuse(f"does not exist{hint}")
    if not p.is_dir():
        raise refuse(f"is a file, not a model directory; {_SAVE_HINT} (the folder that holds config.json)")
    if not os.access(p, os.R_OK | os.X_OK):
        raise refuse("cannot be read (no read permission on the directory); fix its permissions")

    if (p / "llm.pt").exists():
        _check_cosyvoice_dir(p, family, refuse)
        return

    config_file = p / "config.json"
    if not config_file.is_file():
        raise refuse(_no_config(p))
    config = _read_json(config_file, refuse, "config.json")
    if not isinstance(config, dict):
        raise refuse(f"config.json is damaged (not a JSON object); re-download it or {_SAVE_HINT}")
    _check_architecture(p, config, family, refuse)
    _check_weights(p, refuse)


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # what AutoTokenizer builds one from
LLASA_VOCAB = 193_800  # Llama 3's 128,256 text tokens, 8 special tokens, 65,536 X-Codec2 codes


def check_tokenizer_dir(path: str, setting: str, what: str) -> None:
    """Refuse (ModelDirError) a model folder without the tokenizer files `what` is built from
    (a hub id, or a path that is no folder, is left to check_model_dir and the loaders)."""
    p = Path(path)
    if not p.is_dir() or any((p / f).is_file() for f in TOKENIZER_FILES):
        return
    raise ModelDirError(
        f"{_named(setting, path)}: holds no tokenizer (no {', '.join(TOKENIZER_FILES)}), and {what} needs one; "
        "copy the checkpoint's tokenizer files beside config.json or download the whole checkpoint again "
        "(e.g. `huggingface-cli download HKUSTAudio/Llasa-1B --local-dir DIR`)"
    )


def check_vocab_size(path: str, setting: str, expected: int, world: str) -> None:
    """Refuse (ModelDirError) a model whose vocabulary (config.json's vocab_size) is not the one of
    the `world`'s family: a model of another world. Reads config.json only; a hub id passes."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return
    data = _read_json(config, lambda why: ModelDirError(f"{_named(setting, path)}: {why}"), "config.json")
    vocab = data.get("vocab_size") if isinstance(data, dict) else None
    if not isinstance(vocab, int) or vocab == expected:
        return
    guess = " (LLaSA's vocabulary: world.name=llasa)" if vocab == LLASA_VOCAB else ""
    raise ModelDirError(
        f"{_named(setting, path)}: its vocabulary has {vocab:,} tokens{guess}, the {world} world's has {expected:,}, "
        f"so it is not a model of the {world} world; set world.name to the world it was made for, or pass "
        f"a {world}-world model"
    )


def _no_config(p: Path) -> str:
    if (p / BLANK).is_dir():
        return (
            f"has {BLANK}/ but no llm.pt: a CosyVoice2-0.5B folder without its LLM weights; "
            "re-download it (`huggingface-cli download FunAudioLLM/CosyVoice2-0.5B --local-dir DIR`)"
        )
    try:
        subs = sorted(
            d.name for d in p.iterdir() if d.is_dir() and ((d / "config.json").is_file() or (d / "llm.pt").is_file())
        )
    except OSError:
        subs = []
    if subs:
        shown = ", ".join(str(p / s) for s in subs[:3])
        return f"holds no config.json, so it is not a model; did you mean {shown}? ({_SAVE_HINT})"
    return f"holds no config.json, so it is not a model; {_SAVE_HINT}"


def _read_json(f: Path, refuse, what: str):
    try:
        return json.loads(f.read_bytes())
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise refuse(
            f"{what} is damaged ({e.__class__.__name__}: {str(e)[:120]}); re-download it or {_SAVE_HINT}"
        ) from None
    except OSError as e:
        raise refuse(
            f"{what} cannot be read ({e.__class__.__name__}: {e.strerror or e}); fix its permissions"
        ) from None


def _check_cosyvoice_dir(p: Path, family: str, refuse) -> None:
    """CosyVoice2-0.5B's layout (or save_cosyvoice_llm's): llm.pt + CosyVoice-BlankEN/config.json."""
    if family in ("mini", "llasa"):
        raise refuse(
            f"is a CosyVoice 2 LLM folder (llm.pt), not a {family} model; set world.name=cosyvoice2 "
            f"or pass a {family} model directory"
        )
    _check_torch_file(p / "llm.pt", refuse, "the CosyVoice 2 LLM weights")
    blank = p / BLANK / "config.json"
    if not blank.is_file():
        raise refuse(
            f"has llm.pt but no {BLANK}/config.json (the LLM's Qwen2 config); copy the whole "
            "CosyVoice2-0.5B folder or re-download it "
            "(`huggingface-cli download FunAudioLLM/CosyVoice2-0.5B --local-dir DIR`)"
        )
    if not isinstance(_read_json(blank, refuse, f"{BLANK}/config.json"), dict):
        raise refuse(f"{BLANK}/config.json is damaged (not a JSON object); re-download it")


def _check_architecture(p: Path, config: dict, family: str, refuse) -> None:
    model_type = config.get("model_type")
    archs = config.get("architectures") or []
    if not isinstance(archs, list):
        archs = [str(archs)]
    arch = ", ".join(str(a) for a in archs) or "no architecture named"
    if not isinstance(model_type, str) or not model_type:
        raise refuse(f"config.json names no model_type ({arch}), so it is not a transformers config; {_SAVE_HINT}")
    if config.get("is_encoder_decoder") is True or model_type in _ENCODER_DECODER:
        raise refuse(f"{model_type} ({arch}) is an encoder-decoder model; {_WHAT_WE_PRUNE}")
    accepted = ", ".join(ACCEPTED_MODEL_TYPES)
    if model_type in _LAYERS_ELSEWHERE:
        raise refuse(
            f"{model_type} ({arch}) keeps its decoder layers at {_LAYERS_ELSEWHERE[model_type]}, not model.layers; "
            f"{_WHAT_WE_PRUNE}; accepted model types: {accepted}"
        )
    if model_type in _ENCODER_ONLY:
        raise refuse(f"{model_type} ({arch}) is an encoder-only model, not a causal LM; {_WHAT_WE_PRUNE}")
    if model_type not in ACCEPTED_MODEL_TYPES:
        raise refuse(
            f"model_type {model_type} ({arch}) is not one prun-tts knows keeps its layers under model.layers; "
            f"{_WHAT_WE_PRUNE}; accepted model types: {accepted}"
        )
    causal = [a for a in archs if str(a).endswith("ForCausalLM") or a == "CosyVoice2LM"]
    if archs and not causal:
        raise refuse(
            f"config.json names {arch}, not a causal LM (no *ForCausalLM), so it has no language-model head; "
            f"pass the causal-LM checkpoint ({_SAVE_HINT} of a *ForCausalLM)"
        )
    if family == "cosyvoice2" and model_type != COSYVOICE2_LM:
        if p.name == BLANK or (p.parent / "llm.pt").exists():
            raise refuse(f"is the Qwen2 part of a CosyVoice 2 folder; pass its parent {p.parent} (the one with llm.pt)")
        raise refuse(
            f"holds a {model_type} model, not a CosyVoice 2 LLM; world.name=cosyvoice2 needs a CosyVoice2-0.5B "
            "folder (llm.pt + CosyVoice-BlankEN/) or a student prun-tts wrote for it"
        )
    if family in ("mini", "llasa") and model_type == COSYVOICE2_LM:
        raise refuse(f"holds a CosyVoice 2 LLM, not a {family} model; set world.name=cosyvoice2")


def _check_weights(p: Path, refuse) -> None:
    """The weight files transformers would load: one safetensors file, a sharded index, or a .bin."""
    single, index = p / "model.safetensors", p / "model.safetensors.index.json"
    bin_single, bin_index = p / "pytorch_model.bin", p / "pytorch_model.bin.index.json"
    if single.exists():
        _check_safetensors(single, refuse)
    elif index.exists():
        for shard in _shards(p, index, refuse):
            _check_safetensors(shard, refuse)
    elif bin_single.exists():
        _check_torch_file(bin_single, refuse, "the weights")
    elif bin_index.exists():
        for shard in _shards(p, bin_index, refuse):
            _check_torch_file(shard, refuse, "a weight shard")
    else:
        raise refuse(
            "holds a config but no weights (no model.safetensors, model.safetensors.index.json or "
            f"pytorch_model.bin); copy the weights beside config.json, re-download it, or {_SAVE_HINT}"
        )


def _shards(p: Path, index: Path, refuse) -> list[Path]:
    data = _read_json(index, refuse, index.name)
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise refuse(f"{index.name} is damaged (no weight_map); re-download it or {_SAVE_HINT}")
    names = sorted({str(v) for v in weight_map.values()})
    missing = [n for n in names if not (p / n).is_file()]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise refuse(
            f"{index.name} names {len(names)} weight shards and {len(missing)} are missing ({shown}); "
            "the download or copy is incomplete: re-download it"
        )
    return [p / n for n in names]


def _check_safetensors(f: Path, refuse) -> None:
    """Header length, JSON header and the size the tensors need; no tensor is read."""
    cut = f"the file was cut short (an interrupted download or copy); re-download it or {_SAVE_HINT}"
    try:
        size = f.stat().st_size
        with f.open("rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise refuse(f"{f.name} is {size} bytes, too short for a safetensors file; {cut}")
            (n,) = struct.unpack("<Q", head)
            if n > _MAX_HEADER:
                raise refuse(f"{f.name} is not a safetensors file (header length {n}); re-download it or {_SAVE_HINT}")
            if 8 + n > size:
                raise refuse(f"{f.name} is {size} bytes but its header alone needs {8 + n}; {cut}")
            raw = fh.read(n)
    except OSError as e:
        raise refuse(
            f"{f.name} cannot be read ({e.__class__.__name__}: {e.strerror or e}); fix its permissions"
        ) from None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise refuse(f"{f.name} has a damaged header (not JSON); re-download it or {_SAVE_HINT}") from None
    if not isinstance(header, dict):
        raise refuse(f"{f.name} has a damaged header (not a JSON object); re-download it or {_SAVE_HINT}")
    end = 0
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) and o >= 0 for o in offsets)
            and offsets[0] <= offsets[1]
        ):
            raise refuse(f"{f.name} has a damaged header (tensor {key!r}); re-download it or {_SAVE_HINT}")
        end = max(end, offsets[1])
    need = 8 + n + end
    if size < need:
        raise refuse(f"{f.name} is {size} bytes but its tensors need {need}; {cut}")


def _check_torch_file(f: Path, refuse, what: str) -> None:
    """torch.save's zip format (central directory intact) or the legacy pickle; no tensor is read."""
    label = f"{f.name} ({what})"
    try:
        if not f.is_file():
            raise refuse(f"{label} is not a file; re-download it")
        if f.stat().st_size == 0:
            raise refuse(f"{label} is empty (0 bytes); the download or copy failed: re-download it")
        with f.open("rb") as fh:
            first = fh.read(2)
    except OSError as e:
        raise refuse(
            f"{label} cannot be read ({e.__class__.__name__}: {e.strerror or e}); fix its permissions"
        ) from None
    if first == b"PK":  # torch.save's zip format; the central directory sits at the end
        try:
            with zipfile.ZipFile(f) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, EOFError):
            raise refuse(
                f"{label} is damaged: the file was cut short (an interrupted download or copy); re-download it"
            ) from None
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise refuse(f"{label} is a zip file but not one torch.save wrote; re-download it")
        return
    if first[:1] != b"\x80":  # the pickle protocol opcode that starts torch's legacy format
        raise refuse(f"{label} is not a torch checkpoint (neither torch.save's zip nor a pickle); re-download it")


def check_output_dir(path: str, setting: str) -> None:
    """Refuse (OutputDirError) an output location that cannot be created or written; creates nothing.

    Refused: the path is a file; its nearest existing ancestor is a file (`--out some_file/student`);
    the path, or its nearest existing ancestor directory, is not writable.
    """
    name = _named(setting, path)
    p = Path(os.path.abspath(path))
    if p.exists():
        if not p.is_dir():
            raise OutputDirError(f"{name}: is a file, not a directory; choose a new directory or remove the file")
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputDirError(
                f"{name}: the directory is not writable by this user; choose a directory you can write or fix its "
                "permissions"
            )
        return
    if os.path.lexists(p):
        raise OutputDirError(f"{name}: is a broken symbolic link (to {os.readlink(p)}); remove it or choose another")
    ancestor = p.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        if os.path.lexists(ancestor):
            raise OutputDirError(
                f"{name}: {ancestor} is a broken symbolic link (to {os.readlink(ancestor)}), so {path} cannot be "
                "created; remove the link or choose another location"
            )
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputDirError(
            f"{name}: {ancestor} is a file, so {path} cannot be created under it; choose a location under a directory"
        )
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputDirError(
            f"{name}: cannot create it, {ancestor} is not writable by this user; choose a directory you can write "
            "or fix its permissions"
        )
