"""Repeating defects: the same position inside the die (or reticle) on several dies or wafers.

A mask or reticle defect prints in every exposure, so its defects sit at one die-relative
position (``XREL``/``YREL``) on many dies; a random particle does not. A defect is flagged

* **in the wafer** when defects of at least ``min_dies`` different dies of its wafer
  (itself included, default 3) lie within ``tolerance_um`` of its die-relative position, and
* **in the lot** when defects of at least ``min_wafers`` different wafers of its lot do
  (default 3).

Given a reticle of ``(nx, ny)`` dies, positions are reticle-relative instead
(``(xindex mod nx) · pitch + XREL``) and "different dies" become different reticle shots,
so a defect in the top-left die of every shot is found while the other dies' same position
is not counted. The default tolerance, :data:`DEFAULT_TOLERANCE_UM` (10 µm), covers the
coordinate accuracy of optical inspection tools (a few µm) with room to spare. Chance
coincidences grow with defect density: with 1,000 random defects per wafer on a 5 × 6 mm
die, 1 % of them have another within 10 µm on some other die, but only ~0.005 % on two
other dies, hence the default of 3 dies. Beyond that, the dies (wafers) needed rise with
the measured density until uniform random defects at that density would be flagged fewer
than :data:`DEFAULT_MAX_CHANCE` times (Poisson), so a dirty wafer is not taken for a wafer
of repeaters. Each result says how many dies / wafers it needed and how many flags chance
would give at that need.

Neighbour counting uses :class:`scipy.spatial.cKDTree` (never all pairs): one count over all
defects and one with each die moved far apart (same-die neighbours only); their difference
says whether another die is near, and only those candidates get their distinct dies counted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fabsight.analytics.pareto import wafer_name
from fabsight.errors import FabsightError
from fabsight.types import WaferMap

#: Default search radius (µm) around a defect's die- or reticle-relative position.
DEFAULT_TOLERANCE_UM = 10.0
#: Default number of distinct dies (shots) / wafers a position must be found on.
DEFAULT_MIN_DIES = 3
DEFAULT_MIN_WAFERS = 3
#: Default most defects a search may flag by chance alone: the dies / wafers needed rise until
#: uniform random defects at the measured density would give fewer flags than this.
DEFAULT_MAX_CHANCE = 0.5


@dataclass
class WaferRepeaters:
    """One wafer's flags, one per defect, in the order of its defect list."""

    lot: str
    wafer: str
    in_wafer: np.ndarray
    in_lot: np.ndarray
    sites: int
    dies: int
    expected_by_chance: float
    dies_needed: int
    wafers_needed: int | None

    @property
    def flags(self) -> np.ndarray:
        """Defects that repeat in the wafer or in the lot."""
        return self.in_wafer | self.in_lot

    def to_json(self) -> dict[str, Any]:
        return {
            "lot": self.lot,
            "wafer": self.wafer,
            "defects": int(self.flags.size),
            "repeaters": int(self.flags.sum()),
            "in_wafer": int(self.in_wafer.sum()),
            "in_lot": int(self.in_lot.sum()),
            "sites": self.sites,
            "dies": self.dies,
            "expected_by_chance": round(self.expected_by_chance, 3),
            "dies_needed": self.dies_needed,
            "wafers_needed": self.wafers_needed,
        }


@dataclass
class RepeaterResult:
    """Per-wafer flags plus the settings they were found with."""

    wafers: list[WaferRepeaters]
    tolerance_um: float
    reticle: tuple[int, int] | None
    min_dies: int
    min_wafers: int

    @property
    def total(self) -> int:
        return sum(int(w.flags.sum()) for w in self.wafers)

    def to_json(self) -> dict[str, Any]:
        return {
            "tolerance_um": self.tolerance_um,
            "reticle_dies": list(self.reticle) if self.reticle else None,
            "min_dies": self.min_dies,
            "min_wafers": self.min_wafers,
            "repeaters": self.total,
            "wafers_with_repeaters": sum(1 for w in self.wafers if w.flags.any()),
            "wafers": [w.to_json() for w in self.wafers],
        }


