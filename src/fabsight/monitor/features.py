"""Per-wafer features for monitoring: interpretable without a model, richer with one.

Drift alarms are only useful when an engineer can see *what* moved, so every column has
a name a yield engineer reads directly ("fail_rate_edge_band", "p[Edge-Ring]"). The
geometric features need no trained model, which lets monitoring start on day one of a
new product; a wafer classifier (the shipped WM-811K model unless ``--model`` names
another) adds its calibrated pattern probabilities and its embedding, which the drift
test compares as the wafers' pattern mix and as a kernel two-sample test.

Positions are normalised to the bounding box of the wafer's own on-wafer dies, so the
wafer is the unit disk whatever the grid size or aspect ratio (the convention of
:mod:`fabsight.synth`): ring and sector features mean the same thing at 26×26 and 300×200.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import ndimage

from fabsight.types import DieState, WaferMap
from fabsight.utils.progress import track

#: Equal-width rings in normalised radius, centre (0) to edge (4).
N_RINGS = 5
#: Compass sectors as the map is drawn (north = top row), counter-clockwise from east.
SECTORS: tuple[str, ...] = ("E", "NE", "N", "NW", "W", "SW", "S", "SE")
#: Dies this close to the wafer boundary (in dies) form the edge band.
EDGE_BAND_DIES = 2
#: Radius (wafer radii) of the centre disk used by ``centre_fail_share``.
CENTRE_RADIUS = 1 / 3
#: Smallest 8-connected group of failing dies counted as a cluster; smaller groups are
#: what random die failures produce by chance on a typical map.
MIN_CLUSTER_DIES = 4

GEOMETRIC_FEATURES: tuple[str, ...] = (
    "fail_fraction",
    *(f"fail_rate_ring{k}" for k in range(N_RINGS)),
    *(f"fail_rate_sector_{s}" for s in SECTORS),
    "fail_rate_edge_band",
    "centre_fail_share",
    "largest_cluster_fraction",
    "cluster_count",
    "line_likeness",
)

_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class FeatureTable:
    """Features of a set of wafers: ``values[i, j]`` is feature ``names[j]`` of wafer ``i``.

    ``predicted`` holds the classifier's top label per wafer when a model was used, so the
    pattern mix can be counted without running the model twice; ``embedding`` (wafers ×
    dimensions) its penultimate-layer features, kept apart from ``values`` because its
    columns have no meaning an engineer reads one by one.
    """

    values: np.ndarray
    names: list[str]
    predicted: list[str] | None = None
    classes: list[str] | None = None
    embedding: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.values.shape[0])

    def subset(self, index: np.ndarray | Sequence[int]) -> FeatureTable:
        """Rows ``index`` (e.g. the wafers of one lot), names kept."""
        idx = np.asarray(index, dtype=np.int64)
        pred = None if self.predicted is None else [self.predicted[i] for i in idx]
        emb = None if self.embedding is None else self.embedding[idx]
        return FeatureTable(self.values[idx], list(self.names), pred, self.classes, emb)


@dataclass(frozen=True)
class _Layout:
    """Per-mask lookup arrays (cached: all wafers of a product share one mask)."""

    n_dies: int
    ring: np.ndarray  # ring index of each on-wafer die (flattened order)
    sector: np.ndarray
    edge: np.ndarray  # bool
    centre: np.ndarray  # bool
    rows: np.ndarray
    cols: np.ndarray


@lru_cache(maxsize=32)
def _layout(shape: tuple[int, int], mask_bytes: bytes) -> _Layout:
    mask = np.frombuffer(mask_bytes, dtype=bool).reshape(shape)
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    v = (rows - (r0 + r1) / 2) / max((r1 - r0 + 1) / 2, 0.5)
    u = (cols - (c0 + c1) / 2) / max((c1 - c0 + 1) / 2, 0.5)
    rho = np.hypot(u, v)
    theta = np.arctan2(-v, u)  # rows grow downwards; north is up as drawn
    ring = np.minimum((rho * N_RINGS).astype(np.int64), N_RINGS - 1)
    sector = np.round(theta / (2 * np.pi / len(SECTORS))).astype(np.int64) % len(SECTORS)
    # Distance in dies to the nearest off-wafer cell (the grid border counts as off-wafer).
    dist = ndimage.distance_transform_cdt(np.pad(mask, 1), metric="chessboard")[1:-1, 1:-1]
    edge = dist[rows, cols] <= EDGE_BAND_DIES
    return _Layout(len(rows), ring, sector, edge, rho < CENTRE_RADIUS, rows, cols)


def _rate(fail: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Fail rate per group; a group with no dies (tiny grids) counts as 0, not NaN."""
    total = np.bincount(group, minlength=n_groups)
    failing = np.bincount(group, weights=fail, minlength=n_groups)
    return np.divide(failing, total, out=np.zeros(n_groups), where=total > 0)


