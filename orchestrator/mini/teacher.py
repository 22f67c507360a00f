"""The mini teacher: a LlamaForCausalLM in LLaSA's layout, trained on the mini corpus.

It is cached on disk by a hash of the world and teacher settings; the repository
ships the one `configs/mini.yaml` describes (made by `make teacher`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import LlamaConfig, LlamaForCausalLM

from orchestrator.config import Config
from orchestrator.distill.data import batches
from orchestrator.distill.loop import lm_spec, make_state, train_step
from orchestrator.mini.world import WORLD_VERSION
from orchestrator.world import World

META = "prun_tts_teacher.json"


def cache_dir() -> Path:
    """$PRUN_TTS_CACHE, else the user's cache folder: the same place from any working directory."""
    if os.environ.get("PRUN_TTS_CACHE"):
        return Path(os.environ["PRUN_TTS_CACHE"]).expanduser().resolve()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prun-tts"


def configured_path(cfg: Config) -> Path:
    """world.teacher.path; a relative path that is not there is looked up beside the package
    (the shipped teacher, orchestrator/assets/mini-teacher, whatever the working directory)."""
    p = Path(cfg.world.teacher.path).expanduser()
    shipped = Path(__file__).resolve().parents[2] / p
    return p.resolve() if p.is_absolute() or p.exists() or not shipped.exists() else shipped


def training_world(cfg: Config) -> dict:
    """The world settings the teacher depends on: dev and test sentences are drawn after the
    training ones, so the held-out lists can grow without a new teacher."""
    return cfg.world.mini.model_dump(exclude={"dev_sentences", "test_sentences"})


def teacher_digest(cfg: Config) -> str:
    """Hash of everything that determines the teacher: world version and settings, teacher settings."""
    data = {
        "version": WORLD_VERSION,
        "world": training_world(cfg),
        "teacher": cfg.world.teacher.model_dump(exclude={"path"}),
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def teacher_model_config(cfg: Config, world: World) -> LlamaConfig:
    t, f = cfg.world.teacher, world.family
    return LlamaConfig(
        vocab_size=f.vocab_size,
        hidden_size=t.hidden,
        intermediate_size=t.mlp,
        num_hidden_layers=t.layers,
        num_attention_heads=t.heads,
        num_key_value_heads=t.kv_heads,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=f.bos_id,
        eos_token_id=f.end_id,
        pad_token_id=f.pad_id,
    )


def read_meta(path: str | Path) -> dict | None:
    p = Path(path) / META
    return json.loads(p.read_text()) if p.is_file() else None


def find_teacher(cfg: Config) -> Path | None:
    """The configured teacher directory, or the cached one, if it was trained from this config."""
    digest = teacher_digest(cfg)
    for candidate in (configured_path(cfg), cache_dir() / f"mini-teacher-{digest}"):
        meta = read_meta(candidate)
        if meta and meta.get("digest") == digest:
            return candidate
    return None


def expected_train_tokens(cfg: Config, world: World) -> int:
    """The tokens `train_teacher` will count, known without training (its batches are seeded)."""
    t = cfg.world.teacher
    order = torch.randperm(len(world.train_pairs), generator=torch.Generator().manual_seed(t.seed)).tolist()
    n = min(t.steps, len(order) // t.batch_size) * t.batch_size
    return sum(len(world.family.training_ids(*world.train_pairs[i])[0]) for i in order[:n])


def train_teacher(
    cfg: Config,
    world: World,
    out: str | Path,
    progress: bool = True,
    command: str = "ensure_teacher (trained on first use)",
) -> Path:
    t = cfg.world.teacher
    torch.manual_seed(t.seed)
    model = LlamaForCausalLM(teacher_model_config(cfg, world))
    state = make_state(model, t.lr, t.warmup, t.steps)
    spec = lm_spec(world.family.speech_ids)
    start = time.time()
    bar = tqdm(total=t.steps, desc="train mini teacher", disable=not progress)
    for batch in batches(world.family, world.train_pairs, t.batch_size, epochs=1, seed=t.seed):
        metrics = train_step(state, [batch], spec)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['ce']:.3f}")
        if state.step >= t.steps:
            break
    bar.close()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Stored in fp16 (half the size in the repository); loaded back as fp32.
    model.to(torch.float16).save_pretrained(out)
    meta = {
        "digest": teacher_digest(cfg),
        "world_version": WORLD_VERSION,
        "world": training_world(cfg),
        "teacher": t.model_dump(exclude={"path"}),
        "train_tokens": state.tokens,
        "train_pairs": state.step * t.batch_size,
        "steps": state.step,
        "train_seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
        "command": command,
    }
    (out / META).write_text(json.dumps(meta, indent=2))
    return out


def ensure_teacher(cfg: Config, world: World, progress: bool = True) -> tuple[Path, dict]:
    """Path and metadata of the mini teacher for this config, training it if none is cached."""
    path = find_teacher(cfg)
    if path is None:
        path = train_teacher(cfg, world, cache_dir() / f"mini-teacher-{teacher_digest(cfg)}", progress)
    return path, read_meta(path)
