"""Stage state on disk: one fingerprinted file per stage result (orchestrator/files.py writes
and verifies it).

The fingerprint is everything the value was computed from (config section, teacher digest,
layer set, data, code version). Its hash names the file, so a stage whose inputs changed
writes a new file beside the old one instead of mixing them; a file that does not parse or
whose fingerprint differs from its name is refused with the path and what to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.files import digest, read_fingerprinted, write_fingerprinted

FORMAT = 1  # bump when the layout of state files changes


def state_path(directory: str | Path, stage: str, fingerprint: dict) -> Path:
    return Path(directory) / f"{stage}-{digest({'format': FORMAT, **fingerprint})}.json"


def load_state(directory: str | Path, stage: str, fingerprint: dict) -> Any | None:
    """The stage's saved value for exactly this fingerprint, or None if it was never computed."""
    return read_fingerprinted(
        state_path(directory, stage, fingerprint),
        fingerprint,
        f"the {stage} state file",
        "it does not hold what its name says (another version or a copied file); "
        "delete it and run the same command again to recompute it",
    )


def save_state(directory: str | Path, stage: str, fingerprint: dict, value: Any) -> Path:
    return write_fingerprinted(state_path(directory, stage, fingerprint), fingerprint, value, stage=stage)


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
