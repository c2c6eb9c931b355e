"""Upload throughput and latency of the REST service on loopback (prints JSON).

Starts ``fabsight serve`` (uvicorn) in a subprocess on a fresh SQLite store, then posts
distinct files with httpx clients, every upload going through the whole pipeline (parse,
classify, explain, store in one transaction):

* ``single``: one-wafer KLARF files, one client, one after another;
* ``lot``: 25-wafer KLARF lots, ``--clients`` clients at once.

Each file is distinct (its own lot id), so the duplicate shortcut never answers. Reported:
uploads/s and wafers/s over the wall-clock time, and p50/p99 latency per upload. The server
gets a fresh access token through ``FABSIGHT_TOKEN`` and every request sends it.

    PYTHONPATH=src python -P benchmarks/serve.py --models MODEL_DIR --single 40 --lots 16 --clients 4


"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np

from fabsight.io import write_klarf
from fabsight.synth import generate_dataset
from fabsight.types import WM811K_CLASSES


def klarf_files(folder: Path, n: int, wafers: int, prefix: str, seed: int) -> list[bytes]:
    """``n`` distinct KLARF files of ``wafers`` 52×52 wafers each (patterns cycle through the classes)."""
    per_class = -(-n * wafers // len(WM811K_CLASSES))
    pool = generate_dataset(per_class, shapes=((52, 52),), seed=seed)
    order = np.random.default_rng(seed).permutation(len(pool))
    out = []
    for i in range(n):
        maps = [pool[j] for j in order[i * wafers : (i + 1) * wafers]]
        for k, m in enumerate(maps, start=1):
            m.lot_id, m.wafer_id, m.timestamp = f"{prefix}{i:04d}", f"{k:02d}", datetime(2026, 11, 1, 8, k % 60)
        out.append(write_klarf(maps, folder / f"{prefix}{i}.klarf").read_bytes())
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, models: str | None, port: int, token: str) -> subprocess.Popen:
    """``fabsight serve`` on 127.0.0.1:``port`` in a subprocess with ``token`` as its access token; its log
    (access lines included) goes to ``DB.log``, never to a pipe nobody reads (a full pipe stalls the server)."""
    cmd = [sys.executable, "-m", "fabsight", "serve", "--db", str(db), "--port", str(port)]
    cmd += ["--models", models] if models else []
    env = {**os.environ, "FABSIGHT_TOKEN": token}
    with open(db.with_suffix(".log"), "ab") as log:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)


def wait_ready(url: str, server: subprocess.Popen, token: str, timeout: float = 300) -> None:
    """Until ``/api/health`` answers 200 (or the server died / ``timeout`` passed: RuntimeError with its log)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(f"{url}/api/health", headers=auth(token), timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            log = Path(server.args[server.args.index("--db") + 1]).with_suffix(".log")
            raise RuntimeError(f"server did not start: {log.read_text()[-2000:]}")
        time.sleep(0.1)


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _run(url: str, files: list[bytes], clients: int, name: str, token: str) -> dict[str, float]:
    def send(args: tuple[int, bytes]) -> float:
        i, data = args
        with httpx.Client(base_url=url, timeout=600, headers=auth(token)) as c:
            t0 = time.perf_counter()
            r = c.post("/api/uploads", files={"file": (f"{name}{i}.klarf", data, "text/plain")})
            took = time.perf_counter() - t0
        if r.status_code != 201:
            raise RuntimeError(f"upload {i}: {r.status_code} {r.text[:200]}")
        return took

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = np.array(list(pool.map(send, enumerate(files))))
    wall = time.perf_counter() - t0
    return {"uploads": len(files), "clients": clients, "wall_s": round(wall, 3),
            "uploads_per_s": round(len(files) / wall, 3),
            "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", required=True, help="folder with the wafer-pattern model")
    ap.add_argument("--single", type=int, default=40, help="one-wafer uploads")
    ap.add_argument("--lots", type=int, default=16, help="25-wafer lot uploads")
    ap.add_argument("--clients", type=int, default=4, help="concurrent clients for the lot uploads")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        singles = klarf_files(folder, args.single, 1, "S", seed=1)
        lots = klarf_files(folder, args.lots, 25, "L", seed=2)
        port, token = free_port(), secrets.token_urlsafe(24)
        server = start_server(folder / "bench.sqlite", args.models, port, token)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, server, token)
            with httpx.Client(base_url=url, timeout=600, headers=auth(token)) as c:  # warm-up: first-request imports
                c.post("/api/uploads", files={"file": ("warm.klarf", klarf_files(folder, 1, 1, "W", 3)[0])})
            single = _run(url, singles, 1, "s", token)
            lot = _run(url, lots, args.clients, "l", token)
            lot["wafers_per_s"] = round(25 * lot["uploads_per_s"], 2)
            counts = httpx.get(f"{url}/api/health", headers=auth(token)).json()["counts"]
        finally:
            server.terminate()
            server.wait(timeout=30)
    result = {"single_klarf_1_wafer": single, "lot_klarf_25_wafers": lot, "stored": counts,
              "cpu_count": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
