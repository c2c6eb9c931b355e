"""The dashboard in a real headless Chromium: login, lots, gallery, a wafer page with Q&A, review keys,
upload, the local API docs, and a page of another origin that tries to write with the person's session.

Runs uvicorn in a thread of the test process (so the session's tiny model and the Q&A
encoder are loaded once) and drives Debian's Chromium through Playwright; nothing is
downloaded. Screenshots go to ``test-artifacts/dashboard/`` for a person to look at.
"""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from fabsight.demo import example_files
from fabsight.io import write_klarf
from fabsight.synth import generate_dataset
from servekit import AUTH, TOKEN, uvicorn_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"

playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
if not Path(CHROMIUM).exists():
    pytest.skip("Chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, wafer_models_dir: Path) -> Iterator[str]:
    from fabsight.serve import create_app
    from fabsight.serve.state import Policy

    tmp = tmp_path_factory.mktemp("dash")
    app = create_app(tmp / "store.sqlite", wafer_models_dir, policy=Policy(token=TOKEN))
    with uvicorn_server(app) as url:
        with httpx.Client(base_url=url, timeout=120, headers=AUTH) as c:
            for f in example_files():
                assert c.post("/api/uploads", files={"file": (f.name, f.read_bytes())}).status_code == 201
        yield url


@pytest.fixture(scope="module")
def page(server: str) -> Iterator[object]:
    """A browser page logged in through the login form (a wrong token first)."""
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        pg = browser.new_page(viewport={"width": 1280, "height": 900}, base_url=server)
        pg.set_default_timeout(60_000)
        pg.goto("/review")  # not logged in: sent to the login form, which comes back here
        pg.wait_for_url("**/login?next=%2Freview")
        pg.fill("#login-form input[name=token]", "not-the-token-at-all")
        pg.click("#login-form button")
        assert "wrong access token" in pg.inner_text("#login-error")
        pg.fill("#login-form input[name=token]", TOKEN)
        pg.click("#login-form button")
        pg.wait_for_url("**/review")
        cookie = next(c for c in pg.context.cookies() if c["name"] == "fabsight_session")
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and TOKEN not in cookie["value"]
        assert pg.evaluate("document.cookie") == ""  # page scripts never see the session
        yield pg
        browser.close()


def _images_loaded(page) -> bool:
    return page.evaluate("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")


def test_dashboard_end_to_end(page, server: str, tmp_path: Path) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    api = httpx.Client(base_url=server, timeout=120, headers=AUTH)

    # lots page: one row per lot, trend chart drawn
    page.goto("/")
    assert page.locator("#lots tr").count() == 1 + 3
    page.wait_for_function("() => document.getElementById('trend').naturalWidth > 0")
    page.screenshot(path=SHOTS / "lots.png", full_page=True)

    # lot A101: its wafers as rows, its one source (the KLARF's inspection step) as a column
    page.click("text=A101")
    page.wait_for_url("**/lots/A101")
    assert page.locator("#lot-wafers tr").count() == 1 + 8
    assert page.locator("#lot-wafers th").all_inner_texts() == ["wafer", "inspection M1-ETCH"]

    # lot A103 (KLARF + STDF + G85): Pareto charts, stacked map, repeaters and kill ratios from the API's
    # numbers; a wafer history uploaded through the form gives the commonality table
    page.goto("/lots/A103")
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
    assert _images_loaded(page) and page.locator("img.pareto").count() == 3
    assert page.evaluate("document.getElementById('stack').naturalWidth") > 300
    # the demo KLARF puts every defect at its die's centre: no in-die positions, so no repeater search
    reps = api.get("/api/lots/A103/repeaters")
    assert reps.status_code == 400 and "no in-die positions" in reps.json()["detail"]
    assert "no in-die positions" in page.inner_text("#repeaters")
    kill = api.get("/api/lots/A103/killratio").json()
    assert page.locator("#kill-ratio tr.impact").count() == len(kill["by_class"]) >= 1
    assert kill["alignment"]["options"] in page.inner_text("#yield-analytics")
    physical = api.get("/api/lots/A103").json()["physical_wafers"]
    labels = {w["wafer_id"]: w["results"][0]["label"] for w in physical}
    history = tmp_path / "history.csv"
    history.write_text("LOT,WAFER,step,tool\n" + "".join(
        f"A103,{w},ETCH,{'ETCH0' + str(1 + i % 2)}\n" for i, w in enumerate(labels)))
    page.set_input_files("#history-form input[name=file]", str(history))
    page.fill("#history-form input[name=lot_col]", "LOT")
    page.fill("#history-form input[name=wafer_col]", "WAFER")
    page.click("#history-form button")
    page.wait_for_selector("#commonality-answer")
    assert "(now: history.csv)" in page.inner_text("#history-form")
    pattern = page.get_attribute("#commonality-answer", "data-pattern")  # the lot's commonest pattern label
    if pattern:
        common = api.get("/api/lots/A103/commonality", params={"pattern": pattern}).json()
        assert page.inner_text("#commonality-answer") == common["answer"]
        assert page.locator("#commonality tr.finding").count() == min(10, len(common["findings"]))
    else:
        assert "no wafer of the lot has a pattern label" in page.inner_text("#commonality-answer")
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
    page.screenshot(path=SHOTS / "lot-analytics.png", full_page=True)
    page.goto("/lots/A101")

    # gallery of lot A101: eight rendered maps
    page.click("text=all results as a gallery")
    page.wait_for_url("**/wafers?lot=A101")
    assert page.locator("#gallery .card").count() == 8
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)")
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
    page.wait_for_function("() => document.getElementById('ask-answer').dataset.answered !== undefined")
    assert f"{100 * stored['yield']:.1f}%" in page.inner_text("#ask-answer")
    page.wait_for_function("() => document.getElementById('wafer-map').naturalWidth > 0")
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
    page.wait_for_function("() => document.querySelectorAll('#queue .card.done').length === 2")
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


