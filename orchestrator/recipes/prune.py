"""Recipe: remove decoder layers from a model folder (or hub id) and save the student, all or
nothing: a Hugging Face checkpoint with its tokenizer, or a CosyVoice 2 folder in its own layout."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from transformers import AutoConfig, AutoModelForCausalLM

from orchestrator.config import ConfigError
from orchestrator.families.cosyvoice2 import BLANK, load_cosyvoice_llm, save_cosyvoice_llm
from orchestrator.hub import require_file
from orchestrator.model_checks import check_model_dir, check_output_dir
from orchestrator.prune.surgery import drop_layers, resolve_keep


def check_new_dir(path: str) -> Path:
    out = Path(path)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty; choose a new directory or remove it")
    return out


def prune_model(model: str, out_dir: str, drop: list[int] | None, keep: list[int] | None, log=print) -> Path:
    """`model` minus its `drop` layers (or all but `keep`) saved to `out_dir`, which must be new or empty."""
    check_output_dir(out_dir, "--out")
    check_model_dir(model, "--model")
    out = check_new_dir(out_dir)
    if (Path(model) / "llm.pt").is_file():
        return _prune_cosyvoice(model, out, drop, keep, log)
    try:
        mcfg = AutoConfig.from_pretrained(model)
    except (OSError, ValueError) as e:
        raise ConfigError(
            f"--model {model}: cannot read its config ({e}); pass a model directory or a hub id reachable from here"
        ) from None
    n = mcfg.get_text_config().num_hidden_layers
    resolve_keep(n, keep, drop)  # refuse a bad set before loading any weights
    student = drop_layers(AutoModelForCausalLM.from_pretrained(model), keep=keep, drop=drop)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".prune-", dir=out.parent))
    try:
        student.save_pretrained(tmp)
        _copy_tokenizer(model, tmp)
        if out.exists():
            out.rmdir()
        tmp.rename(out)  # all or nothing
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"kept layers {student.config.prun_tts['kept_layers']} of {n} -> {out}")
    return out


def _prune_cosyvoice(model: str, out: Path, drop, keep, log) -> Path:
    """A CosyVoice2-0.5B folder (llm.pt + CosyVoice-BlankEN): the student in the same layout,
    for CosyVoice's own code to load in place of the original LLM."""
    config = require_file(
        Path(model) / BLANK / "config.json", "the CosyVoice 2 LLM's config", "pass a complete CosyVoice2-0.5B folder"
    )
    n = json.loads(config.read_text())["num_hidden_layers"]
    resolve_keep(n, keep, drop)  # refuse a bad set before loading any weights
    student = drop_layers(load_cosyvoice_llm(model), keep=keep, drop=drop)
    save_cosyvoice_llm(student, out, source_dir=model)
    log(f"kept layers {student.config.prun_tts['kept_layers']} of {n} -> {out} (llm.pt + {BLANK})")
    return out


def _copy_tokenizer(model: str, out: Path) -> None:
    src = Path(model)
    if src.is_dir():
        for f in src.iterdir():
            if (
                f.name.startswith(("tokenizer", "special_tokens", "chat_template", "prun_tts_"))
                or f.name == "vocab.json"
            ):
                shutil.copy2(f, out / f.name)
