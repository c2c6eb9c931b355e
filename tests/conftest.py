"""Shared fixtures: where ../shared is, and skipping cleanly when it is absent.

Every test run starts from an empty cache folder: fabsight (and torch, timm, Hugging Face)
cache what they rebuild under ``$XDG_CACHE_HOME``, and a cache a previous run left behind
once hid a broken weights-recovery path from the tests. Set before anything imports
fabsight, inherited by the CLI subprocesses and the local Ray workers the tests start.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_EMPTY_CACHE = tempfile.mkdtemp(prefix="fabsight-test-cache-")
os.environ["XDG_CACHE_HOME"] = _EMPTY_CACHE
os.environ.pop("FABSIGHT_CACHE", None)

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


@pytest.fixture(scope="session")
def adc_die_model(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[object, dict[str, list[Path]]]:
    """A small die model on real DeepPCB crops and its held-out crops by class, trained once per session."""
    from adckit import train_adc_model

    return train_adc_model(shared, tmp_path_factory.mktemp("adc"))


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the run's cache folder: the next run starts empty too."""
    shutil.rmtree(_EMPTY_CACHE, ignore_errors=True)
