"""Hand-built wafer maps with known geometry for the assist tests (no generator needed)."""

from __future__ import annotations

import numpy as np

from fabsight.types import WaferMap


def disc_map(kind: str, n: int = 40, noise: float = 0.02, seed: int = 0, **meta: str) -> WaferMap:
    """A round wafer of ``n``×``n`` dies with one drawn pattern plus random fails at ``noise``.

    ``kind``: ``center`` (r < 0.3), ``edge-ring`` (r > 0.85), ``donut`` (0.4 < r < 0.6),
    ``edge-ne`` (edge blob in the upper-right), ``loc-sw`` (blob in the lower-left middle),
    ``scratch`` (diagonal line into the upper-left), ``notch`` (edge blob at the bottom),
    ``random`` (30 % random fails), ``near-full`` (r < 0.95) or ``clean``.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.indices((n, n))
    c = (n - 1) / 2
    r = np.hypot(rows - c, cols - c) / (n / 2)
    on = r <= 1.0
    shapes = {
        "center": r < 0.3,
        "edge-ring": r > 0.85,
        "donut": (r > 0.4) & (r < 0.6),
        "edge-ne": (r > 0.75) & (cols > 0.6 * n) & (rows < 0.4 * n),
        "loc-sw": np.hypot(rows - 0.68 * n, cols - 0.32 * n) < 0.1 * n,
        "scratch": (np.abs(rows - cols) < 0.8) & (r < 0.75) & (rows < c),
        "notch": (r > 0.75) & (np.abs(cols - c) < 0.12 * n) & (rows > c),
        "near-full": r < 0.95,
        "random": np.zeros_like(on),
        "clean": np.zeros_like(on),
    }
    fail = shapes[kind] | (rng.random((n, n)) < (0.3 if kind == "random" else noise))
    grid = np.where(on, np.where(fail, 2, 1), 0)
    return WaferMap(grid, labels=(kind,), **meta)
