"""The listening page of one or more runs: key results, figures, the trials table and an audio
table of the teacher and its students on the same test items, as a static offline folder:

    index.html  results.json  images/  audio/  static/   (opens from disk or any web server)

Everything on it is computed from the runs' results folders (report/results.py): nothing is typed in.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, select_autoescape

from orchestrator.config import Config, ConfigError
from orchestrator.evaluate.intervals import wer_interval
from orchestrator.files import atomic_write_json, atomic_write_text
from orchestrator.model_checks import check_output_dir
from orchestrator.report import figures
from orchestrator.report.audio import audio_items, item_names, listener, write_audio
from orchestrator.report.results import Results, read_results

STATIC = Path(__file__).resolve().parent / "static"
TEMPLATES = Path(__file__).resolve().parent / "templates"


def choose_student(students: list[dict], chosen: str | None) -> dict:
    """The student of the key results: report.chosen (its dropped layers), else the smallest
    student, the lowest WER among the smallest."""
    if chosen is not None:
        match = [s for s in students if s["dropped_layers"] == chosen]
        if not match:
            raise ConfigError(
                f"report.chosen={chosen!r}: no finished student dropped those layers; choose one of "
                + ", ".join(repr(s["dropped_layers"]) for s in students)
            )
        return match[0]
    return min(students, key=lambda s: (s["n_layers"], s["wer"]))


def key_results(teacher: dict, student: dict, budget: dict) -> dict:
    """The chosen student against its teacher, as fractions (0.5 = 50%) and points."""
    return {
        "depth_reduction": 1 - student["n_layers"] / teacher["n_layers"],
        "params_reduction": 1 - student["params_m"] / teacher["params_m"],
        "peak_memory_reduction": 1 - student["peak_mem_mb"] / teacher["peak_mem_mb"],
        "speedup": student["speedup"],
        "data_share": budget["unique_tokens"] / budget["teacher_tokens"] if budget.get("teacher_tokens") else None,
        "extra_texts": budget.get("extra_texts", 0),  # transcripts without speech, for the on-policy steps
        "teacher_wer": teacher["wer"],
        "teacher_wer_ci": teacher["wer_ci"],
        "student_wer": student["wer"],
        "student_wer_ci": student["wer_ci"],
        "wer_delta": student["wer"] - teacher["wer"],
        "wer_delta_ci": [student["wer_delta_ci_low"], student["wer_delta_ci_high"]],  # paired: the same items
        "teacher_sim": teacher["sim"],
        "student_sim": student["sim"],
        "sim_delta": student["sim"] - teacher["sim"],
        "sim_delta_ci": [student["sim_delta_ci_low"], student["sim_delta_ci_high"]],
    }


def build_report(sources: list[Results], out: str | Path, log=print) -> Path:
    """The page for `sources` (one section each) in `out`; the first source's `report` settings
    set the page's title, links, items and seed. Returns index.html.

    The page is made in a folder beside `out` and swapped in whole: a page being rebuilt is
    never seen half-written, and a folder that is not a report is refused, not overwritten."""
    out = Path(out).resolve()
    check_report_dir(out)
    work = out.parent / f".{out.name}.new"
    shutil.rmtree(work, ignore_errors=True)  # left by a build that was interrupted
    _write_page(sources, work, log)
    old = out.parent / f".{out.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    work.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    return out / "index.html"


def report_of(results: Path, out: Path, log=print) -> Path:
    """The page of one run's results folder (what the demo and the sweep end with); its index.html."""
    return build_report([read_results(results)], out, log)


def check_report_dir(out: Path) -> None:
    """`out` may be new, empty or an earlier report (replaced whole); anything else is refused."""
    check_output_dir(str(out), "--out")
    if out.is_dir() and any(out.iterdir()) and not (out / "results.json").is_file():
        raise ConfigError(
            f"--out {out} holds files that are not a report; give a new or empty folder (a report folder "
            "is replaced whole)"
        )


def _write_page(sources: list[Results], out: Path, log) -> None:
    page = Config.model_validate(sources[0].config).report
    sections = []
    for i, results in enumerate(sources):
        log(f"      section {i + 1}/{len(sources)}: {results.where}")
        sections.append(_section(results, f"s{i + 1}", out, log))
    (out / "static").mkdir(parents=True, exist_ok=True)
    for name in ("report.css", "report.js"):  # shipped with the package: the page needs no network
        shutil.copyfile(STATIC / name, out / "static" / name)
    atomic_write_json(
        out / "results.json",
        {"title": page.title, "links": page.links, "sections": [s["results"] for s in sections]},
    )
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html", "j2"]))
    html = env.get_template("index.html.j2").render(title=page.title, links=page.links, sections=sections)
    atomic_write_text(out / "index.html", html)


