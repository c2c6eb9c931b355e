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
