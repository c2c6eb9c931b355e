"""Spatial clustering of failing dies (wafer grid) and of defects (KLARF wafer coordinates).

Both use DBSCAN, whose two parameters are chosen from the data rather than fixed, so one
setting works for a 26×26 probe map and a 22,000-defect KLARF file alike:

* **Failing dies on the grid** — points are die positions in die units, ``eps = 1.5`` (the
  8-neighbourhood), and ``min_samples`` is the smallest fail count in a 3×3 window that
  random, spatially independent fails at the wafer's *background* fail rate would reach
  with probability below ``alpha`` (1 %: loose enough that a one-die-wide scratch, three
  fails per window, stands out at a 2–3 % background). A die is therefore a cluster core only
  when its neighbourhood is denser than chance explains. The background rate is the fail rate away
  from the clusters, re-estimated a few times (it starts at the whole-wafer rate). Clusters
  smaller than ``min_cluster_size`` dies are dropped as chance coincidences.
* **Defects in µm** — ``min_samples = 4`` (the 2·dimension rule of Ester et al. / Sander et al.
  for 2-D data) and ``eps`` by the same chance argument: the radius within which a defect
  scattered at random at the wafer's background defect density would have 3 neighbours with
  probability below ``alpha`` (Poisson counts), capped at one die pitch so a cluster never
  jumps across more than one die of empty silicon.

Each cluster is summarised by size, centroid, bounding box and shape, tested in this order:
``ring`` (it surrounds the wafer centre, ≥ 75 % of the 10° angular bins occupied, without
covering it: no member closer than half the median distance; an edge ring or donut), ``arc``
(principal-axis ratio ≥ 2 with the long axis tangential to the wafer centre and spanning ≥ 20°
around it: an edge-loc or partial ring), ``line`` (ratio ≥ 3, a scratch) or ``blob``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from fabsight.types import DefectList, DieState, WaferMap

ALPHA = 0.01
GRID_EPS = 1.5
MIN_CLUSTER_SIZE = 5
DEFECT_MIN_SAMPLES = 4
LINE_ELONGATION = 3.0
RING_COVERAGE = 0.75
ARC_ELONGATION = 2.0
ARC_MIN_SPAN = 20.0


@dataclass
class Cluster:
    """One spatial cluster.

    For die clusters coordinates are (row, col) grid positions; for defect clusters they are
    wafer (x, y) in µm. ``members`` indexes the failing dies (``np.argwhere`` order of the
    grid) or the defects of the :class:`DefectList`.
    """

    id: int
    size: int
    centroid: tuple[float, float]
    bbox: tuple[float, float, float, float]
    shape: str
    elongation: float
    members: np.ndarray

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("members")
        d["centroid"] = [round(v, 3) for v in self.centroid]
        d["bbox"] = [round(v, 3) for v in self.bbox]
        d["elongation"] = round(self.elongation, 2)
        return d


@dataclass
class ClusterResult:
    """Clusters plus the parameters that produced them (reported so results can be reproduced)."""

    clusters: list[Cluster]
    labels: np.ndarray
    eps: float
    min_samples: int
    background_rate: float | None = None
    units: str = "die"

    @property
    def clustered(self) -> int:
        return int(sum(c.size for c in self.clusters))

    def to_dict(self) -> dict[str, Any]:
        return {
            "units": self.units,
            "eps": round(self.eps, 3),
            "min_samples": self.min_samples,
            "background_rate": None if self.background_rate is None else round(self.background_rate, 5),
            "points": len(self.labels),
            "count": len(self.clusters),
            "clustered": self.clustered,
            "isolated": len(self.labels) - self.clustered,
            "clusters": [c.to_dict() for c in self.clusters],
        }


def _angular_span(angles: np.ndarray) -> float:
    """Smallest arc (degrees) containing all ``angles``: 360 minus the largest gap between them."""
    a = np.sort(angles % 360)
    gaps = np.diff(np.concatenate([a, [a[0] + 360]]))
    return float(360 - gaps.max())


def _shape(points: np.ndarray, centre: tuple[float, float]) -> tuple[str, float]:
    """Classify a point set as ``ring``, ``arc``, ``line`` or ``blob`` (see the module docstring)."""
    if len(points) < 3:
        return "blob", 1.0
    evals, evecs = np.linalg.eigh(np.cov(points.T))
    elongation = float(np.sqrt(evals[1] / max(evals[0], 1e-9)))
    rel = points - np.asarray(centre)
    angles = np.degrees(np.arctan2(rel[:, 1], rel[:, 0])) % 360
    coverage = len(np.unique((angles // 10).astype(int))) / 36
    dist = np.hypot(rel[:, 0], rel[:, 1])
    if coverage >= RING_COVERAGE and dist.min() >= 0.5 * np.median(dist):
        return "ring", elongation
    radial = rel.mean(axis=0)
    radial = radial / max(float(np.hypot(*radial)), 1e-9)
    tangential = abs(float(evecs[:, 1] @ radial)) < 0.5
    if elongation >= ARC_ELONGATION and tangential and _angular_span(angles) >= ARC_MIN_SPAN:
        return "arc", elongation
    if elongation >= LINE_ELONGATION:
        return "line", elongation
    return "blob", elongation


def _summarise(points: np.ndarray, labels: np.ndarray, centre: tuple[float, float]) -> list[Cluster]:
    """Turn DBSCAN labels into :class:`Cluster` records, largest first, ids renumbered from 0."""
    found = []
    for lab in sorted(set(labels.tolist()) - {-1}):
        idx = np.flatnonzero(labels == lab)
        pts = points[idx]
        shape, elong = _shape(pts, centre)
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        found.append((idx, pts, shape, elong, lo, hi))
    found.sort(key=lambda f: -len(f[0]))
    return [
        Cluster(
            id=i,
            size=len(idx),
            centroid=(float(pts[:, 0].mean()), float(pts[:, 1].mean())),
            bbox=(float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])),
            shape=shape,
            elongation=elong,
            members=idx,
        )
        for i, (idx, pts, shape, elong, lo, hi) in enumerate(found)
    ]


def binomial_min_samples(rate: float, *, window: int = 9, alpha: float = ALPHA) -> int:
    """Smallest fail count k in a ``window``-die neighbourhood with P(X ≥ k) < alpha under Binomial(window, rate).

    ``rate`` is capped at 0.5: beyond that "background" no longer means anything and the
    densest possible window (all fails) is the only evidence left.
    """
    from scipy.stats import binom

    p = min(max(rate, 1e-6), 0.5)
    for k in range(2, window + 1):
        if binom.sf(k - 1, window, p) < alpha:
            return k
    return window


def cluster_dies(
    wmap: WaferMap,
    *,
    alpha: float = ALPHA,
    min_cluster_size: int = MIN_CLUSTER_SIZE,
    iterations: int = 3,
) -> ClusterResult:
    """Cluster the failing dies of a wafer map (DBSCAN on the grid, see the module docstring).

    ``labels`` in the result has one entry per failing die in ``np.argwhere(grid == FAIL)``
    order: the cluster id, or -1 for a background (unclustered) fail.
    """
    from scipy.ndimage import binary_dilation
    from sklearn.cluster import DBSCAN

    grid = wmap.grid
    fails = np.argwhere(grid == DieState.FAIL)
    on = grid != DieState.OFF
    n_on = int(on.sum())
    centre = _grid_centre(grid)
    if len(fails) == 0 or n_on == 0:
        return ClusterResult([], np.full(len(fails), -1), GRID_EPS, 2, 0.0)
    rate = len(fails) / n_on
    labels = np.full(len(fails), -1)
    min_samples = binomial_min_samples(rate, alpha=alpha)
    for _ in range(iterations):
        min_samples = binomial_min_samples(rate, alpha=alpha)
        labels = DBSCAN(eps=GRID_EPS, min_samples=min_samples).fit_predict(fails.astype(float))
        size_of = np.bincount(labels + 1)[labels + 1]
        labels = np.where((labels >= 0) & (size_of >= min_cluster_size), labels, -1)
        in_cluster = np.zeros_like(on)
        in_cluster[tuple(fails[labels >= 0].T)] = True
        away = on & ~binary_dilation(in_cluster, structure=np.ones((3, 3), bool))
        new_rate = float((grid[away] == DieState.FAIL).sum() / away.sum()) if away.any() else rate
        if binomial_min_samples(new_rate, alpha=alpha) == min_samples:
            rate = new_rate
            break
        rate = new_rate
    clusters = _summarise(fails.astype(float), labels, centre)
    relabel = np.full(len(fails), -1)
    for c in clusters:
        relabel[c.members] = c.id
    return ClusterResult(clusters, relabel, GRID_EPS, min_samples, rate, units="die")


def cluster_grid(wmap: WaferMap, result: ClusterResult) -> np.ndarray:
    """Per-die cluster ids on the grid (-1 elsewhere): what ``render_map(clusters=...)`` draws."""
    out = np.full(wmap.shape, -1, dtype=np.int64)
    fails = np.argwhere(wmap.grid == DieState.FAIL)
    out[tuple(fails.T)] = result.labels
    return out


def defect_cluster_grid(wmap: WaferMap, result: ClusterResult) -> np.ndarray:
    """Per-die ids of defect clusters (-1 elsewhere): a die takes the cluster of its defects.

    Needs the map's ``x_index``/``y_index`` (die indices per column/row, as KLARF readers
    give); defects in dies outside the grid are left out.
    """
    out = np.full(wmap.shape, -1, dtype=np.int64)
    if wmap.defects is None or wmap.x_index is None or wmap.y_index is None:
        return out
    col = {int(v): i for i, v in enumerate(wmap.x_index)}
    row = {int(v): i for i, v in enumerate(wmap.y_index)}
    for xi, yi, lab in zip(wmap.defects.xindex, wmap.defects.yindex, result.labels, strict=True):
        r, c = row.get(int(yi)), col.get(int(xi))
        if lab >= 0 and r is not None and c is not None:
            out[r, c] = lab
    return out


def _grid_centre(grid: np.ndarray) -> tuple[float, float]:
    """Centre of the on-wafer dies' bounding box in (row, col) grid units."""
    rows, cols = np.nonzero(grid != DieState.OFF)
    if len(rows) == 0:
        return ((grid.shape[0] - 1) / 2, (grid.shape[1] - 1) / 2)
    return ((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2)


def csr_eps(n_points: int, area: float, min_samples: int = DEFECT_MIN_SAMPLES, alpha: float = ALPHA) -> float:
    """Largest ``eps`` at which a defect under complete spatial randomness is a DBSCAN core with P < alpha.

    With ``n_points`` spread uniformly over ``area`` the neighbours within ``eps`` are
    Poisson with mean ``μ = n / area · π eps²``; a core needs ``min_samples - 1`` of them.
    """
    from scipy.optimize import brentq
    from scipy.stats import poisson

    need = min_samples - 1
    mu = brentq(lambda m: poisson.sf(need - 1, m) - alpha, 1e-9, 10.0 * need + 10.0)
    return float(np.sqrt(mu * area / (max(n_points, 1) * np.pi)))


def cluster_defects(
    defects: DefectList,
    *,
    die_pitch: tuple[float, float] | None = None,
    eps: float | None = None,
    min_samples: int = DEFECT_MIN_SAMPLES,
) -> ClusterResult:
    """DBSCAN on defect wafer coordinates (µm); ``eps`` from the background density unless given.

    The density is all defects over the disc through the farthest one. Unlike the grid, it
    is not re-estimated from the unclustered defects: with thousands of defects that feedback
    (fewer background defects → larger ``eps`` → bigger clusters) runs away into one cluster,
    while using every defect only errs towards a smaller ``eps``, i.e. tighter clusters.
    """
    from sklearn.cluster import DBSCAN

    xy = np.column_stack([defects.x, defects.y]).astype(float)
    ok = np.isfinite(xy).all(axis=1)
    labels = np.full(len(xy), -1)
    if ok.sum() < min_samples:
        return ClusterResult([], labels, float(eps or 0.0), min_samples, units="um")
    pts = xy[ok]
    if eps is None:
        area = float(np.pi * np.hypot(pts[:, 0], pts[:, 1]).max() ** 2)
        eps = csr_eps(len(pts), area, min_samples)
        if die_pitch is not None:
            eps = min(eps, float(max(die_pitch)))
    eps = max(float(eps), 1e-6)
    labels[ok] = DBSCAN(eps=eps, min_samples=min_samples).fit_predict(pts)
    clusters = _summarise(xy, labels, (0.0, 0.0))
    relabel = np.full(len(xy), -1)
    for c in clusters:
        relabel[c.members] = c.id
    return ClusterResult(clusters, relabel, eps, min_samples, units="um")
