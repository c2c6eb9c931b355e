"""The human side of auto-labelling: list the queue, accept or correct, export labels.

These functions know nothing about terminals or web pages, so the CLI (``fabsight
review``) and the dashboard share them. A decision moves the map from ``DIR/pending/``
to ``DIR/labeled/LABEL/`` (an atomic rename) inside the same SQLite transaction that
records it, so the folder ``fabsight wafer train`` reads and the queue never disagree.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.errors import FabsightError
from fabsight.io._common import safe_name
from fabsight.labeling.autolabel import LABELED, QUEUE_DB
from fabsight.utils.atomic import atomic_open

_COLUMNS = (
    "id, source, lot_id, wafer_id, predicted, probability, top3, ood_score, uncertainty, novelty, density, value, "
    "reason, status, label, file, decided_at"
)


@dataclass
class QueueItem:
    """One map of the queue. ``value`` orders the review (highest first)."""

    id: int
    source: str
    lot_id: str
    wafer_id: str
    predicted: str
    probability: float
    top3: list[list[Any]]
    ood_score: float | None
    uncertainty: float | None
    novelty: float | None
    density: float | None
    value: float | None
    reason: str | None
    status: str
    label: str | None
    file: str
    decided_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _item(row: tuple[Any, ...]) -> QueueItem:
    item = QueueItem(*row)
    item.top3 = json.loads(row[6])
    return item


@contextmanager
def _db(root: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    path = Path(root) / QUEUE_DB
    if not path.is_file():
        raise FabsightError(root, f"not an auto-label folder (no {QUEUE_DB}; create one with `fabsight autolabel`)")
    with closing(sqlite3.connect(path, timeout=30, isolation_level=None)) as db:
        yield db


def classes(root: str | os.PathLike[str]) -> list[str]:
    """The classes of the model that labelled this folder."""
    with _db(root) as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'classes'").fetchone()
    return json.loads(row[0]) if row else []


def list_queue(root: str | os.PathLike[str], *, status: str = "pending", limit: int | None = None) -> list[QueueItem]:
    """Items with ``status`` ('pending', 'accepted', 'corrected', 'auto' or 'all'), best first."""
    allowed = ("pending", "accepted", "corrected", "auto", "all")
    if status not in allowed:
        raise FabsightError(None, f"status must be one of {', '.join(allowed)}, got {status!r}")
    where, args = ("", ()) if status == "all" else ("WHERE status = ?", (status,))
    sql = f"SELECT {_COLUMNS} FROM items {where} ORDER BY value IS NULL, value DESC, id"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    with _db(root) as db:
        return [_item(r) for r in db.execute(sql, args)]


def get_item(root: str | os.PathLike[str], item_id: int) -> QueueItem:
    with _db(root) as db:
        row = db.execute(f"SELECT {_COLUMNS} FROM items WHERE id = ?", (item_id,)).fetchone()
    if row is None:
        raise FabsightError(root, f"no queue item {item_id}")
    return _item(row)


def load_map(root: str | os.PathLike[str], item: QueueItem) -> np.ndarray:
    """The die grid of an item (for showing it to the reviewer)."""
    return np.load(Path(root) / item.file)


def _decide(root: str | os.PathLike[str], item_id: int, label: str, status: str) -> QueueItem:
    folder = safe_name(label, "")
    if not label or folder != label:
        raise FabsightError(None, f"label {label!r} is not usable as a class folder name (letters, digits, . _ + -)")
    root = Path(root)
    with _db(root) as db:
        db.execute("BEGIN IMMEDIATE")  # one reviewer at a time decides an item
        try:
            row = db.execute("SELECT status, file FROM items WHERE id = ?", (item_id,)).fetchone()
            if row is None:
                raise FabsightError(root, f"no queue item {item_id}")
            if row[0] != "pending":
                raise FabsightError(root, f"item {item_id} is not pending (it is {row[0]})")
            src = root / row[1]
            dest = Path(LABELED) / folder / src.name
            (root / dest).parent.mkdir(parents=True, exist_ok=True)
            db.execute(
                "UPDATE items SET status = ?, label = ?, file = ?, decided_at = ? WHERE id = ?",
                (status, label, dest.as_posix(), datetime.now(UTC).isoformat(timespec="seconds"), item_id),
            )
            os.replace(src, root / dest)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        try:
            db.execute("COMMIT")
        except sqlite3.Error:
            os.replace(root / dest, src)  # keep folder and queue in agreement
            raise
    return get_item(root, item_id)


def accept(root: str | os.PathLike[str], item_id: int) -> QueueItem:
    """The model's label is right: file the map under it."""
    return _decide(root, item_id, get_item(root, item_id).predicted, "accepted")


def correct(root: str | os.PathLike[str], item_id: int, label: str) -> QueueItem:
    """The right label is ``label`` (a known class or a new one): file the map under it."""
    item = get_item(root, item_id)
    return _decide(root, item_id, label, "accepted" if label == item.predicted else "corrected")


def export_accepted(root: str | os.PathLike[str], out: str | os.PathLike[str], *, include_auto: bool = True) -> int:
    """Write a CSV of every labelled map (file, label, origin, model prediction); returns the row count.

    ``origin`` is ``human`` for accepted/corrected items and ``auto`` for auto-labels, so
    the human-verified subset can be used alone (``include_auto=False``), e.g. as a test set.
    """
    statuses = ("accepted", "corrected", "auto") if include_auto else ("accepted", "corrected")
    rows = [i for s in statuses for i in list_queue(root, status=s)]
    rows.sort(key=lambda i: i.id)
    with atomic_open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "file", "label", "origin", "predicted", "probability", "source", "lot_id", "wafer_id"])
        for i in rows:
            w.writerow(
                [
                    i.id,
                    (Path(root) / i.file).as_posix(),
                    i.label,
                    "auto" if i.status == "auto" else "human",
                    i.predicted,
                    f"{i.probability:.6f}",
                    i.source,
                    i.lot_id,
                    i.wafer_id,
                ]
            )
    return len(rows)
