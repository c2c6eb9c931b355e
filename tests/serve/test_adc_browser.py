"""The ADC pages in a real headless Chromium: upload a KLARF+images zip through the form, see the
Pareto and the map coloured by class, decide with the review keys (Debian's Chromium, Playwright)."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adckit import klarf18, row18
from servekit import AUTH, TOKEN, uvicorn_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture
def server(tmp_path: Path, adc_die_model) -> Iterator[str]:
    from fabsight.serve import create_app
    from fabsight.serve.state import Policy

    shutil.copytree(adc_die_model[0].dir, tmp_path / "models" / "die")
    app = create_app(tmp_path / "store.sqlite", tmp_path / "models", policy=Policy(token=TOKEN))
    with uvicorn_server(app) as url:
        yield url


def test_adc_upload_page_and_review_keys(server: str, adc_die_model, tmp_path: Path) -> None:
    _, test = adc_die_model
    crops = [p for c in sorted(test) for p in test[c][:1]]
    with zipfile.ZipFile(tmp_path / "lot.zip", "w") as zf:
        for p in crops:
            zf.write(p, f"img/{p.name}")
        src = klarf18(tmp_path / "k" / "lot.klarf", [row18(i + 1, 0, [(f"img/{p.name}", 1)])
                                                    for i, p in enumerate(crops)])
        zf.write(src, "lot.klarf")
    api = httpx.Client(base_url=server, timeout=120, headers=AUTH)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu",
                                                                    "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 900}, base_url=server)
        page.set_default_timeout(60_000)
        page.goto("/adc")
        page.fill("#login-form input[name=token]", TOKEN)
        page.click("#login-form button")
        page.wait_for_url("**/adc")
        page.set_input_files("#upload-form input[name=file]", str(tmp_path / "lot.zip"))
        page.click("#upload-form button")
        page.wait_for_url("**/adc/*")
        upload = int(page.url.rsplit("/", 1)[1])
        page.wait_for_function("() => Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        assert page.locator("#adc-pareto").count() == 1 and page.locator("img.adc-map").count() == 1
        pending = api.get("/api/adc/defects", params={"state": "pending", "upload": upload}).json()
        state = "pending" if pending else "auto"
        queue = pending or api.get("/api/adc/defects", params={"state": "auto", "upload": upload}).json()
        page.goto(f"/adc/{upload}?state={state}")
        cards = page.locator("#queue .card")
        assert cards.count() == len(queue) >= 1
        page.keyboard.press("a")
        page.wait_for_selector("#queue .card.done")
        first = api.get("/api/adc/defects", params={"state": "accepted", "upload": upload}).json()
        assert [d["id"] for d in first] == [queue[0]["id"]] and first[0]["label"] == queue[0]["predicted"]
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=SHOTS / "adc.png", full_page=True)
        browser.close()
    api.close()
