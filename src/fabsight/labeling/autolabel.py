"""Auto-labelling: label what the model is sure about, queue the rest for a person, best first.

Output folder (built aside and swapped in whole, so a crash never leaves half of it)::

    DIR/labeled/CLASS/*.npy   confident labels, the layout ``fabsight wafer train`` reads
    DIR/pending/*.npy         maps waiting for a person
    DIR/queue.sqlite          one row per map: prediction, scores, status, final label

The queue is SQLite rather than JSONL because a person (CLI) and the dashboard may
review at the same time: every accept/correct is one transaction, so two reviewers
never overwrite each other's decisions and a crash mid-write loses nothing.

Review order: a person's label is worth most on maps that are (a) uncertain, (b) novel,
and (c) typical of many other queued maps, because one label then fixes a whole group
once the model is retrained. Each queued map gets

* ``uncertainty = 1 - (p₁ - p₂)``: one minus the margin between the two most probable
  classes (0 = certain, 1 = a tie);
* ``novelty``: the fraction of this batch's maps with a lower out-of-distribution score
  (the model's distance to its training embeddings), so the batch's most unusual maps
  score near 1 whatever the score's scale;
* ``density``: the mean cosine similarity of the map's embedding to its
  :data:`DENSITY_NEIGHBOURS` nearest queued neighbours, rank-scaled to [0, 1];

and ``value = (1 - (1 - uncertainty)(1 - novelty)) · (0.5 + 0.5 · density)``. The first
factor is a noisy-OR: uncertainty and novelty are two independent hints that the model's
label is wrong, and either alone is enough (a confident prediction on an out-of-
distribution map is not trustworthy, since calibration only holds near the training data).
The density factor only re-orders maps of similar information: it never lifts a map above
another by more than a factor of two.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.errors import FabsightError
from fabsight.io import write_folder
from fabsight.io._common import safe_name
from fabsight.types import WaferMap
from fabsight.utils.atomic import atomic_dir

QUEUE_DB = "queue.sqlite"
LABELED = "labeled"
PENDING = "pending"
#: Neighbours used for the density (representativeness) score.
DENSITY_NEIGHBOURS = 5
#: Largest neighbour pool for the density score, and rows compared per block.
DENSITY_REFERENCE = 4096
DENSITY_BLOCK = 1024

_SCHEMA = """
CREATE TABLE items (
    id INTEGER PRIMARY KEY,
    source TEXT, lot_id TEXT, wafer_id TEXT,
    predicted TEXT NOT NULL, probability REAL NOT NULL, top3 TEXT NOT NULL, ood_score REAL,
    uncertainty REAL, novelty REAL, density REAL, value REAL,
    reason TEXT,
    status TEXT NOT NULL CHECK (status IN ('auto', 'pending', 'accepted', 'corrected')),
    label TEXT, file TEXT NOT NULL, decided_at TEXT
);
CREATE INDEX items_queue ON items (status, value DESC);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass
class AutoLabelSummary:
    out: str
    total: int
    labeled: int
    review: int
    threshold: float
    labeled_per_class: dict[str, int]


def stem(item_id: int, wmap: WaferMap) -> str:
    """File stem of a queued/labelled map: readable origin plus the unique queue id."""
    return safe_name(f"{wmap.lot_id}_{wmap.wafer_id}_{item_id:06d}", f"{item_id:06d}")


def _rank01(x: np.ndarray) -> np.ndarray:
    """Empirical-CDF scaling to [0, 1): the fraction of entries strictly below each one."""
    return np.searchsorted(np.sort(x), x, side="left") / max(len(x), 1)


def _neighbour_similarity(embeddings: np.ndarray) -> np.ndarray:
    """Mean cosine similarity of each row to its nearest other rows (see :data:`DENSITY_NEIGHBOURS`).

    Neighbours are searched among at most :data:`DENSITY_REFERENCE` rows (a fixed-seed sample
    when the queue is larger) and in row blocks, so memory stays bounded by
    ``DENSITY_BLOCK × DENSITY_REFERENCE`` and time is linear in the queue length.
    """
    n = len(embeddings)
    e = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    ref = (
        np.arange(n)
        if n <= DENSITY_REFERENCE
        else np.sort(np.random.default_rng(0).choice(n, DENSITY_REFERENCE, replace=False))
    )
    k = min(DENSITY_NEIGHBOURS, len(ref) - 1)
    out = np.empty(n)
    for start in range(0, n, DENSITY_BLOCK):
        rows = np.arange(start, min(start + DENSITY_BLOCK, n))
        sim = e[rows] @ e[ref].T
        sim[rows[:, None] == ref[None, :]] = -np.inf  # a map is not its own neighbour
        out[rows] = (-np.partition(-sim, k - 1, axis=1)[:, :k]).mean(axis=1)
    return out


