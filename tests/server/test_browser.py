"""The map page in a real headless browser (Debian's chromium driven by Playwright), served by
a real uvicorn on loopback: the city is drawn, a click on a region highlights and lists its
most similar regions, a click in point mode searches from the point, and a screenshot is
written (``MUSECL_SCREENSHOT``, default under the test's temp folder)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from musecl_store.api import open as open_store
from musecl_store.server.app import create_app

pytestmark = pytest.mark.slow

CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser", shutil.which("chromium"))
     if p and Path(p).exists()),
    None,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(backend, trained: str, tmp_path: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    import uvicorn

    store = open_store(backend.clone(trained), index_dir=tmp_path / "index")
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(store), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    store.close()


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (Debian: apt-get install chromium)")
def test_click_a_region_highlights_and_lists_its_most_similar(
    served: str, tmp_path: Path
) -> None:
    from playwright.sync_api import expect, sync_playwright

    shot = Path(os.environ.get("MUSECL_SCREENSHOT") or tmp_path / "map.png")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(served + "/")
        expect(page.locator("#status")).to_contain_text("Click one", timeout=20_000)
        regions = page.locator("path.region")
        n = regions.count()
        assert n > 20
        page.fill("#k", "5")
        target = regions.nth(n // 2)
        region_id = next(
            c[len("region-"):] for c in (target.get_attribute("class") or "").split()
            if c.startswith("region-")
        )
        target.click(force=True)
        listed = page.locator("#results li[data-region]")
        expect(listed).to_have_count(5, timeout=20_000)
        ids = [listed.nth(i).get_attribute("data-region") for i in range(5)]
        assert region_id not in ids and len(set(ids)) == 5
        expect(page.locator("path.hit")).to_have_count(5)
        expect(page.locator("path.query")).to_have_count(1)
        assert region_id in (page.locator("path.query").get_attribute("class") or "")
        for rid in ids:  # the highlighted polygons are the listed ones
            assert "hit" in (page.locator(f"path.region-{rid}").get_attribute("class") or "")
        expect(page.locator("#status")).to_contain_text(f"most similar to region {region_id}")
        shot.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shot))

        # point mode: the answer comes from the clicked point's region; no query polygon
        page.select_option("#mode", "point")
        box = regions.nth(3).bounding_box()
        assert box is not None
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        expect(page.locator("#status")).to_contain_text("most similar to the point")
        expect(page.locator("#results li[data-region]")).to_have_count(5)
        expect(page.locator("path.query")).to_have_count(0)
        browser.close()
    assert not errors, errors
    assert shot.stat().st_size > 10_000
