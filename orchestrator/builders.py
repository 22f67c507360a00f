"""Builders: config -> world, device, teacher, scoring context. One place each."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from orchestrator.config import Config, ConfigError
from orchestrator.prune.importance import ScoringContext
from orchestrator.real import build_real_world, teacher_meta
from orchestrator.real import teacher_layers as real_teacher_layers
from orchestrator.world import World, load_model

# The mini world is imported where it is picked (world.name == "mini"), not at the top: it brings in
# transformers' whole model stack, seconds in every process, and a real world never needs it.


def build_world(cfg: Config) -> World:
    if cfg.world.name == "mini":
        from orchestrator.mini import build_mini_world  # picked: see the top

        return build_mini_world(cfg)

    return build_real_world(cfg)


def pick_device(cfg: Config) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but no CUDA device is visible; use device=auto or cpu")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def teacher_source_if_ready(cfg: Config) -> tuple[str, dict]:
    """The teacher's path and training record without training anything: for a mini teacher
    not trained yet, where it will be and the tokens it will be trained on (to check a data
    budget before any work)."""
    if cfg.world.name != "mini":
        path = cfg.world.teacher.path
        return (str(Path(path).resolve()) if Path(path).exists() else path), teacher_meta(cfg)

    from orchestrator.mini.teacher import (  # picked: see the top
        cache_dir,
        expected_train_tokens,
        find_teacher,
        read_meta,
        teacher_digest,
    )

    path = find_teacher(cfg)
    if path is not None:
        return str(path), read_meta(path)
    return str(cache_dir() / f"mini-teacher-{teacher_digest(cfg)}"), {
        "train_tokens": expected_train_tokens(cfg, build_world(cfg))
    }


def teacher_source(cfg: Config, world: World | None = None, progress: bool = True) -> tuple[str, dict]:
    """Where the teacher is (the mini one trained first if need be; a hub id or a directory
    for real worlds) and what is known of its training (tokens seen, for the data budget)."""
    if cfg.world.name != "mini":
        return teacher_source_if_ready(cfg)

    from orchestrator.mini.teacher import ensure_teacher  # picked: see the top

    path, meta = ensure_teacher(cfg, world or build_world(cfg), progress)
    return str(Path(path).resolve()), meta


def configured_teacher(cfg: Config) -> Path | None:
    """Where the mini world's teacher is configured to be (the shipped one whatever the working
    directory; it may not exist yet: it is trained on first use); None for the real worlds."""
    if cfg.world.name != "mini":
        return None

    from orchestrator.mini.teacher import configured_path  # picked: see the top

    return configured_path(cfg)


def teacher_layers(cfg: Config) -> int:
    """The teacher's depth, read from its config (no weights loaded)."""
    if cfg.world.name == "mini":
        return cfg.world.teacher.layers

    return real_teacher_layers(cfg.world.teacher.path)


def load_teacher(cfg: Config, world: World, device: torch.device, progress: bool = True) -> tuple[nn.Module, dict]:
    """The frozen teacher and what is known of its training."""
    path, meta = teacher_source(cfg, world, progress)
    return load_model(world, path, device), meta


def teacher_for_estimates(cfg: Config, world: World) -> nn.Module:
    """The teacher for counting its shapes before any stage: read on the CPU where it exists (a real
    teacher: a folder or a hub id), else (a mini teacher trained at stage 1) built from its config
    on the meta device, no weights."""
    path, _ = teacher_source_if_ready(cfg)
    if cfg.world.name != "mini" or Path(path).exists():
        return load_model(world, path, torch.device("cpu"))
    from transformers import LlamaForCausalLM

    from orchestrator.mini.teacher import teacher_model_config  # picked: see the top

    with torch.device("meta"):
        return LlamaForCausalLM(teacher_model_config(cfg, world))


def scoring_context(cfg: Config, world: World, n_drop: int, progress: bool = False) -> ScoringContext:
    s = cfg.score
    return ScoringContext(world, cfg.evaluate, s.n_items, s.n_pairs, n_drop, s.batch_size, s.seed, progress)
