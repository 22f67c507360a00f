"""Loading the real models' pieces, with errors that say what to install or download.

A hub id with no network, a missing optional package or a directory without the
expected files all end in `MissingPiece` (a `ConfigError`: the CLI prints it and
exits 2), never a bare traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from orchestrator.config import ConfigError


class MissingPiece(ConfigError):
    """A model, file or optional package the run needs and cannot get."""


def load_pretrained(loader: Callable[..., Any], name_or_path: str, what: str, setting: str, **kwargs: Any) -> Any:
    """`loader(name_or_path, **kwargs)` (a `from_pretrained`), or a MissingPiece naming what to fetch.

    `what`: what the piece is ("the X-Codec2 codec"); `setting`: the config key that names it.
    """
    try:
        return loader(name_or_path, **kwargs)
    except (OSError, ValueError) as e:  # transformers raises OSError for missing files and offline hubs
        if Path(name_or_path).exists():
            hint = f"{name_or_path} exists but is not a complete checkpoint ({e.__class__.__name__}: {str(e)[:200]})"
        else:
            hint = (
                f"{name_or_path!r} is neither a local directory nor reachable on the model hub; download it "
                f"where there is network (`huggingface-cli download {name_or_path} --local-dir DIR`) and set "
                f"{setting}=DIR"
            )
        raise MissingPiece(f"cannot load {what}: {hint}") from None


def require(module: str, install: str, what: str) -> ModuleType:
    """Import an optional package, or a MissingPiece saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise MissingPiece(f"{what} needs the optional package {module!r} ({e}); install it with `{install}`") from None


def require_file(path: str | Path, what: str, fix: str) -> Path:
    p = Path(path)
    if not p.exists():
        raise MissingPiece(f"{what}: {p} does not exist; {fix}")
    return p
