"""Screenshots of the real MLflow UI, in headless Chromium: the sweep's runs (teacher and
students) on a WER-versus-depth scatter chart; a trial's audio playing in the artifact viewer;
the registered model's version that the sweep chose.

    scripts/install-browser.sh        # once: Debian chromium + playwright
    .venv/bin/python scripts/mlflow_screenshot.py --db runs/mini/mlflow.db --out docs/mlflow-wer-vs-depth.png

Writes the chart full size (--out), the chart view with the run list (...-runs.png), the audio
(--audio-out) and the registry page (--registry-out).

Starts its own `mlflow server` on a free port against the sqlite file, and stops it after.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default="runs/mini/mlflow.db")
    ap.add_argument("--experiment", default="prun-tts")
    ap.add_argument("--out", default="docs/mlflow-wer-vs-depth.png")
    ap.add_argument("--audio-out", default="docs/mlflow-trial-audio.png")
    ap.add_argument("--registry-out", default="docs/mlflow-registered-model.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{Path(args.db).resolve()}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        from mlflow import MlflowClient

        client = MlflowClient(base)
        exp = client.get_experiment_by_name(args.experiment).experiment_id
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=args.chromium,
                args=["--no-sandbox", "--disable-gpu", "--autoplay-policy=no-user-gesture-required"],
            )
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.goto(f"{base}/#/experiments/{exp}/runs?compareRunsMode=CHART", wait_until="load")
            page.wait_for_timeout(8000)
            shot(page, args.out, "1-chart-view")
            close_assistant(page)
            expand_sweeps(page)
            add_scatter(page, args.out)
            page.wait_for_timeout(2000)
            page.screenshot(path=args.out)
            version = chosen_version(client)
            audio_playing(page, base, exp, version.run_id, args.audio_out)
            registered_model(page, base, version, args.registry_out)
            browser.close()
        print(f"screenshots: {args.out}, {args.audio_out}, {args.registry_out}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def chosen_version(client):
    """The newest registered version (the sweep's chosen student)."""
    versions = [v for m in client.search_registered_models() for v in m.latest_versions]
    return max(versions, key=lambda v: v.creation_timestamp)


def audio_playing(page, base: str, exp: str, run_id: str, out: str) -> None:
    """The trial's run, Artifacts tab, its first audio file selected and playing."""
    page.goto(f"{base}/#/experiments/{exp}/runs/{run_id}/artifacts", wait_until="load")
    page.wait_for_timeout(5000)
    close_assistant(page)
    page.get_by_text("audio", exact=True).first.click()  # the folder
    page.wait_for_timeout(1500)
    page.locator("text=/\\.wav$/").first.click()  # its first file
    page.wait_for_timeout(4000)
    shot(page, out, "1-selected")
    audio = page.locator("audio").first  # the viewer's player: started as a click on its play button would
    audio.evaluate("a => { a.muted = true; return a.play(); }")
    page.wait_for_timeout(500)
    playing = audio.evaluate("a => ({time: a.currentTime, paused: a.paused, duration: a.duration})")
    print(f"audio in the viewer: {playing}")
    audio.evaluate("a => a.pause()")  # held mid-item for the picture
    page.screenshot(path=out)


def registered_model(page, base: str, version, out: str) -> None:
    """The registered model's version page: source run, tags, description."""
    page.goto(f"{base}/#/models/{version.name}/versions/{version.version}", wait_until="load")
    page.wait_for_timeout(5000)
    close_assistant(page)
    page.screenshot(path=out)


def shot(page, out: str, step: str) -> None:
    if os.environ.get("SCREENSHOT_STEPS"):
        page.screenshot(path=str(Path(out).with_suffix(f".{step}.png")))


def close_assistant(page) -> None:
    """The assistant side panel takes a third of the page; close it if it is open."""
    for button in page.locator("button[aria-label*='lose' i]").all():
        if button.is_visible():
            button.click()
            page.wait_for_timeout(500)
            return


def expand_sweeps(page) -> None:
    """Child runs (teacher baseline, students) are listed, and charted, only under an expanded parent."""
    for button in page.locator("button[data-component-id*='runnamecellrenderer']").all():
        if button.is_visible():
            button.click()
            page.wait_for_timeout(800)


def add_scatter(page, out: str) -> None:
    """Chart view -> Add chart -> Scatter chart -> x: n_layers, y: wer."""
    page.get_by_role("button", name="Add chart").first.click()
    page.wait_for_timeout(800)
    shot(page, out, "2-add-menu")
    page.get_by_text("Scatter chart", exact=True).first.click()
    page.wait_for_timeout(1500)
    dialog = page.get_by_role("dialog")
    for axis, metric in (("X axis", "n_layers"), ("Y axis", "wer")):
        label = dialog.get_by_text(axis, exact=True)
        label.locator("xpath=following::*[contains(@class, 'select-selector')][1]").click()
        page.wait_for_timeout(500)
        page.keyboard.type(metric)
        page.wait_for_timeout(500)
        # pick the exact name ("wer" also matches best_wer, wer_delta)
        page.locator(f"[class*='select-item-option'][title='{metric}']").first.click()
        page.wait_for_timeout(500)
        shot(page, out, f"3-{metric}")
    shot(page, out, "3-scatter-dialog")
    dialog.get_by_role("button", name="Add chart").click()
    page.wait_for_timeout(1500)
    shot(page, out, "4-added")
    # show only that chart (the charts' own search box), so the trade-off is what the page shows
    page.get_by_placeholder("Search metric charts").fill("n_layers")
    page.wait_for_timeout(2000)
    page.screenshot(path=str(Path(out).with_name(Path(out).stem + "-runs.png")))  # with the run list beside it
    title = page.get_by_text("n_layers vs. wer", exact=True).first
    card = title.locator("xpath=ancestor::*[.//button][1]")
    for button in card.locator("button").all():  # the card's full-screen button comes first
        if button.is_visible():
            button.click()
            page.wait_for_timeout(2000)
            break


if __name__ == "__main__":
    main()
