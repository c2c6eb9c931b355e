"""Self-describing model directories: weights plus ``card.json``.

Every trained thing fabsight writes (wafer classifier, die probe, anomaly model,
inspection model, distilled student) is a directory whose card says what task it does,
which classes it knows, how its input must be prepared, what data it was trained on,
how well it did and which fabsight wrote it. Every command that loads a model reads the
card first and fails with one clear line when it is missing or is for another task.

``schema`` numbers the card layout: a card from a newer fabsight is refused with one line
(its keys may mean something this version cannot honour), and keys this version does not
know are kept (``ModelCard.other``) and written back, never dropped.

:func:`load` is the one entry point for every task: it reads the card and hands the
directory to the loader registered for the card's ``task`` (imported only then, so loading
an ONNX wafer model never imports PyTorch).
"""

from __future__ import annotations

import importlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fabsight import __version__
from fabsight.errors import FabsightError, ModelError
from fabsight.utils.atomic import write_json

CARD_NAME = "card.json"
#: Layout version of ``card.json`` written by this fabsight (cards without one are schema 0).
SCHEMA_VERSION = 1


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
    schema: int = SCHEMA_VERSION
    #: Top-level keys of the file this version does not know: kept, and written back as they were.
    other: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {**d.pop("other"), **d}


def save_card(model_dir: str | os.PathLike[str], card: ModelCard) -> Path:
    """Write ``card.json`` atomically, in this version's layout (``schema``)."""
    card.schema = SCHEMA_VERSION
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
    schema = raw.get("schema", 0)
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise ModelError(path, f"card schema {schema} is newer than this fabsight reads ({SCHEMA_VERSION}): "
                               "upgrade fabsight to load this model")
    known = set(ModelCard.__dataclass_fields__) - {"other"}
    card = ModelCard(**{k: v for k, v in raw.items() if k in known},
                     other={k: v for k, v in raw.items() if k not in known})
    card.schema = schema
    allowed = (task,) if isinstance(task, str) else task
    if allowed is not None and card.task not in allowed:
        raise ModelError(d, f"is a '{card.task}' model, expected {' or '.join(repr(t) for t in allowed)}")
    if card.version.split(".")[:2] != __version__.split(".")[:2]:
        warnings.warn(f"{d}: written by fabsight {card.version}, loading with {__version__}", stacklevel=2)
    for role, name in card.files.items():
        if not (d / name).exists():
            raise ModelError(d, f"card lists {role} file '{name}' but it is missing")
    return card


@dataclass(frozen=True)
class TaskLoader:
    """How a task's model directories are loaded: ``"module:callable"`` taking the directory
    (and ``runtime=`` when the task runs in more than PyTorch), imported on first use."""

    target: str
    runtimes: tuple[str, ...] = ("torch",)

    def resolve(self) -> Any:
        module, _, name = self.target.partition(":")
        return getattr(importlib.import_module(module), name)


_TASKS: dict[str, TaskLoader] = {}


def register_task(task: str, target: str, runtimes: tuple[str, ...] = ("torch",)) -> None:
    """Make ``load`` hand ``task`` model directories to ``target`` (``"module:callable"``)."""
    _TASKS[task] = TaskLoader(target, tuple(runtimes))


def registered_tasks() -> dict[str, TaskLoader]:
    return dict(_TASKS)


_ONNX = ("torch", "onnx", "onnx-int8")
register_task("wafer-pattern", "fabsight.deploy.runtime:load_predictor", _ONNX)
register_task("die-classifier", "fabsight.die.model:DieModel", _ONNX)
register_task("anomaly", "fabsight.deploy.anomaly:load_anomaly_model", _ONNX)
register_task("golden-template-inspection", "fabsight.inspect.model:load_inspector")
register_task("backbone", "fabsight.backbones.registry:load_backbone_dir")


def load(model_dir: str | os.PathLike[str], runtime: str = "torch", *, task: str | tuple[str, ...] | None = None,
         **options: Any) -> Any:
    """The predictor for any fabsight model directory, whatever its task.

    ``runtime``: ``torch``, or ``onnx`` / ``onnx-int8`` for an exported model of a task that
    has them; ``task`` restricts the tasks a command accepts (a die model given to a wafer
    command is refused in one line); ``options`` go to the task's loader (e.g. ``n_threads``,
    ``device``).
    """
    card = load_card(model_dir, task=task)
    entry = _TASKS.get(card.task)
    if entry is None:
        raise ModelError(model_dir, f"no loader for task '{card.task}' (known: {', '.join(sorted(_TASKS))})")
    if runtime not in entry.runtimes:
        raise FabsightError(model_dir, f"a '{card.task}' model runs in {', '.join(entry.runtimes)}, not {runtime!r}")
    loader = entry.resolve()
    return loader(model_dir, runtime=runtime, **options) if len(entry.runtimes) > 1 else loader(model_dir, **options)
