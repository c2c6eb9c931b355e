"""Die-grid geometry of a round wafer: which grid cells are dies, where they lie, which form the rim.

WM-811K maps are the wafer's bounding box on the die grid: the wafer touches the grid
border in the middle of each side and the corners are off-wafer. Non-square grids
(e.g. 25×27, common in WM-811K because dies are not square) hold a wafer that is round
in millimetres and therefore elliptical in grid cells, so every position here is
expressed in *normalised* coordinates in which the wafer is the unit disk whatever the
grid shape. Patterns are defined once in those coordinates and look the same at 26×26,
52×52 or 300×200.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

from fabsight.errors import FabsightError

#: Grid sizes outside this range are refused: smaller has no room for a pattern, larger
#: is no longer a die grid anyone makes (a 300 mm wafer of 1 mm² dies is ~340 across).
MIN_SIDE, MAX_SIDE = 8, 2000


@dataclass(frozen=True, eq=False)
class Geometry:
    """Cached per-shape arrays (read-only); ``u`` points right and ``v`` down, both in wafer radii."""

    shape: tuple[int, int]
    mask: np.ndarray  # (H, W) bool: on-wafer
    u: np.ndarray  # (H, W) float32 normalised column position of each die centre
    v: np.ndarray  # (H, W) float32 normalised row position (down is positive)
    rho: np.ndarray  # (H, W) float32 distance from the wafer centre (1 = wafer edge)
    theta: np.ndarray  # (H, W) float32 angle, radians, 0 = 3 o'clock, counter-clockwise as drawn
    rim: np.ndarray  # (H, W) bool: on-wafer dies with an off-wafer (or off-grid) 4-neighbour
    rim_index: np.ndarray  # (R,) flat indices of the rim dies
    rim_theta: np.ndarray  # (R,) their angles
    dies_per_radius: float  # how many dies one wafer radius spans along the shorter axis

    def to_row_col(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised positions → fractional (row, col) die coordinates."""
        h, w = self.shape
        return v * (h / 2) + h / 2 - 0.5, u * (w / 2) + w / 2 - 0.5


def check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    """Validate a grid shape given by a user; returns it as a tuple of two ints."""
    try:
        h, w = (int(s) for s in shape)
    except (TypeError, ValueError):
        raise FabsightError(None, f"wafer grid shape must be two integers (rows, cols), got {shape!r}") from None
    if not (MIN_SIDE <= h <= MAX_SIDE and MIN_SIDE <= w <= MAX_SIDE):
        raise FabsightError(None, f"wafer grid {h}x{w} is outside {MIN_SIDE}..{MAX_SIDE} dies per side")
    return h, w


@lru_cache(maxsize=64)
def geometry(shape: tuple[int, int]) -> Geometry:
    """The :class:`Geometry` of a grid (computed once per shape: generation calls it per batch)."""
    h, w = check_shape(shape)
    rows = (np.arange(h, dtype=np.float32) + 0.5 - h / 2) / (h / 2)
    cols = (np.arange(w, dtype=np.float32) + 0.5 - w / 2) / (w / 2)
    v, u = np.meshgrid(rows, cols, indexing="ij")
    rho = np.hypot(u, v)
    mask = rho <= 1.0
    theta = np.arctan2(-v, u)
    padded = np.pad(mask, 1, constant_values=False)
    rim = mask & ~ndimage.binary_erosion(padded)[1:-1, 1:-1]
    rim_index = np.flatnonzero(rim)
    arrays = (mask, u, v, rho, theta, rim, rim_index)
    for a in arrays:
        a.setflags(write=False)
    rim_theta = theta.ravel()[rim_index]
    rim_theta.setflags(write=False)
    return Geometry((h, w), mask, u, v, rho, theta, rim, rim_index, rim_theta, min(h, w) / 2)


def wafer_mask(shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the on-wafer dies of a round wafer filling the grid."""
    return geometry(tuple(shape)).mask.copy()


def polar_coords(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rho, theta) of every die centre: rho 1 at the wafer edge, theta in radians from 3 o'clock, CCW.

    The same coordinates the generator's truth (``extras['patterns']``) is expressed in, so
    code that explains a map can compare its findings with the truth directly.
    """
    g = geometry(tuple(shape))
    return g.rho.copy(), g.theta.copy()


def rim_mask(shape: tuple[int, int]) -> np.ndarray:
    """Boolean (H, W) mask of the outermost ring of dies (those with an off-wafer 4-neighbour)."""
    return geometry(tuple(shape)).rim.copy()
