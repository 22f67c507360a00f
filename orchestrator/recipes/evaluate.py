"""Recipe: evaluate one model (a folder, a hub id, or the teacher) on the test or dev list.

Everything goes to `output_dir/evaluations` (resolved absolute: Ray tasks may run in another
directory), named by the evaluation's key:

- `{name}-{split}-{key}.jsonl`: one row per item as it is scored; a run started again with
  the same key skips the items already there (`--shards N`: one file per shard,
  `{name}-{split}-{key}.shard{i}of{N}.jsonl`);
- `{name}-{split}-{key}.jsonl.key`: what the rows were computed from, written before the first
  row, and (after a finished run) the size and sha256 of the rows then; a results file without
  it, whose key file says another key, that no longer begins with the sealed bytes, or with rows
  of items not in the list, is refused (StateError) rather than resumed;
- `{name}-{split}-{key}.json`: the summary (metrics, the model, its digest, the split, the
  settings and every item), written atomically at the end of each finished run (a run with
  another `--shards` count writes the same name; `n_shards` says which).

`name` is the model folder's name (`teacher` for the teacher). `key` hashes what the scores
depend on: the model's weights (sha256 over every file of its folder, so another model saved
at the same path gets a new key and never reads the old rows), `cfg.evaluate`, the split,
`cfg.world` and the item list. A hub id that is not a local path is keyed by the id string:
its weights are not here to hash, so a new revision pushed under the same id would resume
the old rows; download it to a folder (or delete the results) to be safe. Hashing a folder
reads all its bytes once per run (a few seconds for a 1B-parameter checkpoint).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from orchestrator.builders import build_world, pick_device, teacher_source
from orchestrator.config import Config, ConfigError
from orchestrator.evaluate.synthesis import Evaluation, evaluate_model, read_results
from orchestrator.files import StateError, atomic_write_json, differing_keys, digest, file_digest, read_json
from orchestrator.world import EvalItem, World, load_model


@dataclasses.dataclass
class EvalRun:
    """Where an evaluation's files are and what names them."""

    name: str
    model: str  # the resolved folder, or the hub id
    model_digest: str | None  # sha256 of the folder's files; None for a hub id keyed by its name
    split: str
    key: str
    fingerprint: dict
    directory: Path

    @property
    def stem(self) -> Path:
        return self.directory / f"{self.name}-{self.split}-{self.key}"

    @property
    def results(self) -> Path:
        return Path(f"{self.stem}.jsonl")

    @property
    def summary_path(self) -> Path:
        return Path(f"{self.stem}.json")

    def shard_results(self, i: int, n: int) -> Path:
        return Path(f"{self.stem}.shard{i}of{n}.jsonl")  # the name distributed.evaluate gives it


def model_identity(path: str) -> tuple[str, str | None]:
    """(where the model is, sha256 of its files): a local folder or file by its bytes; anything
    else is taken for a hub id and identified by the id alone (digest None)."""
    p = Path(path)
    if p.exists():
        return str(p.resolve()), file_digest(p)
    return path, None


def item_list(items: Sequence[EvalItem]) -> list:
    return [[it.name, it.prompt_text, it.target_text, list(it.prompt_codes), it.prompt_audio] for it in items]


def plan(cfg: Config, source: str, split: str, items: Sequence[EvalItem], name: str | None = None) -> EvalRun:
    """The key and files of evaluating the model at `source` (a folder, or a hub id) on `items`."""
    model, model_digest = model_identity(source)
    fingerprint = {
        # the weights, not the path: another model saved at this path is another key
        "model": {"sha256": model_digest} if model_digest else {"hub_id": model},
        "split": split,
        "evaluate": cfg.evaluate.model_dump(),
        "world": cfg.world.model_dump(),
        "items": digest(item_list(items), 16),
    }
    key = digest(fingerprint, 12)
    out = Path(cfg.output_dir).resolve() / "evaluations"
    return EvalRun(name or Path(model).name, model, model_digest, split, key, fingerprint, out)


def expected_names(items: Sequence[EvalItem], passes: int) -> set[str]:
    """The row names evaluate_model writes for these items."""
    if passes > 1:
        return {f"{it.name}#{p}" for p in range(passes) for it in items}
    return {it.name for it in items}


