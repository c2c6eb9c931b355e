"""A few statistics of a wafer map that say how real a generated map looks.

Generated maps are only useful as training data if their patterns, backgrounds and grids
look like the fab's own. These statistics are measured the same way on real maps and on
generated ones, so their distributions can be compared class by class (a KS distance per
statistic, ``benchmarks/synth_vs_real.py``), and the ranges of the ``"wm811k"`` profile
(:data:`fabsight.synth.patterns.WM811K_PARAMS`) were fitted by matching them.

Every statistic is defined on the die grid alone (no truth needed); positions are in the
generator's normalised wafer coordinates (:func:`fabsight.synth.polar_coords`: the wafer
is the unit disk touching the grid border, as in every WM-811K map). The "pattern" is the
largest 8-connected group of failing dies: it is what an engineer's eye lands on, and it
needs no label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from fabsight.synth.geometry import polar_coords
from fabsight.types import DieState

#: Statistic names, in the order :func:`map_statistics` returns them.
STATISTICS: tuple[str, ...] = (
    "side",
    "fail_share",
    "background",
    "largest_share",
    "pattern_radius",
    "pattern_width",
    "pattern_length",
    "pattern_thickness",
)
#: What each statistic measures (for tables and documentation).
DESCRIPTIONS: dict[str, str] = {
    "side": "grid size in dies across, (rows + cols) / 2",
    "fail_share": "share of the on-wafer dies that fail",
    "background": "median local fail density (window of ~1/5 of the wafer across): the fail rate away from the pattern",
    "largest_share": "largest 8-connected group of failing dies, as a share of the on-wafer dies",
    "pattern_radius": "median distance of the largest group's dies from the wafer centre (wafer radii)",
    "pattern_width": "10-90 % range of that distance (wafer radii): a ring's or band's width",
    "pattern_length": "length of the largest group along its main axis, sqrt(12 var), in wafer radii",
    "pattern_thickness": "dies of the largest group per die of its length: a scratch's width in dies",
}
_EIGHT = np.ones((3, 3), dtype=bool)


def _background(fail: np.ndarray, mask: np.ndarray) -> float:
    """Median of the local fail density over on-wafer dies, in windows ~1/5 of the wafer across.

    A pattern covers well under half of a map in every class but Random and Near-full, so
    the median window lies off it: this is the background fail rate whatever the class.
    """
    k = max(3, round(min(mask.shape) / 5) | 1)
    fails = ndimage.uniform_filter(fail.astype(np.float64), k, mode="constant")
    dies = ndimage.uniform_filter(mask.astype(np.float64), k, mode="constant")
    return float(np.median(fails[mask] / np.maximum(dies[mask], 1e-9)))


def map_statistics(grid: np.ndarray) -> np.ndarray:
    """The :data:`STATISTICS` of one die grid (0 off / 1 good / 2 fail); NaN where undefined
    (the pattern statistics of a map with fewer than three failing dies in its largest group)."""
    mask = grid != DieState.OFF
    fail = (grid == DieState.FAIL) & mask
    n_dies = max(int(mask.sum()), 1)
    h, w = grid.shape
    out = np.full(len(STATISTICS), np.nan)
    out[:3] = (h + w) / 2, fail.sum() / n_dies, _background(fail, mask)
    labels, n = ndimage.label(fail, structure=_EIGHT)
    sizes = np.bincount(labels.ravel())[1:]
    out[3] = sizes.max() / n_dies if n else 0.0
    if not n or sizes.max() < 3:
        return out
    group = labels == int(np.argmax(sizes)) + 1
    rho = polar_coords(grid.shape)[0][group]
    lo, mid, hi = np.quantile(rho, [0.1, 0.5, 0.9])
    rows, cols = np.nonzero(group)
    spread = np.linalg.eigvalsh(np.cov(np.stack([rows, cols]).astype(np.float64), bias=True))[1]
    length = max(float(np.sqrt(12 * max(spread, 0.0))), 1.0)  # a line of L dies has variance L²/12
    out[4:] = mid, hi - lo, length / (min(h, w) / 2), group.sum() / length
    return out


def quantile_shapes(shapes: Sequence[tuple[int, int]], k: int = 16) -> tuple[tuple[int, int], ...]:
    """The ``k`` quantiles (i + 1/2) / k of ``shapes`` ordered by die count (a shape repeats
    as often as it is common): the rule behind :data:`fabsight.synth.patterns.WM811K_SHAPES`."""
    arr = np.array(shapes, dtype=np.int64).reshape(-1, 2)
    order = np.argsort(arr.prod(axis=1), kind="stable")
    return tuple(
        (int(arr[order[i], 0]), int(arr[order[i], 1])) for i in ((np.arange(k) + 0.5) / k * len(arr)).astype(int)
    )
