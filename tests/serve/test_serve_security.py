"""The service's trust boundary through the ASGI app: token, login cookie, same-origin writes, no CORS,
headers, file names, generic 500s, local API docs, pickles refused."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fabsight.demo import example_files
from fabsight.errors import FabsightError
from fabsight.io import PICKLE_REFUSED, write_lswmd
from fabsight.serve import create_app
from fabsight.serve.auth import COOKIE, TOKEN_NAME, resolve_token, session_cookie
from fabsight.serve.state import Policy
from fabsight.synth import generate_dataset
from servekit import AUTH, TOKEN, files_in

SAME = {"Origin": "http://testserver"}
FOREIGN = {"Origin": "http://127.0.0.1:9999"}
EMPTY = {"uploads": 0, "lots": 0, "wafers": 0, "reviews": 0, "die_results": 0}


@pytest.fixture
def anon(tmp_path: Path) -> Iterator[TestClient]:
    """The same kind of service as ``client`` (no model: faster), called without credentials."""
    app = create_app(tmp_path / "s.sqlite", files_dir=tmp_path / "files", policy=Policy(token=TOKEN))
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as c:
        yield c


def klarf() -> tuple[str, bytes, str]:
    path = example_files()[0]
    return path.name, path.read_bytes(), "text/plain"


def counts(c: TestClient) -> dict[str, int]:
    return c.get("/api/health", headers=AUTH).json()["counts"]


def login(c: TestClient, token: str = TOKEN, **form: str):
    return c.post("/login", data={"token": token, **form}, headers=SAME)


def test_every_request_but_login_needs_the_token(anon: TestClient) -> None:
    r = anon.get("/api/health")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer TOKEN" in r.json()["detail"]
    assert anon.get("/api/health", headers={"Authorization": "Bearer wrong-token-wrong-token"}).status_code == 401
    assert anon.get("/api/health", headers=AUTH).status_code == 200
    assert anon.get("/openapi.json").status_code == 401
    page = anon.get("/wafers?lot=A1", headers={"Accept": "text/html"})  # a person: to the login form and back
    assert page.status_code == 303 and page.headers["location"] == "/login?next=%2Fwafers%3Flot%3DA1"
    assert anon.get("/login").status_code == 200 and anon.get("/static/app.js").status_code == 200
    for path in ("/api/uploads", "/api/reviews/1/accept", "/api/ask"):
        assert anon.post(path, files={"file": klarf()}).status_code == 401, path
    assert counts(anon) == EMPTY


def test_public_read_opens_reads_only(tmp_path: Path) -> None:
    app = create_app(tmp_path / "s.sqlite", policy=Policy(token=TOKEN, public_read=True))
    with TestClient(app, raise_server_exceptions=False) as c:
        assert c.get("/api/health").status_code == 200
        assert c.get("/", headers={"Accept": "text/html"}).status_code == 200
        assert c.post("/api/uploads", files={"file": klarf()}).status_code == 401
        assert c.post("/api/uploads", files={"file": klarf()}, headers=AUTH).status_code == 201


def test_login_sets_a_strict_httponly_session_cookie(anon: TestClient) -> None:
    wrong = login(anon, "0123456789abcdefXX", next="/review")
    assert wrong.status_code == 401 and "wrong access token" in wrong.text and COOKIE not in wrong.headers.get(
        "set-cookie", "")
    r = login(anon, next="/review")
    assert r.status_code == 303 and r.headers["location"] == "/review"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=") and TOKEN not in cookie
    assert {"HttpOnly", "SameSite=strict", "Path=/", "Max-Age=43200"} <= {p.strip() for p in cookie.split(";")}
    assert anon.get("/api/health").status_code == 200  # the cookie authenticates reads
    assert "Log out" in anon.get("/").text
    for bad in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "review"):
        assert login(anon, next=bad).headers["location"] == "/", bad


def test_cookie_writes_need_this_sites_origin(anon: TestClient) -> None:
    login(anon)
    no_origin = anon.post("/api/uploads", files={"file": klarf()})
    assert no_origin.status_code == 403 and "Origin or Referer" in no_origin.json()["detail"]
    assert anon.post("/api/uploads", files={"file": klarf()}, headers=FOREIGN).status_code == 403
    same_site = {"Origin": "http://testserver", "Sec-Fetch-Site": "same-site"}  # another port of this host
    assert anon.post("/api/uploads", files={"file": klarf()}, headers=same_site).status_code == 403
    assert anon.post("/api/uploads", files={"file": klarf()}, headers={"Referer": "http://evil/"}).status_code == 403
    assert counts(anon) == EMPTY
    assert anon.post("/api/uploads", files={"file": klarf()}, headers={"Referer": "http://testserver/"}).status_code \
        == 201
    review = anon.get("/api/reviews").json()[0]["id"]
    assert anon.post(f"/api/reviews/{review}/correct", json={"label": "Center"}, headers=SAME).status_code == 200
    assert anon.post("/logout", headers=SAME).status_code == 303
    assert anon.get("/api/health").status_code == 401


def test_forged_and_expired_cookies(anon: TestClient) -> None:
    for value in ("1.abc", "x", session_cookie("another-token-0123456789"),
                  session_cookie(TOKEN, now=time.time() - 13 * 3600)):
        anon.cookies.set(COOKIE, value)
        r = anon.get("/api/health")
        assert r.status_code == 401 and "log in again" in r.json()["detail"], value
    anon.cookies.set(COOKIE, session_cookie(TOKEN))
    assert anon.get("/api/health").status_code == 200


def test_foreign_origin_writes_refused_even_with_the_token(anon: TestClient) -> None:
    """What a page of another site can send without a preflight: text/plain and form posts."""
    text = anon.post("/api/reviews/1/accept", content=b"{}", headers={**AUTH, **FOREIGN, "Content-Type": "text/plain"})
    assert text.status_code == 403 and text.json()["detail"] == "cross-origin request refused"
    form = anon.post("/login", data={"token": TOKEN}, headers=FOREIGN)  # login CSRF
    assert form.status_code == 403 and COOKIE not in form.headers.get("set-cookie", "")
    up = anon.post("/api/uploads", files={"file": klarf()}, headers={**AUTH, **FOREIGN})
    assert up.status_code == 403 and counts(anon) == EMPTY


def test_no_cors_and_protective_headers(anon: TestClient) -> None:
    pre = anon.options("/api/uploads", headers={**FOREIGN, "Access-Control-Request-Method": "POST",
                                                 "Access-Control-Request-Headers": "authorization"})
    got = anon.get("/api/health", headers={**AUTH, **FOREIGN})
    for r in (pre, got):
        assert not any(h.startswith("access-control-") for h in r.headers), dict(r.headers)
    assert got.headers["x-frame-options"] == "DENY" and got.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in anon.get("/login").headers["content-security-policy"]


def test_token_is_generated_once_private_or_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FABSIGHT_TOKEN", raising=False)
    files = tmp_path / "files"
    token, where, new = resolve_token(files, env={})
    assert new and where == str(files / TOKEN_NAME) and len(token) >= 40
    assert os.stat(where).st_mode & 0o777 == 0o600
    assert resolve_token(files, env={}) == (token, where, False)
    assert resolve_token(files, env={"FABSIGHT_TOKEN": "from-the-environment"})[0] == "from-the-environment"
    given = tmp_path / "token.txt"
    given.write_text("a-token-from-a-file\n")
    given.chmod(0o640)
    with pytest.raises(FabsightError, match=r"readable by other users \(mode 640\); chmod 600"):
        resolve_token(files, given, env={})
    given.chmod(0o600)
    assert resolve_token(files, given, env={"FABSIGHT_TOKEN": "ignored-ignored-ignored"})[0] == "a-token-from-a-file"
    with pytest.raises(FabsightError, match="at least 16 printable characters"):
        resolve_token(files, env={"FABSIGHT_TOKEN": "short"})
    app = create_app(tmp_path / "s.sqlite", files_dir=files)  # no token given: the stored one
    with TestClient(app) as c:
        assert c.get("/api/health", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def _multipart(filename: bytes, data: bytes) -> tuple[bytes, dict[str, str]]:
    """A multipart body written by hand, so the file name carries exactly these bytes."""
    body = (b"--b0undary\r\nContent-Disposition: form-data; name=\"file\"; filename=\"" + filename + b"\"\r\n"
            b"Content-Type: text/plain\r\n\r\n" + data + b"\r\n--b0undary--\r\n")
    return body, {"Content-Type": "multipart/form-data; boundary=b0undary"}


@pytest.mark.parametrize(("sent", "stored"), [
    (b"L" * 300 + b".klarf", "L" * 144 + ".klarf"),
    (b"../../etc/cron.d/lot.klarf", "lot.klarf"),
    (b"C:\\\\Users\\\\op\\\\lot.klarf", "lot.klarf"),
    (b"lo\x01t\x1b[31m\xe2\x80\xae.klarf", "lot[31m.klarf"),  # control characters and a right-to-left override
    (b"..", "upload"),
])
def test_file_names_are_cleaned_never_a_500(client: TestClient, tmp_path: Path, sent: bytes, stored: str) -> None:
    body, headers = _multipart(sent, example_files()[0].read_bytes())
    r = client.post("/api/uploads", content=body, headers=headers)
    assert r.status_code == 201, r.text
    assert r.json()["filename"] == stored
    (kept,) = files_in(tmp_path / "files")
    assert "/" not in kept and len(kept) < 40


def test_internal_errors_answer_a_generic_500(client: TestClient, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    import fabsight.serve.routers.lots as lots

    def broken(*_a: object, **_k: object) -> None:
        raise RuntimeError("secret detail: postgresql://fab:hunter2@db")

    monkeypatch.setattr(lots, "lot_summaries", broken)
    with caplog.at_level(logging.ERROR, logger="fabsight.serve"):
        r = client.get("/api/lots")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    detail = r.json()["detail"]
    assert re.fullmatch(r"internal server error \(incident [0-9a-f]{8}; the details are in the server log\)", detail)
    assert "hunter2" not in r.text and "Traceback" not in r.text
    incident = detail.split()[4].rstrip(";")
    assert any(incident in rec.getMessage() and "hunter2" in str(rec.exc_info[1]) for rec in caplog.records)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_name_no_outside_url(client: TestClient, page: str) -> None:
    html = client.get(page).text
    assert "fabsight API" in html
    assert re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+", html) == []  # every URL is a path of this service
    pytest.importorskip("fastapi_offline", reason="the fastapi-offline package (local Swagger UI files) is missing")
    scripts = re.findall(r"src=['\"]([^'\"]+)['\"]", html)
    assert scripts and all(s.startswith("/docs-assets/") for s in scripts)
    for s in scripts:
        r = client.get(s)
        assert r.status_code == 200 and len(r.content) > 100_000
    assert client.get("/openapi.json").json()["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"


def test_pickles_refused_unless_allowed(client: TestClient, tmp_path: Path, wafer_models_dir: Path) -> None:
    maps = generate_dataset(2, classes=("Center",), shapes=((30, 30),), seed=1)
    data = write_lswmd(maps, tmp_path / "LSWMD.pkl").read_bytes()
    r = client.post("/api/uploads", files={"file": ("LSWMD.pkl", data, "application/octet-stream")})
    assert r.status_code == 422
    assert r.json()["detail"] == f"LSWMD.pkl: {PICKLE_REFUSED}"
    assert counts(client) == EMPTY
    app = create_app(tmp_path / "p.sqlite", policy=Policy(token=TOKEN, allow_pickle=True))
    with TestClient(app, headers=AUTH) as c:
        r = c.post("/api/uploads", files={"file": ("LSWMD.pkl", data, "application/octet-stream")})
        assert r.status_code == 201 and len(r.json()["wafers"]) == 2
