"""Fixtures for the service tests: a fresh store per test over the session's tiny wafer model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fabsight.serve import create_app
from fabsight.serve.state import Policy
from servekit import AUTH, TOKEN


@pytest.fixture
def client(tmp_path: Path, wafer_models_dir: Path) -> Iterator[TestClient]:
    """A service over a fresh SQLite store with the tiny model loaded (2 MB upload limit), called with the token."""
    app = create_app(tmp_path / "store.sqlite", wafer_models_dir, files_dir=tmp_path / "files",
                     max_upload_bytes=2_000_000, policy=Policy(token=TOKEN))
    with TestClient(app, raise_server_exceptions=False, headers=AUTH) as c:
        yield c