def claim_results(run: EvalRun, results: Path, items: Sequence[EvalItem], passes: int, write: bool = True) -> None:
    """Make sure `results` holds rows of this evaluation only, before anything reads it.

    A new (or empty) file gets its key file first (`write=False`: only the checks, nothing
    written, as before any work starts). An existing one is trusted only if its key
    file says this key, it still begins with the bytes sealed at the end of the last run (rows
    are only ever appended), and every row names an item of this list; otherwise a StateError
    names the file."""
    keyfile = Path(f"{results}.key")
    record = {"key": run.key, "fingerprint": run.fingerprint}
    if not (results.is_file() and results.stat().st_size > 0):
        if write:
            atomic_write_json(keyfile, record)  # before the first row
        return
    redo = f"delete it and {keyfile.name} to score this model again"
    if not keyfile.is_file():
        raise StateError(
            f"the results file {results} has no key file {keyfile}, so which model and settings scored its rows "
            f"is unknown (a copied or renamed file, or one from an older prun-tts); {redo}"
        )
    blob = read_json(keyfile, "the evaluation key file")
    if (
        not isinstance(blob, dict)
        or blob.get("key") != run.key
        or differing_keys(blob.get("fingerprint"), run.fingerprint) != []
    ):
        raise StateError(
            f"the results file {results} belongs to another evaluation: its key file {keyfile} does not hold "
            f"key {run.key} (copied or renamed files?); {redo}"
        )
    sealed = blob.get("sealed")
    if sealed and _prefix_sha256(results, sealed["bytes"]) != sealed["sha256"]:
        raise StateError(
            f"the results file {results} is not the one its key file {keyfile} sealed (it was replaced or "
            f"edited since the last run); {redo}"
        )
    foreign = sorted(set(read_results(results)) - expected_names(items, passes))
    if foreign:
        raise StateError(
            f"the results file {results} holds rows for items not in this evaluation "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}); {redo}"
        )


def seal_results(run: EvalRun, results: Path) -> None:
    """Record in the key file what `results` holds after a finished run (the next run checks it)."""
    size = results.stat().st_size
    record = {"key": run.key, "fingerprint": run.fingerprint}
    atomic_write_json(f"{results}.key", {**record, "sealed": {"bytes": size, "sha256": _prefix_sha256(results, size)}})


def _prefix_sha256(path: Path, size: int) -> str:
    with path.open("rb") as f:
        return hashlib.sha256(f.read(size)).hexdigest()


def evaluate(
    cfg: Config,
    model: str | None = None,
    split: str = "test",
    shards: int = 1,
    progress: bool = True,
    cluster: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    echo: bool = True,
) -> tuple[Evaluation, Path]:
    """Evaluate `model` (a folder or hub id; None: the teacher) on `split`, resuming what an
    earlier run of the same model and settings scored. `cluster()`: the Ray context for
    `shards > 1`. Prints the summary (JSON, on stdout) and where it went (stderr) if `echo`.
    Returns the evaluation and the path of its summary."""
    if shards < 1:
        raise ConfigError(f"--shards {shards}: give 1 or more")
    world: World = build_world(cfg)
    every = world.test_items if split == "test" else world.dev_items
    if not len(every):
        raise ConfigError(
            f"the {world.name} world has no {split} items: set world.real.{split}_list to a Seed-TTS-eval meta.lst"
        )
    n = min(cfg.evaluate.n_items, len(every))
    items = [every[i] for i in range(n)]
    n_shards = min(shards, n)
    source = model or teacher_source(cfg, world, progress)[0]  # trains the mini teacher if need be
    run = plan(cfg, source, split, items, None if model else "teacher")  # hashes the weights
    passes = cfg.evaluate.passes
    results = [run.shard_results(i, n_shards) for i in range(n_shards)] if n_shards > 1 else [run.results]
    for i, path in enumerate(results):  # earlier rows that cannot be trusted: refused before any work or write
        claim_results(run, path, items[i::n_shards], passes, write=False)
    if n_shards > 1:
        from orchestrator.distributed.evaluate import evaluate_sharded  # Ray only for --shards > 1

        for i, path in enumerate(results):
            claim_results(run, path, items[i::n_shards], passes)
        with cluster():
            result = evaluate_sharded(cfg, run.model, split, n_shards, run.stem, world.codec.token_rate)
    else:
        loaded = load_model(world, run.model, pick_device(cfg))  # a folder that holds no model: nothing written
        claim_results(run, run.results, items, passes)
        result = evaluate_model(loaded, world, items, cfg.evaluate, progress, results=run.results)
    for path in results:
        seal_results(run, path)
    s = result.summary()
    atomic_write_json(
        run.summary_path,
        {
            **s,
            "model": run.model,
            "model_digest": run.model_digest,
            "world": world.name,
            "split": split,
            "settings": cfg.evaluate.model_dump(),
            "key": run.key,
            "n_shards": n_shards,
            "results": [str(p) for p in results],
            "items": result.items,
        },
    )
    if echo:
        print(json.dumps(s, indent=2))
        print(f"summary written to {run.summary_path}", file=sys.stderr)
    return result, run.summary_path
