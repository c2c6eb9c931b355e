"""Shared fixtures: where ../shared is, and skipping cleanly when it is absent."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared() -> Path:
    """``../shared`` beside the checkout; tests that need it skip when it is absent."""
    if not (SHARED / "fixtures").is_dir():
        pytest.skip("../shared (real fixtures and data) is not beside this checkout")
    return SHARED


@pytest.fixture(scope="session")
def wafer_models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder holding one tiny wafer-pattern model (sub-folder ``wafer``), trained once per session."""
    from servekit import train_tiny_model

    root = tmp_path_factory.mktemp("models")
    train_tiny_model(root / "wafer")
    return root
