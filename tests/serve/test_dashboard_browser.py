"""The dashboard in a real headless Chromium: lots, gallery, a wafer page with Q&A, review keys, upload.

Runs uvicorn in a thread of the test process (so the session's tiny model and the Q&A
encoder are loaded once) and drives Debian's Chromium through Playwright; nothing is
downloaded. Screenshots go to ``test-artifacts/dashboard/`` for a person to look at.
"""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from fabsight.demo import example_files
from fabsight.io import write_klarf
from fabsight.synth import generate_dataset

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, wafer_models_dir: Path) -> Iterator[str]:
    import uvicorn

    from fabsight.serve import create_app

    tmp = tmp_path_factory.mktemp("dash")
    port = _free_port()
    app = create_app(tmp / "store.sqlite", wafer_models_dir)
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    with httpx.Client(base_url=url, timeout=120) as c:
        for f in example_files():
            assert c.post("/api/uploads", files={"file": (f.name, f.read_bytes())}).status_code == 201
    yield url
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[object]:
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        pg = browser.new_page(viewport={"width": 1280, "height": 900}, base_url=server)
        pg.set_default_timeout(60_000)
        yield pg
        browser.close()


def _images_loaded(page) -> bool:
    return page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")


def test_dashboard_end_to_end(page, server: str, tmp_path: Path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    api = httpx.Client(base_url=server, timeout=120)

    # lots page: one row per lot, trend chart drawn
    page.goto("/")
    assert page.locator("#lots tr").count() == 1 + 3
    page.wait_for_function("document.getElementById('trend').naturalWidth > 0")
    page.screenshot(path=SHOTS / "lots.png", full_page=True)

    # gallery of lot A101: eight rendered maps
    page.click("text=A101")
    page.wait_for_url("**/wafers?lot=A101")
    assert page.locator("#gallery .card").count() == 8
    page.wait_for_function("Array.from(document.images).every(i => i.complete)")
    assert _images_loaded(page)
    page.screenshot(path=SHOTS / "gallery.png", full_page=True)

    # a wafer page: prediction, explanation, Q&A answered from the stored facts
    page.locator("#gallery .card a").first.click()
    page.wait_for_selector("#explanation")
    wafer_id = int(page.url.rsplit("/", 1)[1])
    stored = api.get(f"/api/wafers/{wafer_id}").json()
    assert stored["prediction"]["label"] in page.inner_text("#prediction")
    assert page.inner_text("#explanation") == stored["explanation"]["text"]
    page.fill("#ask-form input[name=question]", "What is the yield of this wafer?")
    page.click("#ask-form button")
    page.wait_for_function("document.getElementById('ask-answer').dataset.answered !== undefined")
    assert f"{100 * stored['yield']:.1f}%" in page.inner_text("#ask-answer")
    page.wait_for_function("document.getElementById('wafer-map').naturalWidth > 0")
    page.screenshot(path=SHOTS / "wafer.png", full_page=True)

    # review queue: 'a' accepts the current item, '2' labels the next one with the second class
    queue = api.get("/api/reviews", params={"state": "pending"}).json()
    classes = api.get("/api/health").json()["classes"]
    page.goto("/review")
    cards = page.locator("#queue .card")
    assert cards.count() == len(queue) >= 2
    assert [int(cards.nth(i).get_attribute("data-review")) for i in range(2)] == [q["id"] for q in queue[:2]]
    page.keyboard.press("a")
    page.wait_for_selector("#queue .card.done")
    page.keyboard.press("2")
    page.wait_for_function("document.querySelectorAll('#queue .card.done').length === 2")
    first = api.get(f"/api/wafers/{queue[0]['wafer']}").json()["review_item"]
    second = api.get(f"/api/wafers/{queue[1]['wafer']}").json()["review_item"]
    assert first["state"] == "accepted" and first["label"] == queue[0]["predicted"]
    assert second["label"] == classes[1]
    assert second["state"] == ("accepted" if queue[1]["predicted"] == classes[1] else "corrected")
    assert page.inner_text("#review-status") == f"{len(queue) - 2} left"
    page.keyboard.press("k")  # back to a decided item: it stays decided
    page.screenshot(path=SHOTS / "review.png", full_page=True)

    # upload through the form: lands on the gallery of the new upload
    maps = generate_dataset(2, classes=("Center",), shapes=((36, 36),), seed=7)
    for i, m in enumerate(maps, start=1):
        m.lot_id, m.wafer_id, m.timestamp = "WEB1", f"{i:02d}", datetime(2026, 11, 20, 9, i)
    path = write_klarf(maps, tmp_path / "web.klarf")
    page.goto("/")
    page.set_input_files("#upload-form input[name=file]", str(path))
    page.click("#upload-form button")
    page.wait_for_url("**/wafers?upload=*")
    assert page.locator("#gallery .card").count() == 2
    # a bad file is refused with the reason on the page
    page.goto("/")
    bad = tmp_path / "notes.txt"
    bad.write_text("not wafer data\n")
    page.set_input_files("#upload-form input[name=file]", str(bad))
    page.click("#upload-form button")
    page.wait_for_selector("#upload-result.error")
    assert "unrecognised wafer data" in page.inner_text("#upload-result")
    page.screenshot(path=SHOTS / "upload-error.png", full_page=True)
    api.close()