def find_repeaters(
    maps: Sequence[WaferMap],
    *,
    tolerance_um: float = DEFAULT_TOLERANCE_UM,
    reticle: tuple[int, int] | None = None,
    min_dies: int = DEFAULT_MIN_DIES,
    min_wafers: int = DEFAULT_MIN_WAFERS,
    max_chance: float | None = DEFAULT_MAX_CHANCE,
) -> RepeaterResult:
    """Flag the repeating defects of KLARF ``maps`` (lots grouped by lot name).

    ``min_dies`` / ``min_wafers`` are raised per wafer / lot while chance alone would flag
    ``max_chance`` defects or more (``None``: keep them fixed).

    Raises :class:`FabsightError` naming the file for a map without a defect list, a
    reticle given for a map without a die pitch, or settings out of range.
    """
    _check_settings(tolerance_um, reticle, min_dies, min_wafers)
    positions = [_positions(m, reticle) for m in maps]
    results: list[WaferRepeaters] = []
    lot_repeats = _lot_flags(maps, positions, tolerance_um, min_wafers, max_chance)
    for m, (points, shots, area), (in_lot, wafers_needed) in zip(maps, positions, lot_repeats, strict=True):
        found = repeating(points, shots, tolerance_um, min_dies, area=area, max_chance=max_chance)
        in_wafer = found.flags
        flagged = in_wafer | in_lot
        results.append(
            WaferRepeaters(
                lot=m.lot_name,
                wafer=wafer_name(m),
                in_wafer=in_wafer,
                in_lot=in_lot,
                sites=_sites(points[flagged], tolerance_um),
                dies=int(np.unique(shots[flagged]).size),
                expected_by_chance=found.expected_by_chance,
                dies_needed=found.need,
                wafers_needed=wafers_needed,
            )
        )
    return RepeaterResult(results, float(tolerance_um), reticle, min_dies, min_wafers)


def _check_settings(tolerance_um: float, reticle: tuple[int, int] | None, min_dies: int, min_wafers: int) -> None:
    if not np.isfinite(tolerance_um) or tolerance_um <= 0:
        raise FabsightError("--tolerance", f"{tolerance_um} must be a positive distance in µm")
    if reticle is not None and (len(reticle) != 2 or min(reticle) < 1):
        raise FabsightError("--reticle", f"{reticle} must be two positive die counts (columns, rows)")
    if min_dies < 2 or min_wafers < 2:
        raise FabsightError(None, "a repeater needs at least 2 dies and 2 wafers to repeat on")


