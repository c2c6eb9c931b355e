"""The tiny wafer model the service and demo tests share, and small helpers (fixtures are in conftest)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

#: Classes of the tiny session model: four patterns the generator keeps well apart.
CLASSES = ("Center", "Edge-Ring", "Scratch", "none")
FAST = {"input_size": 32, "epochs": 4, "batch_size": 32, "n_threads": 1}
#: The access token of the test services, and the header that carries it.
TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def uvicorn_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on a free loopback port, in a thread; yields its base URL."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


def files_in(folder: Path) -> list[str]:
    """Every file under ``folder`` (what an upload may have left behind)."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def train_tiny_model(model_dir: Path) -> Path:
    """Train and save a small wafer-pattern model (a few seconds on 2 cores) on synthetic maps of
    four well-separated classes, so its predictions on new synthetic maps are mostly right."""
    from fabsight.synth import generate_dataset
    from fabsight.wafer import WaferClassifier

    train = generate_dataset(40, classes=CLASSES, shapes=((32, 32), (48, 48)), seed=0)
    return WaferClassifier(**FAST).fit(train).save(model_dir)
