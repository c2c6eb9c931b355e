"""The service over real HTTP (uvicorn on 127.0.0.1): body limits while streaming, hostile files
read in the capped worker, and a server that keeps serving after both."""

from __future__ import annotations

import io
import resource
import select
import socket
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from fabsight.demo import example_files
from fabsight.serve import create_app
from fabsight.serve.state import Policy
from fabsight.serve.worker import ParseLimits
from servekit import AUTH, TOKEN, files_in, uvicorn_server

LIMIT = 1_000_000


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A service with a 1 MB upload limit and a 640 MB parse cap (~350 MB of it libraries); yields its URL and
    files folder."""
    tmp = tmp_path_factory.mktemp("http")
    policy = Policy(token=TOKEN, parse=ParseLimits(memory_bytes=640 << 20, seconds=60))
    app = create_app(tmp / "s.sqlite", files_dir=tmp / "files", max_upload_bytes=LIMIT, policy=policy)
    with uvicorn_server(app) as url:
        yield url, tmp / "files"


def _raw_post(url: str, headers: str, body_chunks: Iterator[bytes]) -> tuple[int, int]:
    """POST over a plain socket, sending chunks until the server answers; (status, bytes sent)."""
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /api/uploads HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
                     f"Content-Type: multipart/form-data; boundary=b0undary\r\n{headers}\r\n".encode())
        try:
            for chunk in body_chunks:
                if select.select([sock], [], [], 0)[0]:
                    break  # the answer came before the body was sent
                sock.sendall(chunk)
                sent += len(chunk)
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading, or closed after answering
        answer = b""
        while b"\r\n" not in answer:
            answer += sock.recv(4096)
    return int(answer.split()[1]), sent


def _chunked(total: int) -> Iterator[bytes]:
    head = b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="big.klarf"\r\n\r\n'
    yield b"%x\r\n%s\r\n" % (len(head), head)
    block = b"x" * (1 << 16)
    for _ in range(total // len(block)):
        yield b"%x\r\n%s\r\n" % (len(block), block)


def _health(url: str) -> dict:
    r = httpx.get(f"{url}/api/health", headers=AUTH, timeout=30)
    assert r.status_code == 200
    return r.json()["counts"]


def test_chunked_body_stops_at_the_limit(served: tuple[str, Path]) -> None:
    url, files = served
    status, sent = _raw_post(url, "Transfer-Encoding: chunked\r\n", _chunked(1 << 30))
    assert status == 413
    assert sent < 16 * LIMIT  # the limit plus what socket buffers hold, not the 1 GiB offered
    assert _health(url)["uploads"] == 0 and files_in(files) == []


def test_content_length_over_the_limit_is_refused_before_the_body(served: tuple[str, Path]) -> None:
    url, files = served
    status, sent = _raw_post(url, f"Content-Length: {1 << 30}\r\n", iter([]))  # the answer comes without a body
    assert status == 413 and sent == 0
    assert _health(url)["uploads"] == 0 and files_in(files) == []


def _zip_bomb(maps: int, side: int) -> bytes:
    """A MixedWM38-looking .npz whose arr_0 holds ``maps × side × side`` zero bytes, deflated ~1000:1."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (maps, side, side)})
    labels = io.BytesIO()
    np.save(labels, np.zeros((maps, 8), np.uint8))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("arr_0.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            block = bytes(side * side)
            for _ in range(maps):
                f.write(block)
        z.writestr("arr_1.npy", labels.getvalue())
    return out.getvalue()


def test_hostile_file_hits_the_worker_cap_and_the_server_keeps_serving(served: tuple[str, Path]) -> None:
    url, files = served
    # 200 maps of 2,000 × 2,000 dies: within every reader limit (fabsight.io.limits: 4 M dies a grid,
    # 1 GiB of arrays), 800 MB once inflated, < 1 MB sent; only the worker's memory cap stops it
    bomb = _zip_bomb(200, 2000)
    assert len(bomb) < LIMIT
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB; the server runs in this process
    r = httpx.post(f"{url}/api/uploads", files={"file": ("bomb.npz", bomb, "application/zip")}, headers=AUTH,
                   timeout=120)
    assert r.status_code == 422
    assert r.json()["detail"] == "bomb.npz: reading the file needs more than 640 MB (the parser's memory cap)"
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak < 200_000
    assert _health(url)["uploads"] == 0 and files_in(files) == []
    ok = httpx.post(f"{url}/api/uploads", files={"file": (example_files()[0].name, example_files()[0].read_bytes())},
                    headers=AUTH, timeout=120)
    assert ok.status_code == 201 and _health(url)["uploads"] == 1


def test_no_token_no_service(served: tuple[str, Path]) -> None:
    url, _ = served
    assert httpx.get(f"{url}/api/health").status_code == 401
    r = httpx.post(f"{url}/api/uploads", files={"file": ("a.klarf", b"x")}, headers={"Origin": "http://127.0.0.1:1"})
    assert r.status_code == 403 and "access-control-allow-origin" not in r.headers
