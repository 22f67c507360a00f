"""The report page: made from a run's measured results (a reduced demo), rebuilt the same by
`prun-tts report`, refused when its inputs cannot be trusted, and used in a real browser."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import TINY_WORLD

from orchestrator.cli import main
from orchestrator.config import ConfigError

pytestmark = pytest.mark.slow(minutes=1)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """A reduced demo (two students), whose last stage wrote the report."""
    tmp = tmp_path_factory.mktemp("report")
    runs = tmp / "runs"
    sets = TINY_WORLD + [f"world.teacher.path={tmp / 'no-teacher'}", f"output_dir={runs}"]
    sets += ["distill.data_fraction=0.5", "distill.batch_size=4", "prune.scorer=[wli]", "report.n_items=6"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PRUN_TTS_CACHE", str(tmp / "cache"))
        assert main(["demo", "--config", "configs/mini.yaml", "--quiet", *sum((["--set", s] for s in sets), [])]) == 0
    return runs


def tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_page_holds_the_runs_measured_values(demo):
    page = json.loads((demo / "report" / "results.json").read_text())
    (section,) = page["sections"]
    with (demo / "results" / "trials.csv").open() as f:
        trials = {r["trial_id"]: r for r in csv.DictReader(f)}
    baseline = json.loads((demo / "results" / "baseline.json").read_text())

    assert section["teacher"]["wer"] == pytest.approx(baseline["wer"]) and section["teacher"]["n_layers"] == 4
    assert {s["trial_id"] for s in section["students"]} == set(trials)
    for s in section["students"]:
        row = trials[s["trial_id"]]
        for k in ("wer", "sim", "n_layers", "speedup", "params_m"):
            assert s[k] == pytest.approx(float(row[k])), k
        lo, hi = s["wer_ci"]
        assert lo <= s["wer"] <= hi
    # the chosen student: the smallest, the lowest WER among the smallest
    smallest = min(trials.values(), key=lambda r: (float(r["n_layers"]), float(r["wer"])))
    assert section["chosen"] == smallest["trial_id"]
    k = section["key_results"]
    assert k["depth_reduction"] == pytest.approx(1 - float(smallest["n_layers"]) / 4) == 0.5
    assert k["params_reduction"] == pytest.approx(1 - float(smallest["params_m"]) / baseline["params_m"])
    assert k["wer_delta"] == pytest.approx(float(smallest["wer"]) - baseline["wer"])
    # dWER and dSIM with the paired intervals trials.csv holds
    assert k["wer_delta_ci"] == pytest.approx(
        [float(smallest["wer_delta_ci_low"]), float(smallest["wer_delta_ci_high"])]
    )
    assert k["sim_delta_ci"] == pytest.approx(
        [float(smallest["sim_delta_ci_low"]), float(smallest["sim_delta_ci_high"])]
    )
    assert k["wer_delta_ci"][0] - 1e-9 <= k["wer_delta"] <= k["wer_delta_ci"][1] + 1e-9
    assert k["speedup"] == pytest.approx(float(smallest["speedup"]))
    budget = json.loads((demo / "results" / "budget.json").read_text())
    assert (
        k["data_share"] == pytest.approx(budget["unique_tokens"] / budget["teacher_tokens"]) and 0 < k["data_share"] < 1
    )
    assert k["extra_texts"] == budget["extra_texts"]

    # the audio table: 6 seeded test items, every column an audible 16 kHz file
    audio = section["audio"]
    assert audio["columns"][:2] == ["ground_truth", "teacher"] and len(audio["items"]) == 6
    assert len(set(audio["items"])) == 6
    for item in audio["items"]:
        for column in audio["columns"]:
            data, rate = sf.read(demo / "report" / audio["audio"][item][column])
            assert rate == 16000 and len(data) > 0
    for src in section["figures"]:
        assert (demo / "report" / src).stat().st_size > 5000, src
    html = (demo / "report" / "index.html").read_text()
    assert html.count("<audio ") == 6 * (1 + len(audio["columns"]))  # the prompt beside every column
    offline = html.replace(f'href="{page["links"]["paper"]}"', "")  # the one link out is the paper's
    assert "://" not in offline and "cdn" not in html.lower()  # every asset is in the folder


def test_report_command_rebuilds_the_same_page_and_refuses_what_it_cannot_trust(demo, tmp_path, capsys):
    out = tmp_path / "page"
    assert main(["report", "--sweep", str(demo), "--out", str(out)]) == 0
    assert f"report: {out / 'index.html'}" in capsys.readouterr().out
    assert tree_digest(out) == tree_digest(demo / "report")  # the same bytes: figures, audio, page

    # a folder that is not a report is refused and left as it was
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert main(["report", "--sweep", str(demo), "--out", str(other)]) == 2
    assert "not a report" in capsys.readouterr().err and (other / "notes.txt").read_text() == "keep me"
    # no source, a folder without results, a results file changed since the run wrote it
    assert main(["report"]) == 2
    assert "--sweep" in capsys.readouterr().err
    assert main(["report", "--sweep", str(tmp_path)]) == 2
    assert "no results here" in capsys.readouterr().err
    copy = tmp_path / "copy"
    shutil.copytree(demo / "results", copy / "results")
    with (copy / "results" / "trials.csv").open("a") as f:
        f.write("9,0-1-2,wli,lowest,ok,0-1-2,,1,0.01,0.0,1.0,0,0,0,9,0,0\n")
    before = tree_digest(out)
    assert main(["report", "--sweep", str(copy), "--out", str(out)]) == 2
    assert "trials.csv missing or changed" in capsys.readouterr().err
    assert tree_digest(out) == before  # the earlier page is untouched


def test_wer_interval_is_a_bootstrap_over_items_with_passes_averaged():
    from orchestrator.evaluate.intervals import wer_interval

    same = [{"name": f"i{n}", "wer": 0.25} for n in range(10)]
    assert wer_interval(same, 500, 0) == pytest.approx((25.0, 25.0))
    # two passes of an item are one item: their mean is what is resampled
    passes = [{"name": f"i{n}#{p}", "wer": float(p)} for n in range(10) for p in (0, 1)]
    assert wer_interval(passes, 500, 0) == pytest.approx((50.0, 50.0))
    rng = np.random.default_rng(1)
    spread = [{"name": f"i{n}", "wer": float(w)} for n, w in enumerate(rng.uniform(0, 1, 200))]
    lo, hi = wer_interval(spread, 4000, 0)
    mean = 100 * np.mean([it["wer"] for it in spread])
    sem = 100 * np.std([it["wer"] for it in spread], ddof=1) / np.sqrt(200)
    assert lo < mean < hi
    assert (hi - lo) == pytest.approx(2 * 1.96 * sem, rel=0.1)  # the normal interval, for this many items
    assert wer_interval(spread, 4000, 0) == (lo, hi)  # seeded


def test_chosen_student_by_config_or_the_smallest():
    from orchestrator.report.page import choose_student

    students = [
        {"dropped_layers": "1", "n_layers": 3, "wer": 5.0},
        {"dropped_layers": "1-2", "n_layers": 2, "wer": 9.0},
        {"dropped_layers": "0-3", "n_layers": 2, "wer": 7.0},
    ]
    assert choose_student(students, None)["dropped_layers"] == "0-3"
    assert choose_student(students, "1")["dropped_layers"] == "1"
    with pytest.raises(ConfigError, match="report.chosen='2-3'"):
        choose_student(students, "2-3")


# ---------------------------------------------------------------- in a real browser


def _browser():
    """Playwright's client and the system Chromium, installed by scripts/install-browser.sh
    (`make test` runs it). Where they are missing the test fails saying so, never passes silently;
    PRUN_TTS_NO_BROWSER=1 turns that into a skip, for machines that cannot install packages."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if chromium and sync_playwright:
        return sync_playwright, chromium
    missing = "no chromium" if not chromium else "no playwright"
    why = f"the browser test cannot run: {missing}; run scripts/install-browser.sh"
    if os.environ.get("PRUN_TTS_NO_BROWSER") == "1":
        pytest.skip(why)
    pytest.fail(why)


