"""The wafer-pattern model fabsight ships, and how a command finds its model.

``wm811k/`` holds a small network trained on the real WM-811K maps by
``scripts/build_pretrained_wafer.py`` (its ``README.md`` and ``card.json`` say on what data and
how well). Every command that classifies wafer maps uses it when no model is named, so a new
user gets real-map predictions, embeddings for drift, and a start for few-shot training
without training anything first.
"""

from __future__ import annotations

import os
from pathlib import Path

from fabsight.errors import ModelError

#: Where the shipped model lives inside the installed package.
PRETRAINED_DIR = Path(__file__).resolve().parent / "wm811k"
#: What ``--init`` / ``--model`` accept as a name for the shipped model instead of a path.
PRETRAINED_NAME = "pretrained"


def pretrained_dir() -> Path:
    """The shipped model's directory; a broken install (the folder is missing) is a ``ModelError``."""
    if not (PRETRAINED_DIR / "card.json").is_file():
        raise ModelError(PRETRAINED_DIR, "the shipped wafer model is missing (broken install?)")
    return PRETRAINED_DIR


def resolve_model(model: str | os.PathLike[str] | None) -> Path:
    """The model directory a command should load: ``model`` as given, or the shipped one when
    ``model`` is ``None`` or the name :data:`PRETRAINED_NAME`."""
    if model is None or str(model) == PRETRAINED_NAME:
        return pretrained_dir()
    return Path(model)
