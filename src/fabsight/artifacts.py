"""Self-describing model directories: weights plus ``card.json``.

Every trained thing fabsight writes (wafer classifier, die probe, anomaly model,
inspection model, distilled student) is a directory whose card says what task it does,
which classes it knows, how its input must be prepared, what data it was trained on,
how well it did and which fabsight wrote it. Every command that loads a model reads the
card first and fails with one clear line when it is missing or is for another task.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fabsight import __version__
from fabsight.errors import ModelError
from fabsight.utils.atomic import write_json

CARD_NAME = "card.json"


@dataclass
class ModelCard:
    """What a model directory holds. ``task`` names the loader that can read it."""

    task: str
    classes: list[str] = field(default_factory=list)
    input: dict[str, Any] = field(default_factory=dict)
    backbone: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    version: str = __version__
    created: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def save_card(model_dir: str | os.PathLike[str], card: ModelCard) -> Path:
    path = Path(model_dir) / CARD_NAME
    write_json(path, card.to_dict())
    return path


def load_card(model_dir: str | os.PathLike[str], task: str | tuple[str, ...] | None = None) -> ModelCard:
    """Read and check a model card; ``task`` restricts which tasks are acceptable."""
    d = Path(model_dir)
    if not d.is_dir():
        raise ModelError(d, "not a model directory (it does not exist or is a file)")
    path = d / CARD_NAME
    if not path.is_file():
        raise ModelError(d, f"no {CARD_NAME}: not a fabsight model directory")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(path, f"unreadable model card ({exc})") from None
    if not isinstance(raw, dict) or "task" not in raw:
        raise ModelError(path, "model card has no 'task'")
    known = {f for f in ModelCard.__dataclass_fields__}
    card = ModelCard(**{k: v for k, v in raw.items() if k in known})
    allowed = (task,) if isinstance(task, str) else task
    if allowed is not None and card.task not in allowed:
        raise ModelError(d, f"is a '{card.task}' model, expected {' or '.join(repr(t) for t in allowed)}")
    if card.version.split(".")[:2] != __version__.split(".")[:2]:
        warnings.warn(f"{d}: written by fabsight {card.version}, loading with {__version__}", stacklevel=2)
    for role, name in card.files.items():
        if not (d / name).exists():
            raise ModelError(d, f"card lists {role} file '{name}' but it is missing")
    return card
