"""The audio of a run's systems on the same seeded handful of test items: what the page's audio
table plays, and what each MLflow run holds to be played in the UI.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np

from orchestrator.builders import build_world
from orchestrator.config import Config, ConfigError
from orchestrator.report.results import Results
from orchestrator.speech.audio import save_audio


def audio_items(results: Results, systems: list[str], n: int, seed: int) -> list[str]:
    """A seeded draw of test items every system has (first sampling pass), in test-list order."""
    names = [
        it["name"]
        for it in results.evaluations["teacher"]["items"]
        if it["name"].split("#")[0] == it["name"] or it["name"].endswith("#0")
    ]
    have = [{it["name"] for it in results.evaluations[s]["items"]} for s in systems]
    common = [x for x in names if all(x in h for h in have)]
    picked = set(random.Random(seed).sample(common, min(n, len(common))))
    return [x for x in common if x in picked]


def listener(cfg: Config):
    """(codes, prompt recording) -> waveform for this world, its test list, and a note where audio
    cannot be made here (the page then shows what the ASR heard and the codes)."""
    try:
        world = build_world(cfg)
    except (ConfigError, OSError) as e:  # the test list or the codec is not on this machine
        return None, [], f"No audio: the {cfg.world.name} world cannot be built on this machine ({e})."
    if world.vocoder is not None:
        return (lambda codes, prompt: world.vocoder(codes)), world.test_items, ""
    return (lambda codes, prompt: world.codec.decode(codes, prompt or None)), world.test_items, ""


def write_audio(listen, dest: Path, recording: str, codes, prompt: str) -> Path | None:
    """A recording the test list points at, copied as it is; else the codes made audible (None:
    nothing to play)."""
    if recording:
        dest = dest.with_suffix(Path(recording).suffix)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(recording, dest)
        return dest
    wav = listen(list(codes), prompt) if listen and codes else None
    if wav is None:
        return None
    save_audio(dest, _as_array(wav))
    return dest


def run_audio(results: Results, systems: list[str], out: Path) -> dict[str, dict[str, Path]]:
    """The report's seeded test items for each of `systems` ("teacher", trial ids), as
    out/<system>/<item>.wav; and the items' prompts and ground truth, as out/prompt/ and
    out/ground_truth/. system -> item -> file; empty where this world cannot make audio."""
    cfg = Config.model_validate(results.config)
    names = audio_items(results, systems, cfg.report.n_items, cfg.report.seed)
    listen, test, _ = listener(cfg)
    index = {name: i for i, name in enumerate(item_names(test))}
    evaluated = {s: {it["name"]: it for it in results.evaluations[s]["items"]} for s in systems}
    files: dict[str, dict[str, Path]] = {}

    def keep(system: str, name: str, made: Path | None) -> None:
        if made is not None:
            files.setdefault(system, {})[name] = made

    for name in names:
        stem = name.replace("#", "-")
        it = test[index[name.split("#")[0]]] if name.split("#")[0] in index else None
        if it is not None:
            prompt = write_audio(listen, out / "prompt" / f"{stem}.wav", it.prompt_audio, it.prompt_codes, "")
            keep("prompt", name, prompt)
            truth = write_audio(listen, out / "ground_truth" / f"{stem}.wav", it.target_audio, it.target_codes, "")
            keep("ground_truth", name, truth)
        for system in systems:
            codes, prompt = evaluated[system][name]["codes"], it.prompt_audio if it else ""
            keep(system, name, write_audio(listen, out / system / f"{stem}.wav", "", codes, prompt))
    return files


def item_names(items) -> list[str]:
    """Item names without building the items (a Seed-TTS list encodes a prompt when an item is built)."""
    return list(getattr(items, "names", None) or [it.name for it in items])


def _as_array(waveform) -> np.ndarray:
    if hasattr(waveform, "detach"):
        return waveform.detach().cpu().float().numpy().reshape(-1)
    return np.asarray(waveform, dtype=np.float32).reshape(-1)
