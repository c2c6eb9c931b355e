"""Durability under load: the service is killed with SIGKILL mid-burst and restarted (prints JSON).

Starts ``fabsight serve`` (with an access token) on a fresh SQLite store on loopback; ``--clients``
threads upload distinct KLARF files for ``--seconds`` (bounded: every client stops at the
deadline); after ``--kill-after`` seconds the server gets ``kill -9`` while uploads are in
flight, and is started again on the same store. A client that loses its connection goes on
with its next file once the server answers again. Then it checks:

* ``acknowledged_lost``: uploads the server answered 201/200 for that are not in the store
  afterwards, or not with the same content hash (must be 0);
* ``partial_uploads``: stored uploads with fewer wafers than their file holds, and
  ``wafers_missing_rows``: wafers without their explanation, review or prediction (must be 0);
* ``missing_files``: stored uploads whose file is not in the files folder (must be 0), and
  ``orphan_files``: files no upload refers to (a kill between writing the file and COMMIT can
  leave one; harmless, reported).

    PYTHONPATH=src python -P benchmarks/serve_load.py --models MODEL_DIR --clients 6 --seconds 60 --kill-after 25

Reuses the file generator and server start-up of ``benchmarks/serve.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import secrets
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_spec = importlib.util.spec_from_file_location("serve_bench", Path(__file__).with_name("serve.py"))
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


@dataclass
class Tally:
    """What the clients saw; one lock guards it all (a few hundred events a minute)."""

    next_file: int = 0
    acknowledged: dict[int, tuple[int, str]] = field(default_factory=dict)  # file index → (upload id, sha256)
    failed: int = 0
    refused: dict[int, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, n: int) -> int | None:
        with self.lock:
            if self.next_file >= n:
                return None
            self.next_file += 1
            return self.next_file - 1


def _client(url: str, token: str, files: list[bytes], tally: Tally, deadline: float) -> None:
    with httpx.Client(base_url=url, timeout=120, headers=bench.auth(token)) as c:
        while time.monotonic() < deadline and (i := tally.take(len(files))) is not None:
            t0 = time.perf_counter()
            try:
                r = c.post("/api/uploads", files={"file": (f"load{i}.klarf", files[i], "text/plain")})
            except httpx.TransportError:  # the server was killed under us: wait until it is back
                with tally.lock:
                    tally.failed += 1
                while time.monotonic() < deadline:
                    try:
                        c.get("/api/health", timeout=2)
                        break
                    except httpx.TransportError:
                        time.sleep(0.2)
                continue
            with tally.lock:
                if r.status_code in (200, 201):
                    tally.acknowledged[i] = (r.json()["id"], r.json()["sha256"])
                    tally.latencies.append(time.perf_counter() - t0)
                else:
                    tally.refused[r.status_code] = tally.refused.get(r.status_code, 0) + 1


def _check_store(db: Path, files_dir: Path, expected: dict[str, int], with_model: bool) -> dict[str, int]:
    """Partial uploads, wafers missing rows, missing and orphan files, read straight from the store."""
    from sqlalchemy import select

    from fabsight.store import open_store
    from fabsight.store.models import Upload

    store = open_store(db)
    partial = missing_rows = missing_files = 0
    try:
        with store.session() as s:
            uploads = s.scalars(select(Upload)).all()
            for up in uploads:
                partial += len(up.wafers) != expected.get(up.sha256, -1)
                missing_rows += sum(w.explanation is None or w.review is None or (with_model and w.prediction is None)
                                    for w in up.wafers)
                missing_files += not (files_dir / up.path).is_file()
            kept = {up.path for up in uploads}
    finally:
        store.close()
    on_disk = {p.name for p in files_dir.iterdir() if p.is_file() and not p.name.startswith(".")}
    return {"stored_uploads": len(uploads), "partial_uploads": partial, "wafers_missing_rows": missing_rows,
            "missing_files": missing_files, "orphan_files": len(on_disk - kept)}


def _lost(url: str, token: str, tally: Tally, files: list[bytes]) -> int:
    """Acknowledged uploads the restarted server does not have, or has with other content."""
    lost = 0
    with httpx.Client(base_url=url, timeout=60, headers=bench.auth(token)) as c:
        for i, (upload_id, _) in tally.acknowledged.items():
            r = c.get(f"/api/uploads/{upload_id}")
            stored = r.json()["sha256"] if r.status_code == 200 else None
            lost += stored != hashlib.sha256(files[i]).hexdigest()
    return lost


def _burst(args: argparse.Namespace, folder: Path, files: list[bytes]) -> tuple[Tally, dict[str, Any], Any]:
    """Run the clients, kill -9 the server mid-burst, restart it; the server left running is returned."""
    port, token = bench.free_port(), secrets.token_urlsafe(24)
    url, db = f"http://127.0.0.1:{port}", folder / "load.sqlite"
    server = bench.start_server(db, args.models, port, token)
    bench.wait_ready(url, server, token)
    warm = bench.klarf_files(folder, 1, 1, "W", seed=6)[0]  # first-request imports, not counted
    httpx.post(f"{url}/api/uploads", files={"file": ("warm.klarf", warm)}, headers=bench.auth(token), timeout=300)
    tally = Tally()
    t0 = time.monotonic()
    clients = [threading.Thread(target=_client, args=(url, token, files, tally, t0 + args.seconds))
               for _ in range(args.clients)]
    for t in clients:
        t.start()
    time.sleep(args.kill_after)
    with tally.lock:
        before = len(tally.acknowledged)
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    killed = time.monotonic()
    server = bench.start_server(db, args.models, port, token)
    bench.wait_ready(url, server, token)
    events = {"acknowledged_before_kill": before, "killed_at_s": round(killed - t0, 1),
              "restart_s": round(time.monotonic() - killed, 1), "url": url, "token": token, "db": db}
    for t in clients:
        t.join()
    events["wall_s"] = round(time.monotonic() - t0, 1)
    return tally, events, server


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="wafer-pattern model folder (default: none; wafers stored and explained)")
    ap.add_argument("--clients", type=int, default=6, choices=range(1, 9), metavar="1..8")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long the clients upload (at most 120)")
    ap.add_argument("--kill-after", type=float, default=25.0, help="seconds into the burst the server is killed")
    ap.add_argument("--files", type=int, default=1500, help="distinct files available (each is sent once)")
    ap.add_argument("--wafers", type=int, default=4, help="wafers per file")
    args = ap.parse_args()
    args.seconds = min(args.seconds, 120.0)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        files = bench.klarf_files(folder, args.files, args.wafers, "LD", seed=5)
        for p in folder.glob("*.klarf"):
            p.unlink()
        tally, ev, server = _burst(args, folder, files)
        try:
            lost = _lost(ev["url"], ev["token"], tally, files)
        finally:
            server.terminate()
            server.wait(timeout=30)
        expected = {hashlib.sha256(f).hexdigest(): args.wafers for f in files}
        expected[hashlib.sha256(bench.klarf_files(folder, 1, 1, "W", seed=6)[0]).hexdigest()] = 1
        store = _check_store(ev["db"], folder / "load-files", expected, args.models is not None)
    lat = sorted(tally.latencies)
    result = {
        "clients": args.clients, "seconds": args.seconds, "wafers_per_file": args.wafers,
        "model": args.models is not None, "wall_s": ev["wall_s"], "killed_at_s": ev["killed_at_s"],
        "restart_s": ev["restart_s"], "uploads_attempted": tally.next_file,
        "acknowledged": len(tally.acknowledged), "acknowledged_before_kill": ev["acknowledged_before_kill"],
        "connection_errors": tally.failed, "refused": tally.refused,
        "p50_ms": round(1000 * lat[len(lat) // 2], 1) if lat else None,
        "acknowledged_lost": lost, **store,
        "cpu_count": os.cpu_count(), "load_avg_1min": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