def _cluster_features(fail_grid: np.ndarray, n_dies: int) -> tuple[float, float, float]:
    """Largest-cluster fraction, cluster count, and line-likeness of the largest cluster.

    Line-likeness is ``1 - λmin/λmax`` of the largest cluster's die-position covariance:
    0 for a round blob, near 1 for a scratch, which is what separates Scratch from Loc.
    """
    labels, n = ndimage.label(fail_grid, structure=_EIGHT)
    if n == 0:
        return 0.0, 0.0, 0.0
    sizes = np.bincount(labels.ravel())[1:]
    biggest = int(np.argmax(sizes)) + 1
    line = 0.0
    if sizes[biggest - 1] >= MIN_CLUSTER_DIES:
        rr, cc = np.nonzero(labels == biggest)
        eig = np.linalg.eigvalsh(np.cov(np.stack([rr, cc]).astype(np.float64)))
        line = float(1.0 - eig[0] / eig[1]) if eig[1] > 0 else 0.0
    return float(sizes.max() / n_dies), float(np.count_nonzero(sizes >= MIN_CLUSTER_DIES)), line


def geometric_features(grid: np.ndarray) -> np.ndarray:
    """The :data:`GEOMETRIC_FEATURES` of one die grid (0 off / 1 good / 2 fail)."""
    mask = grid != DieState.OFF
    if not mask.any():
        return np.zeros(len(GEOMETRIC_FEATURES))
    lay = _layout(mask.shape, np.ascontiguousarray(mask).tobytes())
    fail = (grid[lay.rows, lay.cols] == DieState.FAIL).astype(np.float64)
    n_fail = fail.sum()
    fail_grid = grid == DieState.FAIL
    largest, count, line = _cluster_features(fail_grid, lay.n_dies)
    return np.concatenate(
        [
            [n_fail / lay.n_dies],
            _rate(fail, lay.ring, N_RINGS),
            _rate(fail, lay.sector, len(SECTORS)),
            [fail[lay.edge].mean() if lay.edge.any() else 0.0],
            [fail[lay.centre].sum() / n_fail if n_fail else 0.0],
            [largest, count, line],
        ]
    )


def extract_features(maps: Sequence[WaferMap], *, model: Any = None, embeddings: bool = True) -> FeatureTable:
    """Features of ``maps``: geometric ones, plus ``p[CLASS]`` columns and the embedding with a model.

    ``model`` is a loaded wafer classifier (``fabsight.wafer.load_model``): its calibrated
    probabilities become one column per class and its top label ``predicted``.
    ``embeddings`` also keeps its embedding (``FeatureTable.embedding``), which catches
    shifts the class list has no name for.
    """
    geo = np.array([geometric_features(m.grid) for m in track(maps, "features")]).reshape(
        len(maps), len(GEOMETRIC_FEATURES)
    )
    if model is None:
        return FeatureTable(geo, list(GEOMETRIC_FEATURES))
    classes = [str(c) for c in model.classes_]
    proba = np.asarray(model.predict_proba(list(maps)), dtype=np.float64)
    emb = np.asarray(model.embed(list(maps)), dtype=np.float64) if embeddings else None
    predicted = [classes[i] for i in np.argmax(proba, axis=1)]
    names = [*GEOMETRIC_FEATURES, *(f"p[{c}]" for c in classes)]
    return FeatureTable(np.hstack([geo, proba]), names, predicted, classes, emb)