def test_the_page_in_a_real_browser(demo):
    sync_playwright, chromium = _browser()
    index = (demo / "report" / "index.html").as_uri()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"],
        )
        page = browser.new_page()
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(index)
        page.wait_for_load_state("load")

        rows = page.locator("[data-audio-table] tbody tr").count()
        columns = page.locator("[data-audio-table] thead th[data-audio-column]").count()
        (section,) = json.loads((demo / "report" / "results.json").read_text())["sections"]
        assert rows == 6 and columns == 1 + len(section["audio"]["columns"]) == 5  # prompt, truth, teacher, 2 students
        assert page.locator("[data-audio-table] audio").count() == rows * columns
        assert page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("img").count() >= 3  # importance, trade-off, curves

        def states(selector="[data-audio-table] audio"):
            return page.evaluate(
                f"Array.from(document.querySelectorAll('{selector}')).map(a => [a.paused, a.currentTime, a.ended])"
            )

        page.get_by_role("button", name="Play all audio", exact=False).click()
        page.wait_for_timeout(250)
        first = states()
        assert all(not paused for paused, _, ended in first if not ended), first
        page.wait_for_timeout(150)
        later = states()
        assert all(t2 > t1 or e2 for (_, t1, _), (_, t2, e2) in zip(first, later)), (first, later)  # time advances
        page.get_by_role("button", name="Pause all audio", exact=False).click()
        paused = states()
        assert all(p for p, _, _ in paused) and any(t > 0 for _, t, _ in paused)
        page.get_by_role("button", name="Stop all audio", exact=False).click()
        assert all(p and t == 0 for p, t, _ in states())

        # a row's own controls act on that row only
        page.get_by_role("button", name="Play row 2").click()
        page.wait_for_timeout(200)
        row_states = page.evaluate(
            "Array.from(document.querySelectorAll('[data-audio-table] tbody tr')).map(r => "
            "Array.from(r.querySelectorAll('audio')).map(a => !a.paused || a.ended || a.currentTime > 0))"
        )
        assert all(row_states[1]) and not any(any(r) for i, r in enumerate(row_states) if i != 1), row_states
        page.get_by_role("button", name="Stop row 2").click()
        assert all(p and t == 0 for p, t, _ in states())

        # every control is a labelled button reachable with the keyboard (Tab order), Enter presses it
        label = "(b) => b.getAttribute('aria-label') || b.textContent.trim()"
        labels = page.evaluate(f"Array.from(document.querySelectorAll('button')).map({label})")
        # Play/Pause/Stop All, Play and Stop per row, a sort button per column of the students table
        assert all(labels) and len(labels) == 3 + 2 * rows + 9
        page.reload()  # Tab from the top of the page
        reached = set()
        for _ in range(800):  # an audio player's own controls take several Tab stops each
            page.keyboard.press("Tab")
            reached.add(page.evaluate(f"({label})(document.activeElement)"))
            if set(labels) <= reached:
                break
        assert {label for label in labels} <= reached
        page.locator("[data-action='play-all']").focus()
        page.keyboard.press("Enter")
        page.wait_for_timeout(200)
        assert any(not p or t > 0 for p, t, _ in states())

        # the trials table sorts by a heading
        page.get_by_role("button", name="WER (%)").click()
        wers = page.evaluate(
            "Array.from(document.querySelectorAll('[data-trials] tbody tr'))"
            ".map(r => parseFloat(r.cells[3].dataset.value))"
        )
        assert wers == sorted(wers)
        page.screenshot(path=str(demo / "report-screenshot.png"), full_page=True)
        browser.close()
    assert not errors, errors
