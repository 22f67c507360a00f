"""Seed-TTS-eval test lists: `meta.lst` files of `name|prompt text|prompt audio|target text`
(the prompt audio relative to the list's folder). A fifth field, where a list has one, is the
ground-truth recording of the target (the report plays it); further fields are ignored."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import overload

from orchestrator.config import ConfigError
from orchestrator.world import Codec, EvalItem


def read_meta_list(path: str | Path) -> list[dict]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"Seed-TTS-eval list {p} does not exist; download the test sets "
            "(https://github.com/BytedanceSpeech/seed-tts-eval) and point world.real.dev_list / "
            "test_list at a meta.lst"
        )
    rows, problems = [], []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("|")
        if len(fields) < 4 or not fields[0].strip() or not fields[3].strip():
            problems.append(f"line {n}: expected name|prompt text|prompt audio|target text")
            continue
        audio = p.parent / fields[2].strip()
        if not audio.is_file():
            problems.append(f"line {n}: prompt audio {audio} does not exist")
            continue
        truth = p.parent / fields[4].strip() if len(fields) > 4 and fields[4].strip() else None
        rows.append(
            {
                "name": fields[0].strip(),
                "prompt_text": fields[1].strip(),
                "prompt_audio": str(audio),
                "target_text": fields[3].strip(),
                "target_audio": str(truth) if truth and truth.is_file() else "",
            }
        )
    if problems:
        raise ConfigError(f"{p}: {len(problems)} bad line(s):\n  " + "\n  ".join(problems[:10]))
    return rows


class SeedTTSItems(Sequence[EvalItem]):
    """A meta.lst as evaluation items. Prompt audio is encoded when an item is first used,
    so building a world (in every Ray worker) costs no codec time."""

    def __init__(self, path: str | Path, codec: Codec):
        self.rows = read_meta_list(path)
        self.names = [r["name"] for r in self.rows]
        self.codec = codec
        self._codes: dict[int, tuple[int, ...]] = {}

    def __len__(self) -> int:
        return len(self.rows)

    @overload
    def __getitem__(self, i: int) -> EvalItem: ...

    @overload
    def __getitem__(self, i: slice) -> list[EvalItem]: ...

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        r = self.rows[i]
        if i not in self._codes:
            self._codes[i] = tuple(self.codec.encode(r["prompt_audio"]))
        return EvalItem(
            r["name"], r["prompt_text"], self._codes[i], r["target_text"], r["prompt_audio"], r["target_audio"]
        )
