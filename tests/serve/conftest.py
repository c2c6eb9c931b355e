"""Fixtures for the service tests: one tiny wafer model per session and fresh stores.

The model is trained once (a few seconds on 2 cores) on synthetic maps of four well-separated
classes, so predictions on new synthetic maps of those classes are mostly right and the
tests can check the stored labels against the truth the maps were drawn from.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from servekit import CLASSES, FAST

from fabsight.serve import create_app
from fabsight.synth import generate_dataset
from fabsight.wafer import WaferClassifier


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding one small wafer-pattern model (sub-folder ``wafer``)."""
    root = tmp_path_factory.mktemp("models")
    train = generate_dataset(40, classes=CLASSES, shapes=((32, 32), (48, 48)), seed=0)
    WaferClassifier(**FAST).fit(train).save(root / "wafer")
    return root


@pytest.fixture
def client(tmp_path: Path, models_dir: Path) -> Iterator[TestClient]:
    """A service over a fresh SQLite store with the tiny model loaded."""
    app = create_app(tmp_path / "store.sqlite", models_dir, files_dir=tmp_path / "files", max_upload_bytes=2_000_000)
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c
