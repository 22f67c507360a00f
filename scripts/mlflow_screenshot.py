"""Screenshot of the real MLflow UI: the sweep's runs (teacher and students) on a
WER-versus-depth scatter chart, in headless Chromium.

    scripts/install-browser.sh        # once: Debian chromium + playwright
    .venv/bin/python scripts/mlflow_screenshot.py --db runs/mini/mlflow.db --out docs/mlflow-wer-vs-depth.png

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
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
                               f"sqlite:///{Path(args.db).resolve()}", "--host", "127.0.0.1", "--port", str(port),
                               "--workers", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{base}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        from mlflow import MlflowClient

        exp = MlflowClient(base).get_experiment_by_name(args.experiment).experiment_id
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            page.goto(f"{base}/#/experiments/{exp}/runs?compareRunsMode=CHART", wait_until="networkidle")
            page.wait_for_timeout(3000)
            shot(page, args.out, "1-chart-view")
            add_scatter(page, args.out)
            page.wait_for_timeout(2000)
            page.screenshot(path=args.out)
            browser.close()
        print(f"screenshot: {args.out}")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def shot(page, out: str, step: str) -> None:
    if os.environ.get("SCREENSHOT_STEPS"):
        page.screenshot(path=str(Path(out).with_suffix(f".{step}.png")))


def add_scatter(page, out: str) -> None:
    """Chart view -> Add chart -> Scatter chart -> x: n_layers, y: wer."""
    page.get_by_role("button", name="Add chart").first.click()
    page.wait_for_timeout(800)
    shot(page, out, "2-add-menu")
    page.get_by_text("Scatter chart", exact=True).first.click()
    page.wait_for_timeout(1500)
    shot(page, out, "3-scatter-dialog")


if __name__ == "__main__":
    main()
