"""The VLM client against a local OpenAI-compatible server started here: request shape, answer, fallbacks."""

from __future__ import annotations

import base64
import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from assist_maps import disc_map
from fabsight.assist.vlm import VLMConfig, VLMError, ask_or_fallback, ask_vlm, png_bytes


class _Handler(BaseHTTPRequestHandler):
    """Checks each request like a strict server would and answers from ``server.behaviour``."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append((self.path, dict(self.headers), body))  # type: ignore[attr-defined]
        mode = self.server.behaviour  # type: ignore[attr-defined]
        if mode == "slow":
            time.sleep(1.5)
        if mode == "error":
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"model crashed")
            return
        problems = _check(self.path, body)
        reply = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Edge ring; check EBR."}}]}
        if problems:
            self.send_response(400)
            reply = {"error": problems}
        else:
            self.send_response(200)
        data = json.dumps(reply).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):  # the client gave up ("slow" mode): expected
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def _check(path: str, body: dict) -> list[str]:
    problems = []
    if path != "/v1/chat/completions":
        problems.append(f"path {path}")
    if body.get("model") != "cosmos-reason1":
        problems.append("model")
    msgs = body.get("messages", [])
    if [m.get("role") for m in msgs] != ["system", "user"]:
        problems.append("roles")
    parts = msgs[-1].get("content", []) if msgs else []
    kinds = [p.get("type") for p in parts]
    if kinds != ["text", "image_url"]:
        problems.append(f"content parts {kinds}")
    else:
        url = parts[1]["image_url"]["url"]
        if not url.startswith("data:image/png;base64,"):
            problems.append("image url")
        elif not base64.b64decode(url.split(",", 1)[1]).startswith(b"\x89PNG\r\n\x1a\n"):
            problems.append("not a PNG")
        if "Measured facts (JSON)" not in parts[0]["text"]:
            problems.append("facts missing")
    return problems


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.requests = []  # type: ignore[attr-defined]
    srv.behaviour = "ok"  # type: ignore[attr-defined]
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def png() -> bytes:
    return png_bytes(disc_map("edge-ring"))


def _url(srv) -> str:
    return f"http://127.0.0.1:{srv.server_address[1]}"


def test_request_shape_and_answer(server, png, monkeypatch) -> None:
    monkeypatch.setenv("FABSIGHT_VLM_API_KEY", "k123")
    reply = ask_vlm(VLMConfig(_url(server) + "/v1", "cosmos-reason1"), png, "What pattern?", {"yield": 0.7})
    assert reply == {"model": "cosmos-reason1", "endpoint": _url(server) + "/v1/chat/completions",
                     "answer": "Edge ring; check EBR."}
    _, headers, body = server.requests[0]
    assert headers["Authorization"] == "Bearer k123"
    assert json.loads(body["messages"][1]["content"][0]["text"].split("JSON):\n", 1)[1]) == {"yield": 0.7}


@pytest.mark.parametrize("given", ["", "/", "/v1", "/v1/chat/completions"])
def test_endpoint_forms(given) -> None:
    assert VLMConfig("http://h:8000" + given, "m").endpoint == "http://h:8000/v1/chat/completions"


def test_timeout_and_errors_fall_back_with_a_warning(server, png) -> None:
    warnings: list[str] = []
    server.behaviour = "slow"
    got = ask_or_fallback(VLMConfig(_url(server), "cosmos-reason1", timeout=0.3), png, "q", {}, warnings.append)
    assert got["error"] == "no reply within 0.3 s" and "showing the offline answer only" in warnings[0]
    server.behaviour = "error"
    with pytest.raises(VLMError, match="HTTP 500: model crashed"):
        ask_vlm(VLMConfig(_url(server), "cosmos-reason1"), png, "q", {})
    with pytest.raises(VLMError, match="request failed"):
        ask_vlm(VLMConfig("http://127.0.0.1:9", "m", timeout=2), png, "q", {})
    server.behaviour = "ok"
    with pytest.raises(VLMError, match="HTTP 400"):  # the strict server refuses a wrong model name
        ask_vlm(VLMConfig(_url(server), "other"), png, "q", {})
