"""Screenshot of a generated report page in headless Chromium (the one in docs/ and the README).

scripts/install-browser.sh        # once: Debian chromium + playwright
.venv/bin/python scripts/report_screenshot.py --page runs/sweeps/mini-sweep/report --out docs/report-page.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from playwright.sync_api import sync_playwright


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--page", default="runs/sweeps/mini-sweep/report", help="a report folder (holds index.html)")
    ap.add_argument("--out", default="docs/report-page.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    index = Path(args.page).resolve() / "index.html"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(index.as_uri(), wait_until="load")
        page.wait_for_timeout(1000)  # audio players read their files' durations
        page.screenshot(path=args.out, full_page=True)
        browser.close()
    print(f"screenshot: {args.out}")


if __name__ == "__main__":
    main()