def _positions(wmap: WaferMap, reticle: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(n, 2) die- or reticle-relative positions (µm), one die/shot id per defect, and the
    area (µm²) of a die or reticle when the pitch is known."""
    d = wmap.defects
    if d is None:
        raise FabsightError(wmap.source or None, "repeaters need KLARF defects (positions inside the die); none here")
    xi, yi = np.asarray(d.xindex, np.int64), np.asarray(d.yindex, np.int64)
    points = np.column_stack([d.xrel, d.yrel]).astype(np.float64)
    if len(points) > 1 and not np.ptp(points, axis=0).any():
        # Every defect at one in-die spot (a writer that knows only the die, e.g. at its centre):
        # the chance model assumes positions spread over the die, so all would "repeat".
        raise FabsightError(wmap.source or None, "every defect sits at the same place in its die (XREL/YREL all "
                            "equal): the file carries no in-die positions to find repeaters with")
    if reticle is not None:
        if wmap.die_pitch is None:
            raise FabsightError(wmap.source or None, "a reticle search needs the die pitch (KLARF DiePitch)")
        nx, ny = reticle
        points = points + np.column_stack([np.mod(xi, nx) * wmap.die_pitch[0], np.mod(yi, ny) * wmap.die_pitch[1]])
        xi, yi = np.floor_divide(xi, nx), np.floor_divide(yi, ny)
    shots = np.unique(np.column_stack([xi, yi]), axis=0, return_inverse=True)[1].reshape(-1)
    area = None
    if wmap.die_pitch is not None:
        nx, ny = reticle or (1, 1)
        area = nx * ny * wmap.die_pitch[0] * wmap.die_pitch[1]
    return points, shots.astype(np.int64), area


@dataclass
class Repeats:
    """Flags of one search, the distinct groups a flag needed, and the flags chance would give."""

    flags: np.ndarray
    need: int
    expected_by_chance: float


def repeating(
    points: np.ndarray,
    groups: np.ndarray,
    tolerance: float,
    need: int,
    *,
    area: float | None = None,
    max_chance: float | None = DEFAULT_MAX_CHANCE,
) -> Repeats:
    """Flag the points near which defects of at least ``need`` distinct groups (its own
    included) lie within ``tolerance``. Points with an unknown position (NaN) never repeat.

    Chance is Poisson: a point sees λ = (other groups' points) · πr² / ``area`` random
    neighbours (``area`` in µm², else the points' bounding box). With ``max_chance``,
    ``need`` rises until fewer than that many points would be flagged by chance alone.
    """
    flags = np.zeros(len(points), dtype=bool)
    known = np.flatnonzero(np.isfinite(points).all(axis=1))
    if known.size < need:
        return Repeats(flags, need, 0.0)
    from scipy.spatial import cKDTree
    from scipy.stats import poisson

    pts = points[known]
    grp = np.unique(groups[known], return_inverse=True)[1].reshape(-1)  # 0..k-1, whatever the ids were
    lam = _lambdas(pts, grp, tolerance, area)
    while max_chance is not None and need <= grp.max() + 1 and poisson.sf(need - 2, lam).sum() >= max_chance:
        need += 1
    chance = float(poisson.sf(need - 2, lam).sum())
    if need > grp.max() + 1:
        return Repeats(flags, need, chance)
    total = cKDTree(pts).query_ball_point(pts, tolerance, return_length=True)
    span = float(np.ptp(pts, axis=0).max()) + 4 * tolerance + 1.0
    apart = pts + np.column_stack([grp * span, np.zeros(len(grp))])  # groups side by side, never near
    same = cKDTree(apart).query_ball_point(apart, tolerance, return_length=True)
    candidates = np.flatnonzero(total - same >= need - 1)
    if need > 2 and candidates.size:
        near = cKDTree(pts).query_ball_point(pts[candidates], tolerance)
        distinct = np.array([np.unique(grp[idx]).size for idx in near], dtype=np.int64)
        candidates = candidates[distinct >= need]
    flags[known[candidates]] = True
    return Repeats(flags, need, chance)


def _lambdas(points: np.ndarray, groups: np.ndarray, tolerance: float, area: float | None) -> np.ndarray:
    """Expected random neighbours of each point from the other groups' points."""
    if area is None:
        area = float(np.prod(np.maximum(np.ptp(points, axis=0), tolerance)))
    own = np.bincount(groups)[groups]
    return (len(points) - own) * np.pi * tolerance**2 / area


def _lot_flags(
    maps: Sequence[WaferMap],
    positions: list[tuple[np.ndarray, np.ndarray, float | None]],
    tolerance: float,
    min_wafers: int,
    max_chance: float | None,
) -> list[tuple[np.ndarray, int | None]]:
    """Per map, which defects repeat on enough wafers of the same lot, and how many wafers that
    took (None for a lot of fewer than ``min_wafers`` wafers: nothing can repeat there)."""
    out: list[tuple[np.ndarray, int | None]] = [(np.zeros(len(p[0]), dtype=bool), None) for p in positions]
    lots: dict[str, list[int]] = {}
    for i, m in enumerate(maps):
        lots.setdefault(m.lot_name, []).append(i)
    for members in lots.values():
        if len(members) < min_wafers:
            continue
        points = np.concatenate([positions[i][0] for i in members])
        wafer = np.concatenate([np.full(len(positions[i][0]), j) for j, i in enumerate(members)])
        lot = repeating(points, wafer, tolerance, min_wafers, area=positions[members[0]][2], max_chance=max_chance)
        bounds = np.cumsum([0] + [len(positions[i][0]) for i in members])
        for j, i in enumerate(members):
            out[i] = (lot.flags[bounds[j] : bounds[j + 1]], lot.need)
    return out


def _sites(points: np.ndarray, tolerance: float) -> int:
    """How many distinct repeating positions: flagged defects joined when within ``tolerance``."""
    if len(points) == 0:
        return 0
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    pairs = cKDTree(points).query_pairs(tolerance, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(len(points), len(points)))
    return int(connected_components(graph, directed=False)[0])