def review_scores(top2: np.ndarray, novelty: np.ndarray, embeddings: np.ndarray | None) -> dict[str, np.ndarray]:
    """Uncertainty, novelty, density and value of the queued maps (see the module docstring).

    ``top2`` (n, 2) holds each queued map's two largest probabilities, ``novelty`` its
    OOD score already rank-scaled over the whole batch, ``embeddings`` (n, D) the model's
    embeddings of the queued maps (``None``: every map counts as equally typical).
    """
    uncertainty = 1.0 - (top2[:, 0] - top2[:, 1])
    n = len(top2)
    density = np.full(n, 0.5)
    if embeddings is not None and n > 2:
        density = _rank01(_neighbour_similarity(embeddings)) * n / (n - 1)  # most typical map → 1
    value = (1.0 - (1.0 - uncertainty) * (1.0 - novelty)) * (0.5 + 0.5 * density)
    return {"uncertainty": uncertainty, "novelty": novelty, "density": density, "value": value}


def autolabel(
    maps: Sequence[WaferMap],
    model: Any,
    out: str | os.PathLike[str],
    *,
    threshold: float = 0.9,
    overwrite: bool = False,
) -> AutoLabelSummary:
    """Label ``maps`` with ``model``; write confident ones to ``out/labeled``, queue the rest.

    A map is auto-labelled when its calibrated probability is at least ``threshold`` and
    the model does not flag it for review (low confidence or out of distribution).
    ``overwrite`` is needed to replace an existing output, because it may hold human
    review work.
    """
    out = Path(out)
    if not 0 < threshold <= 1:
        raise FabsightError(None, f"threshold must lie in (0, 1], got {threshold}")
    if not maps:
        raise FabsightError(None, "nothing to label: no wafer maps")
    if out.exists() and not overwrite:
        raise FabsightError(out, "already exists (it may hold reviewed labels); use --overwrite to replace it")
    details = model.predict_details(list(maps))
    confident = np.array([d["probability"] >= threshold and not d["needs_review"] for d in details])
    novelty = _rank01(np.array([d["ood_score"] for d in details], dtype=np.float64))
    queued = np.flatnonzero(~confident)
    scores: dict[str, np.ndarray] = {}
    if len(queued):
        top2 = np.array(
            [[t[1] for t in details[i]["top3"][:2]] + [0.0] * (2 - len(details[i]["top3"][:2])) for i in queued]
        )
        emb = np.asarray(model.embed([maps[i] for i in queued]), dtype=np.float64)
        scores = review_scores(top2, novelty[queued], emb)
    pos = {int(i): j for j, i in enumerate(queued)}

    with atomic_dir(out) as tmp:
        (tmp / PENDING).mkdir()
        labeled_maps, expected, rows = [], [], []
        for i, (m, d) in enumerate(zip(maps, details, strict=True)):
            name = stem(i, m)
            if confident[i]:
                labeled_maps.append(
                    WaferMap(
                        m.grid, lot_id=m.lot_id, wafer_id=f"{m.wafer_id}_{i:06d}", labels=tuple(d["label"].split("+"))
                    )
                )
                file = f"{LABELED}/{safe_name(d['label'], 'unlabeled')}/{name}.npy"
                expected.append(file)
                status, label, reason, sc = "auto", d["label"], None, (None,) * 4
            else:
                np.save(tmp / PENDING / f"{name}.npy", np.asarray(m.grid, np.uint8))
                file = f"{PENDING}/{name}.npy"
                reason = d["review_reason"] or f"probability {d['probability']:.2f} < threshold {threshold:.2f}"
                j = pos[i]
                status, label = "pending", None
                sc = tuple(float(scores[k][j]) for k in ("uncertainty", "novelty", "density", "value"))
            rows.append(
                (
                    i,
                    m.source,
                    m.lot_id,
                    m.wafer_id,
                    d["label"],
                    float(d["probability"]),
                    json.dumps(d["top3"]),
                    float(d["ood_score"]),
                    *sc,
                    reason,
                    status,
                    label,
                    file,
                )
            )
        if labeled_maps:
            write_folder(labeled_maps, tmp / LABELED)
        else:
            (tmp / LABELED).mkdir()
        missing = [f for f in expected if not (tmp / f).is_file()]
        if missing:  # write_folder's naming and ours must agree; a mismatch is a bug, not a user error
            raise RuntimeError(f"labelled maps not where the queue expects them: {missing[:3]}")
        db = sqlite3.connect(tmp / QUEUE_DB)
        try:
            with db:
                db.executescript(_SCHEMA)
                db.executemany(
                    "INSERT INTO items (id, source, lot_id, wafer_id, predicted, probability, top3, ood_score, "
                    "uncertainty, novelty, density, value, reason, status, label, file) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                classes = [str(c) for c in model.classes_]
                db.executemany(
                    "INSERT INTO meta VALUES (?, ?)", [("classes", json.dumps(classes)), ("threshold", str(threshold))]
                )
        finally:
            db.close()
    per_class = Counter(d["label"] for d, c in zip(details, confident, strict=True) if c)
    return AutoLabelSummary(str(out), len(maps), int(confident.sum()), len(queued), threshold, dict(per_class))