def test_api_docs_load_from_this_service_only(page, server: str) -> None:
    """Swagger UI asks nothing of another host; ReDoc's bundle wants its vendor's logo, and the page's
    Content-Security-Policy stops that request in the browser."""
    pytest.importorskip("fastapi_offline", reason="the fastapi-offline package (local Swagger UI files) is missing")
    elsewhere: list[str] = []
    failed: dict[str, str] = {}
    page.on("request", lambda r: None if r.url.startswith((server, "data:", "blob:")) else elsewhere.append(r.url))
    page.on("requestfailed", lambda r: failed.update({r.url: r.failure}))
    page.goto("/docs")
    page.wait_for_selector(".swagger-ui .info .title")
    assert "fabsight" in page.inner_text(".swagger-ui .info .title")
    page.get_by_text("/api/uploads", exact=True).first.wait_for()
    page.screenshot(path=SHOTS / "docs.png")
    assert elsewhere == []
    page.goto("/redoc")
    page.wait_for_selector("h1:has-text('fabsight')")
    page.wait_for_timeout(500)
    assert all(failed.get(url) == "csp" for url in elsewhere), (elsewhere, failed)
    page.screenshot(path=SHOTS / "redoc.png")


_EVIL = """<!doctype html><html><body>
<iframe name="f1"></iframe><iframe name="f2"></iframe>
<form id="up" method="post" enctype="multipart/form-data" action="{svc}/api/uploads" target="f1">
 <input type="file" name="file"></form>
<form id="acc" method="post" enctype="text/plain" action="{svc}/api/reviews/{review}/accept" target="f2">
 <input name='{{"reviewer": "x", "y": "' value='"}}'></form>
<script>
const klarf = {klarf};
async function attack() {{
  const results = [];
  const fd = new FormData();
  fd.append("file", new File([klarf], "evil.klarf", {{type: "text/plain"}}));
  const tries = [
    ["{svc}/api/uploads", {{method: "POST", body: fd, mode: "no-cors", credentials: "include"}}],
    ["{svc}/api/reviews/{review}/accept", {{method: "POST", body: "{{}}", mode: "no-cors", credentials: "include",
                                            headers: {{"Content-Type": "text/plain"}}}}],
    ["{svc}/api/reviews/{review}/accept", {{method: "POST", body: "{{}}", credentials: "include",
                                            headers: {{"Content-Type": "application/json"}}}}],
  ];
  for (const [url, opts] of tries) {{
    try {{ const r = await fetch(url, opts); results.push(r.type + " " + r.status); }}
    catch (e) {{ results.push("blocked"); }}
  }}
  const dt = new DataTransfer();
  dt.items.add(new File([klarf], "evil.klarf", {{type: "text/plain"}}));
  document.querySelector("#up input").files = dt.files;
  document.getElementById("up").submit();
  document.getElementById("acc").submit();
  document.title = "done " + results.join(", ");
}}
attack();
</script></body></html>"""


def test_page_of_another_origin_cannot_write_with_the_session(page, server: str, tmp_path: Path) -> None:
    """Another port of the same host is the same *site*: the browser sends the session cookie with
    these requests, and only the Origin check stands between that page and the store."""
    api = httpx.Client(base_url=server, timeout=120, headers=AUTH)
    review = api.get("/api/reviews", params={"state": "pending"}).json()[0]["id"]
    before = api.get("/api/health").json()["counts"]
    maps = generate_dataset(1, classes=("Scratch",), shapes=((30, 30),), seed=99)
    maps[0].lot_id, maps[0].wafer_id = "EVIL1", "01"
    klarf = write_klarf(maps, tmp_path / "evil.klarf").read_text()
    html = _EVIL.format(svc=server, review=review, klarf=json.dumps(klarf)).encode()

    class Evil(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(html)

        def log_message(self, *_args: object) -> None:
            pass

    evil = ThreadingHTTPServer(("127.0.0.1", 0), Evil)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    seen: list[tuple[str, int]] = []  # what reached the service, as the browser saw it

    def record(r) -> None:
        if r.url.startswith(server) and r.request.method == "POST":
            seen.append((r.url.removeprefix(server), r.status))

    page.on("response", record)
    try:
        page.goto(f"http://127.0.0.1:{evil.server_address[1]}/")
        page.wait_for_function("() => document.title.startsWith('done')")
        assert page.title() == "done opaque 0, opaque 0, blocked"  # no CORS: the JSON one never leaves
        page.wait_for_timeout(200)
        deadline = 100
        while len(seen) < 4 and deadline:  # two fetches and two form posts
            page.wait_for_timeout(100)
            deadline -= 1
    finally:
        page.remove_listener("response", record)
        evil.shutdown()
    accept = f"/api/reviews/{review}/accept"
    assert sorted(seen) == sorted([("/api/uploads", 403)] * 2 + [(accept, 403)] * 2)
    assert api.get("/api/health").json()["counts"] == before
    assert api.get("/api/lots/EVIL1").status_code == 404
    assert api.get("/api/reviews", params={"state": "pending"}).json()[0]["id"] == review
    api.close()
