"""Recipe: train the mini world's teacher into a new folder (`make teacher` ships it)."""

from __future__ import annotations

from orchestrator.builders import build_world
from orchestrator.config import Config, ConfigError
from orchestrator.mini.teacher import train_teacher
from orchestrator.recipes.prune import check_new_dir


def train_mini_teacher(cfg: Config, out: str, progress: bool, command: str, log=print) -> None:
    if cfg.world.name != "mini":
        raise ConfigError("train-teacher trains the mini world's teacher; set world.name=mini")
    path = train_teacher(cfg, build_world(cfg), check_new_dir(out), progress, command)
    log(f"teacher: {path}")