def _section(results: Results, key: str, out: Path, log) -> dict:
    cfg = Config.model_validate(results.config)
    rc = cfg.report
    teacher_eval = results.evaluations["teacher"]
    ok = [r for r in results.trials if r["status"] == "ok"]
    if not ok:
        raise ConfigError(f"{results.where}: no student finished, so there is nothing to compare; see trials.csv")

    def measured(trial_id: str, row: dict) -> dict:
        ev = results.evaluations[trial_id]
        return {
            **row,
            **{k: v for k, v in ev.items() if k != "items"},
            "wer_ci": wer_interval(ev["items"], rc.bootstrap, rc.seed),
        }

    teacher = {**{k: v for k, v in teacher_eval.items() if k != "items"}, "label": "teacher", "trial_id": "teacher"}
    teacher["wer_ci"] = wer_interval(teacher_eval["items"], rc.bootstrap, rc.seed)
    students = [measured(str(r["trial_id"]), {**r, "trial_id": str(r["trial_id"])}) for r in ok]
    chosen = choose_student(students, rc.chosen)
    front = [str(p["trial_id"]) for p in results.pareto]
    # the audio table's students: all of them while the table stays readable, else the front and the chosen one
    shown = students if len(students) <= 4 else [s for s in students if s["trial_id"] in front or s is chosen]

    images = out / "images" / key
    figs = []
    if results.scores:  # runs whose layer sets were given, not scored, have no profile
        figs.append(
            (
                "importance",
                "Layer importance of each scorer",
                figures.importance_profile(results.scores, images / "importance.png"),
            )
        )
    figs.append(
        (
            "tradeoff",
            "WER and paired dWER against depth (95% intervals)",
            figures.wer_against_depth(students, teacher, front, chosen["trial_id"], images / "tradeoff.png"),
        )
    )
    labels = {s["trial_id"]: s["dropped_layers"] for s in students}
    curves = {t: rows for t, rows in results.curves.items() if t in labels}
    if curves:
        figs.append(
            ("curves", "Distillation curves", figures.distillation_curves(curves, labels, images / "curves.png"))
        )

    table = _audio_table(cfg, results, teacher, shown, chosen, out / "audio" / key, out, log)
    key_figures = key_results(teacher, chosen, results.budget)
    section = {
        "key": key,
        "system": f"{cfg.world.name}: {Path(cfg.world.teacher.path or 'teacher').name}",
        "teacher": teacher,
        "chosen": chosen,
        "key_results": key_figures,
        "students": sorted(students, key=lambda s: (-s["n_layers"], s["wer"])),
        "figures": [{"name": n, "title": t, "src": str(p.relative_to(out))} for n, t, p in figs],
        "audio": table,
    }
    section["results"] = {
        "system": section["system"],
        "teacher": {k: teacher[k] for k in ("n_layers", "params_m", "wer", "wer_ci", "sim", "speedup", "peak_mem_mb")},
        "chosen": chosen["trial_id"],
        "key_results": key_figures,
        "students": [{k: v for k, v in s.items() if k not in ("error",)} for s in section["students"]],
        "pareto": front,
        "budget": results.budget,
        "figures": [f["src"] for f in section["figures"]],
        "audio": {
            "columns": [c["name"] for c in table["columns"]],
            "items": [r["name"] for r in table["rows"]],
            "audio": table["files"],
        },
        "interval": f"95% bootstrap over test items ({rc.bootstrap} resamples, seed {rc.seed})",
    }
    return section


def _audio_table(
    cfg: Config, results: Results, teacher: dict, shown: list[dict], chosen: dict, where: Path, out: Path, log
) -> dict:
    """Rows: test items; columns: ground truth (where the list has it), teacher, each shown student.
    Each cell: the audio, what the ASR heard and its WER."""
    systems = [("teacher", f"Teacher ({int(teacher['n_layers'])} layers)")] + [
        (s["trial_id"], f"drop {s['dropped_layers']} ({int(s['n_layers'])} layers)") for s in shown
    ]
    names = audio_items(results, [k for k, _ in systems], cfg.report.n_items, cfg.report.seed)
    listen, test, note = listener(cfg)
    index = {name: i for i, name in enumerate(item_names(test))}
    eval_items = {k: {it["name"]: it for it in results.evaluations[k]["items"]} for k, _ in systems}
    listed = {n: test[index[n.split("#")[0]]] for n in names if n.split("#")[0] in index}  # the list's own items
    has_truth = any(it.target_codes or it.target_audio for it in listed.values())
    columns = [{"name": "ground_truth", "title": "Ground truth", "chosen": False}] if has_truth else []
    columns += [{"name": k, "title": t, "chosen": k == chosen["trial_id"]} for k, t in systems]
    log(f"      audio: {len(names)} test items x {len(columns)} columns")

    def audio(rel: str, recording: str, codes, prompt: str) -> str | None:
        made = write_audio(listen, where / rel, recording, codes, prompt)
        return str(made.relative_to(out)) if made else None

    rows, files = [], {}
    for n in names:
        it, stem = listed.get(n), n.replace("#", "-")
        row = {"name": n, "target": eval_items["teacher"][n]["target"], "prompt_text": it.prompt_text if it else ""}
        row["prompt_audio"] = audio(f"{stem}/prompt.wav", it.prompt_audio, it.prompt_codes, "") if it else None
        row["cells"] = []
        if has_truth:
            truth = audio(f"{stem}/ground_truth.wav", it.target_audio, it.target_codes, "") if it else None
            row["cells"].append({"column": "ground_truth", "audio": truth, "heard": "", "wer": None, "codes": ""})
        for k, _ in systems:
            r = eval_items[k][n]
            codes = r["codes"]
            row["cells"].append(
                {
                    "column": k,
                    "audio": audio(f"{stem}/{k}.wav", "", codes, it.prompt_audio if it else ""),
                    "heard": r["hypothesis"],
                    "wer": 100 * r["wer"],
                    "codes": " ".join(map(str, codes[:40])) + (" ..." if len(codes) > 40 else ""),
                }
            )
        files[n] = {c["column"]: c["audio"] for c in row["cells"]}
        rows.append(row)
    return {"columns": columns, "rows": rows, "files": files, "note": note}
