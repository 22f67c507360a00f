#!/bin/sh
# Headless Chromium (Debian's package) and Playwright's Python client, for the MLflow UI
# screenshot (scripts/mlflow_screenshot.py). Not needed to run or test Prun-TTS.
set -e
if ! command -v chromium >/dev/null 2>&1; then
    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver
fi
.venv/bin/python -m pip install -q playwright==1.56.0
