"""Hand-made wafer maps with known patterns for the wafer tests (no generator needed).

Three patterns that any working classifier separates: a failing disc in the centre,
a failing ring at the edge and sparse random failures, on round wafers of any grid.
"""

from __future__ import annotations

import numpy as np

from fabsight.types import WaferMap

PATTERNS = ("Center", "Edge-Ring", "Random")


def wafer(pattern: str, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2))
    grid = np.where(r <= 1.0, 1, 0).astype(np.uint8)
    on = grid == 1
    fail = rng.random(shape) < rng.uniform(0.0, 0.03)
    if pattern == "Center":
        fail |= r < rng.uniform(0.25, 0.4)
    elif pattern == "Edge-Ring":
        fail |= r > rng.uniform(0.8, 0.88)
    elif pattern == "Random":
        fail |= rng.random(shape) < rng.uniform(0.15, 0.3)
    elif pattern == "Checkerboard":
        fail |= (yy + xx) % 2 == 0
    elif pattern != "none":
        raise ValueError(pattern)
    grid[on & fail] = 2
    return grid


def dataset(per_class: int, seed: int, sizes=((30, 30), (45, 40), (60, 60)), patterns=PATTERNS) -> list[WaferMap]:
    rng = np.random.default_rng(seed)
    return [
        WaferMap(wafer(p, sizes[i % len(sizes)], rng), source=f"{p}-{i}.npy", labels=(p,))
        for p in patterns
        for i in range(per_class)
    ]
