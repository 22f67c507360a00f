"""MLflow as the place a team compares students: in every run, the audio of the report's seeded
test items and a per-item table (what the ASR heard, WER, SIM); the prompts and ground truth once,
in the sweep's run; and the chosen student as a new version in the Model Registry.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from orchestrator import tracking
from orchestrator.config import Config
from orchestrator.evaluate.intervals import DELTA_INTERVALS
from orchestrator.files import read_json
from orchestrator.report.audio import run_audio
from orchestrator.report.results import Results

TABLE = "items.json"


def item_rows(items: list[dict], audio: dict[str, Path]) -> list[dict]:
    """One row per evaluated item: what it was asked to say, what the ASR heard, its scores and
    its audio in the run (where it has some)."""
    return [
        {
            "item": it["name"],
            "target": it["target"],
            "heard": it["hypothesis"],
            "wer": 100 * it["wer"],
            "sim": it["sim"],
            "audio": f"audio/{audio[it['name']].name}" if it["name"] in audio else "",
        }
        for it in items
    ]


def log_listening(uri: str, parent: str, runs: dict[str, str], results: Results, log=print) -> None:
    """`runs`: "teacher" and trial ids -> their run ids. Each gets audio/ and the item table."""
    systems = [s for s in runs if s in results.evaluations]
    with tempfile.TemporaryDirectory(prefix="prun-tts-audio-") as d:
        files = run_audio(results, systems, Path(d))
        for part in ("prompt", "ground_truth"):
            if part in files:
                tracking.log_artifacts(uri, parent, Path(d) / part, f"audio/{part}")
        for system in systems:
            audio = files.get(system, {})
            if audio:
                tracking.log_artifacts(uri, runs[system], Path(d) / system, "audio")
            tracking.log_table(uri, runs[system], item_rows(results.evaluations[system]["items"], audio), TABLE)
    heard = sum(1 for s in systems if files.get(s))
    log(
        f"      MLflow: audio of {len(files.get('teacher', {}))} test items in {heard} of {len(systems)} runs, "
        f"a per-item table ({TABLE}) in each"
    )


def registered_name(cfg: Config, teacher_path: str) -> str | None:
    name = cfg.tracking.registered_model
    return name.replace("{teacher}", Path(teacher_path).name) if name else None


def register_chosen(
    cfg: Config, uri: str, name: str, runs: dict[str, str], sweep_run_id: str, page: Path, results: Results, log=print
) -> str | None:
    """The page's chosen student as a new version of `name`, from its trial run's `student/` (`runs`:
    trial ids -> run ids)
    (a Hugging Face checkpoint; CosyVoice 2's llm.pt under native/). Its version, or None where
    the registry holds it already."""
    section = read_json(page.parent / "results.json", "report results")["sections"][0]  # the sweep's page: one
    chosen = section["chosen"]
    (student,) = [s for s in section["students"] if s["trial_id"] == chosen]
    (row,) = [r for r in results.trials if str(r["trial_id"]) == chosen]  # its paired intervals
    wer_lo, wer_hi, sim_lo, sim_hi = (row[k] for k in DELTA_INTERVALS)
    k = section["key_results"]
    tags = {
        "dropped_layers": student["dropped_layers"],
        "n_layers": int(student["n_layers"]),
        "wer": round(k["student_wer"], 4),
        "wer_delta": round(k["wer_delta"], 4),
        "wer_delta_ci_low": round(wer_lo, 4),
        "wer_delta_ci_high": round(wer_hi, 4),
        "sim_delta": round(k["sim_delta"], 5),
        "sim_delta_ci_low": round(sim_lo, 5),
        "sim_delta_ci_high": round(sim_hi, 5),
        "speedup": round(k["speedup"], 4),
        "sweep_run_id": sweep_run_id,
        "trial_id": chosen,
    }
    teacher_layers = int(section["teacher"]["n_layers"])
    share = f"{k['data_share']:.1%} of the teacher's training tokens" if k.get("data_share") else "its data budget"
    if k.get("extra_texts"):
        share += f" and {k['extra_texts']} texts without speech"
    description = (
        f"Student of {section['system']}: {int(student['n_layers'])} of {teacher_layers} decoder layers kept "
        f"(dropped {student['dropped_layers']}), distilled on {share}, chosen by sweep {cfg.sweep.name} "
        f"(MLflow run {sweep_run_id}). Test WER {k['student_wer']:.2f}% against the teacher's "
        f"{k['teacher_wer']:.2f}%: {k['wer_delta']:+.2f} points (paired 95% interval {wer_lo:+.2f} to "
        f"{wer_hi:+.2f}); SIM {k['sim_delta']:+.3f}; speed-up {k['speedup']:.2f}x. The version's files are a "
        "Hugging Face checkpoint: from_pretrained loads the downloaded folder."
    )
    version = tracking.register_version(uri, name, runs[chosen], "student", tags, description)
    if version:
        log(f"      Model Registry: models:/{name}/{version} (drop {student['dropped_layers']})")
    else:
        log(f"      Model Registry: {name} already holds this sweep's chosen student")
    return version
