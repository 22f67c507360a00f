#!/bin/sh
# Headless Chromium (Debian's package) and Playwright's Python client: the report page's browser
# test and the MLflow UI screenshot (scripts/mlflow_screenshot.py). Not needed to run Prun-TTS.
# Where packages cannot be installed (no root, no network) it says so and the browser test fails
# with the same message; PRUN_TTS_NO_BROWSER=1 makes that test a skip instead.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver \
            || echo "install-browser.sh: could not install chromium with apt-get" >&2
    else
        echo "install-browser.sh: chromium is missing; install it (Debian: apt-get install chromium)" >&2
    fi
fi
.venv/bin/python -m pip install -q playwright==1.56.0 || echo "install-browser.sh: could not install playwright" >&2
exit 0
