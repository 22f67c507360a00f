"""The training manifest: JSONL, one utterance a line, `{"audio": PATH, "text": ..., "speaker": ...}`.

Relative audio paths are read relative to the manifest's folder. Every line is checked
before any audio is encoded, and a bad line is named with its number.
"""

from __future__ import annotations

import json
from pathlib import Path

from orchestrator.config import ConfigError

FIELDS = ("audio", "text", "speaker")


def read_manifest(path: str | Path) -> list[dict]:
    p = Path(path).resolve()  # audio paths must mean the same on every node
    if not p.is_file():
        raise ConfigError(
            f"world.real.train_manifest: {p} does not exist; write a JSONL file with one "
            f'{{"audio": ..., "text": ..., "speaker": ...}} object per line'
        )
    rows, problems = [], []
    for n, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            problems.append(f"line {n}: not JSON ({e.msg})")
            continue
        missing = [f for f in FIELDS if not isinstance(row, dict) or not str(row.get(f, "")).strip()]
        if missing:
            problems.append(f"line {n}: missing {', '.join(missing)}")
            continue
        audio = Path(row["audio"])
        audio = audio if audio.is_absolute() else p.parent / audio
        if not audio.is_file():
            problems.append(f"line {n}: audio {audio} does not exist")
            continue
        rows.append(
            {"id": f"{n:08d}", "audio": str(audio), "text": str(row["text"]).strip(), "speaker": str(row["speaker"])}
        )
    if problems:
        shown = "\n  ".join(problems[:10]) + (f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else "")
        raise ConfigError(f"{p}: {len(problems)} bad line(s); fix them and run again:\n  {shown}")
    if not rows:
        raise ConfigError(f"{p} holds no utterances")
    return rows
