"""Regenerate docs/map.png: serve a store, open the map page in headless Chromium, click the
region at a point and screenshot the answer.

Usage (after `bash scripts/demo`):
    .venv/bin/python scripts/screenshot.py --db demo/musecl.sqlite --city demo-0 \
        --point 8.54,47.37 --out docs/map.png
Needs Debian's chromium (apt-get install chromium) and playwright (pip install '.[dev]').
"""

from __future__ import annotations

import argparse
import socket
import threading
import time

import uvicorn
from playwright.sync_api import expect, sync_playwright

from musecl_store.api import open as open_store
from musecl_store.server.app import create_app


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--db", required=True)
    ap.add_argument("--city", required=True)
    ap.add_argument("--point", default="8.54,47.37", help="LON,LAT of the region to click")
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--layer", default="indicator:population_density")
    ap.add_argument("--out", default="docs/map.png")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    args = ap.parse_args()
    lon, lat = (float(v) for v in args.point.split(","))
    store = open_store(args.db)
    region = store.features(args.city, points=[(lon, lat)]).region_id[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(store), port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 760})
        page.goto(f"http://127.0.0.1:{port}/?city={args.city}")
        expect(page.locator("#status")).to_contain_text("Click one", timeout=30_000)
        page.select_option("#layer", args.layer)
        expect(page.locator("#status")).to_contain_text("Click one", timeout=30_000)
        page.fill("#k", str(args.k))
        page.locator(f"path.region-{region}").click(force=True)
        expect(page.locator("#results li[data-region]")).to_have_count(args.k, timeout=30_000)
        page.mouse.move(5, 5)  # no tooltip over the answer
        page.screenshot(path=args.out)
        browser.close()
    server.should_exit = True
    print(f"wrote {args.out}: region {region} and its {args.k} most similar")


if __name__ == "__main__":
    main()
