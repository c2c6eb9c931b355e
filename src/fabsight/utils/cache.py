"""Where fabsight keeps what it can rebuild: recovered weights, embeddings, the demo model."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$FABSIGHT_CACHE``, else ``$XDG_CACHE_HOME/fabsight``, else ``~/.cache/fabsight``."""
    if os.environ.get("FABSIGHT_CACHE"):
        return Path(os.environ["FABSIGHT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fabsight"
