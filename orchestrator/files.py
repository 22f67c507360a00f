"""Ground floor: files written all or nothing, digests, and the one way a fingerprint is
compared. Everything above (the core, the pipeline, the drivers) writes its state through
these; nothing here imports the rest of the package but the config's error type.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.config import ConfigError

_UMASK = os.umask(0o022)  # read once (os.umask only reads by setting), then put back
os.umask(_UMASK)

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray inside `ray job submit`


class StateError(ConfigError):
    """A file this project wrote that cannot be trusted (truncated, foreign, or from another computation)."""


def in_ray_job() -> bool:
    return JOB_ENV in os.environ


def durable(path: str) -> str:
    """Inside a Ray job the working directory is deleted afterwards: a relative path lands under
    ~/prun-tts instead (printed first). Elsewhere, relative to where the command runs."""
    if Path(path).is_absolute() or not in_ray_job():
        return str(Path(path).resolve())
    return str(Path.home() / "prun-tts" / path)


def plain(data: Any) -> Any:
    """`data` as it reads back from JSON (tuples become lists, keys sorted, paths as text): the one
    normalisation every fingerprint comparison uses."""
    return json.loads(json.dumps(data, sort_keys=True, default=str))


def digest(data: Any, length: int = 12) -> str:
    """A short, stable hash of JSON-able data."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_digest(path: str | Path, length: int = 16) -> str:
    """sha256 of a file's bytes, or of every file in a directory (names and bytes, in name order)."""
    p = Path(path)
    h = hashlib.sha256()
    files = sorted(f for f in p.rglob("*") if f.is_file()) if p.is_dir() else [p]
    for f in files:
        h.update(str(f.relative_to(p) if p.is_dir() else f.name).encode())
        with f.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:length]


def atomic_write(path: str | Path, write, binary: bool = False) -> Path:
    """`write(file)` into `path` all or nothing: a temp file beside it, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600: results are for the team to read, like any file
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file this project wrote, or a StateError naming the file and the fix."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise StateError(
            f"{what} {p} is damaged ({e.__class__.__name__}: {e}); it was cut short or edited. "
            "Delete it and run the same command again to recompute it"
        ) from None


def differing_keys(saved: Any, expected: dict) -> list[str] | None:
    """The top-level keys where a saved fingerprint differs from the expected one ([] when they
    agree; None when nothing comparable was saved)."""
    if not isinstance(saved, dict):
        return None
    a, b = plain(saved), plain(expected)
    return sorted(k for k in {*a, *b} if a.get(k) != b.get(k))


# ---------------------------------------------------------------- fingerprinted JSON files


def write_fingerprinted(path: str | Path, fingerprint: dict, value: Any, **extra: Any) -> Path:
    """`{"fingerprint", "value"}` (and `extra` fields), atomically: what `read_fingerprinted` trusts."""
    return atomic_write_json(path, {**extra, "fingerprint": fingerprint, "value": value})


def read_fingerprinted(path: str | Path, fingerprint: dict, what: str, fix: str) -> Any | None:
    """The value `write_fingerprinted` saved for exactly this fingerprint; None when there is no
    file. A damaged file, or one computed from something else, is refused (StateError) with `fix`."""
    p = Path(path)
    if not p.is_file():
        return None
    blob = read_json(p, what)
    if not isinstance(blob, dict) or "value" not in blob:
        raise StateError(f"{what} {p} is not a file this project wrote; {fix}")
    keys = differing_keys(blob.get("fingerprint"), fingerprint)
    if keys is None or keys:
        why = f"other settings (differing: {', '.join(keys)})" if keys else "no fingerprint of its settings"
        raise StateError(f"{what} {p} was computed from {why}; {fix}")
    return blob["value"]
