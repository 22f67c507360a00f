"""Stage state on disk: written atomically, fingerprinted, verified on every read.

A stage's state file holds `{"fingerprint": {...}, "value": ...}`. The fingerprint is
everything the value was computed from (config section, teacher digest, layer set,
data, code version). Its hash names the file, so a stage whose inputs changed writes
a new file beside the old one instead of mixing them; a file that does not parse or
whose fingerprint differs from its name is refused with the path and what to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from orchestrator.config import ConfigError

FORMAT = 1  # bump when the layout of state files changes
_UMASK = os.umask(0o022)  # read once (os.umask only reads by setting), then put back
os.umask(_UMASK)


JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray inside `ray job submit`


def in_ray_job() -> bool:
    return JOB_ENV in os.environ


def durable(path: str) -> str:
    """Inside a Ray job the working directory is deleted afterwards: a relative path lands under
    ~/prun-tts instead (printed first). Elsewhere, relative to where the command runs."""
    if Path(path).is_absolute() or not in_ray_job():
        return str(Path(path).resolve())
    return str(Path.home() / "prun-tts" / path)


class StateError(ConfigError):
    """A state file that cannot be trusted (truncated, foreign, or from another computation)."""


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


def state_path(directory: str | Path, stage: str, fingerprint: dict) -> Path:
    return Path(directory) / f"{stage}-{digest({'format': FORMAT, **fingerprint})}.json"


def load_state(directory: str | Path, stage: str, fingerprint: dict) -> Any | None:
    """The stage's saved value for exactly this fingerprint, or None if it was never computed."""
    p = state_path(directory, stage, fingerprint)
    if not p.is_file():
        return None
    blob = read_json(p, f"the {stage} state file")
    if not isinstance(blob, dict) or "value" not in blob or blob.get("fingerprint") != _plain(fingerprint):
        raise StateError(
            f"the {stage} state file {p} does not hold what its name says (another version or a copied file); "
            "delete it and run the same command again to recompute it"
        )
    return blob["value"]


def save_state(directory: str | Path, stage: str, fingerprint: dict, value: Any) -> Path:
    return atomic_write_json(
        state_path(directory, stage, fingerprint), {"stage": stage, "fingerprint": fingerprint, "value": value}
    )


def cached_stage(directory: str | Path, stage: str, fingerprint: dict, compute, log=None) -> Any:
    """`compute()` once per fingerprint: a rerun with the same inputs reads the saved value back."""
    value = load_state(directory, stage, fingerprint)
    if value is not None:
        if log:
            log(f"      reusing {state_path(directory, stage, fingerprint)}")
        return value
    value = compute()
    save_state(directory, stage, fingerprint, value)
    return value


def _plain(data: Any) -> Any:
    """`data` as it reads back from JSON (tuples become lists), to compare with a loaded fingerprint."""
    return json.loads(json.dumps(data, default=str))
