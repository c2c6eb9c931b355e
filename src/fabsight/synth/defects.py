"""Synthetic inspection lots: KLARF-like wafers with defect lists and planted repeaters.

Each wafer is a round grid of dies with a :class:`~fabsight.types.DefectList` as a KLARF
reader would give it (die indices, positions inside the die in µm, wafer coordinates,
``DSIZE``, ``CLASSNUMBER`` with a class lookup). On top of uniform random defects, two
kinds of repeaters are planted with known truth:

* **wafer repeaters**: one die-relative position repeated on ``repeat_dies`` dies of a wafer
  (a reticle or mask defect printed in every shot);
* **lot repeaters**: one die-relative position on one die of each of ``lot_wafers`` wafers.

Planted positions are jittered by ``jitter_um`` (normal, per axis), as an inspection tool's
coordinate accuracy would move them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fabsight.types import DefectList, DieState, WaferMap

#: Class numbers and names written into every synthetic wafer's class lookup.
SYNTH_CLASSES: dict[int, str] = {1: "Particle", 2: "Scratch", 3: "Residue", 4: "Pattern", 5: "Void"}


@dataclass
class DefectLot:
    """The generated wafers and, per wafer, which defects were planted as repeaters."""

    maps: list[WaferMap]
    planted: list[np.ndarray]


@dataclass
class _Spec:
    """What one wafer gets: the indices and die positions of its defects, and their truth."""

    xi: list[np.ndarray]
    yi: list[np.ndarray]
    xrel: list[np.ndarray]
    yrel: list[np.ndarray]
    planted: list[np.ndarray]


def generate_defect_lot(
    n_wafers: int = 5,
    *,
    dies_across: int = 24,
    pitch_um: tuple[float, float] = (5000.0, 6000.0),
    random_defects: int = 300,
    wafer_repeaters: int = 3,
    repeat_dies: tuple[int, int] = (3, 8),
    lot_repeaters: int = 2,
    lot_wafers: int = 3,
    jitter_um: float = 1.0,
    lot_id: str = "SYN1",
    seed: int = 0,
) -> DefectLot:
    """``n_wafers`` wafers of one die grid with random and planted repeating defects."""
    rng = np.random.default_rng(seed)
    on_x, on_y = _round_dies(dies_across)
    specs = [_Spec([], [], [], [], []) for _ in range(n_wafers)]
    for spec in specs:
        _add_random(spec, rng, on_x, on_y, random_defects, pitch_um)
        for _ in range(wafer_repeaters):
            k = int(rng.integers(repeat_dies[0], repeat_dies[1] + 1))
            dies = rng.choice(on_x.size, size=min(k, on_x.size), replace=False)
            _add_site(spec, rng, on_x[dies], on_y[dies], _site(rng, pitch_um, jitter_um), jitter_um)
    for _ in range(lot_repeaters):
        position = _site(rng, pitch_um, jitter_um)
        for w in rng.choice(n_wafers, size=min(lot_wafers, n_wafers), replace=False):
            die = rng.integers(on_x.size, size=1)
            _add_site(specs[w], rng, on_x[die], on_y[die], position, jitter_um)
    maps = [_wafer(spec, rng, on_x, on_y, pitch_um, lot_id, f"{i + 1:02d}") for i, spec in enumerate(specs)]
    return DefectLot(maps, [np.concatenate(s.planted) for s in specs])


def _round_dies(across: int) -> tuple[np.ndarray, np.ndarray]:
    """Die indices (x, y) of the dies inside a circle ``across`` dies wide, centred on index 0."""
    half = across // 2
    xs, ys = np.meshgrid(np.arange(-half, half), np.arange(-half, half))
    inside = (xs + 0.5) ** 2 + (ys + 0.5) ** 2 <= (half - 0.5) ** 2
    return xs[inside], ys[inside]


def _site(rng: np.random.Generator, pitch: tuple[float, float], jitter: float) -> np.ndarray:
    margin = 5 * jitter
    return np.array([rng.uniform(margin, pitch[0] - margin), rng.uniform(margin, pitch[1] - margin)])


def _add_random(
    spec: _Spec, rng: np.random.Generator, on_x: np.ndarray, on_y: np.ndarray, n: int, pitch: tuple[float, float]
) -> None:
    dies = rng.integers(on_x.size, size=n)
    spec.xi.append(on_x[dies])
    spec.yi.append(on_y[dies])
    spec.xrel.append(rng.uniform(0, pitch[0], n))
    spec.yrel.append(rng.uniform(0, pitch[1], n))
    spec.planted.append(np.zeros(n, dtype=bool))


def _add_site(
    spec: _Spec, rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, position: np.ndarray, jitter: float
) -> None:
    spec.xi.append(xs)
    spec.yi.append(ys)
    spec.xrel.append(position[0] + rng.normal(0, jitter, xs.size))
    spec.yrel.append(position[1] + rng.normal(0, jitter, xs.size))
    spec.planted.append(np.ones(xs.size, dtype=bool))


def _wafer(
    spec: _Spec,
    rng: np.random.Generator,
    on_x: np.ndarray,
    on_y: np.ndarray,
    pitch: tuple[float, float],
    lot_id: str,
    wafer_id: str,
) -> WaferMap:
    """The wafer as a KLARF reader builds it: grid (row 0 = largest y index), counts, defects."""
    xi, yi = np.concatenate(spec.xi), np.concatenate(spec.yi)
    xrel, yrel = np.concatenate(spec.xrel), np.concatenate(spec.yrel)
    x_index = np.arange(on_x.min(), on_x.max() + 1)
    y_index = np.arange(on_y.max(), on_y.min() - 1, -1)
    grid = np.zeros((y_index.size, x_index.size), dtype=np.uint8)
    grid[on_y.max() - on_y, on_x - on_x.min()] = DieState.GOOD
    counts = np.zeros(grid.shape, dtype=np.int32)
    np.add.at(counts, (on_y.max() - yi, xi - on_x.min()), 1)
    grid[counts > 0] = DieState.FAIL
    n = xi.size
    defects = DefectList(
        defect_id=np.arange(1, n + 1),
        x=xi * pitch[0] + xrel,
        y=yi * pitch[1] + yrel,
        xrel=xrel,
        yrel=yrel,
        xindex=xi.astype(np.int64),
        yindex=yi.astype(np.int64),
        size=np.round(rng.lognormal(0.3, 0.9, n), 3),
        class_number=rng.choice(list(SYNTH_CLASSES), size=n, p=[0.4, 0.25, 0.15, 0.12, 0.08]),
    )
    return WaferMap(
        grid=grid,
        lot_id=lot_id,
        wafer_id=wafer_id,
        source=f"synthetic:{lot_id}",
        format="klarf",
        die_pitch=pitch,
        x_index=x_index,
        y_index=y_index,
        counts=counts,
        defects=defects,
        extras={"class_names": dict(SYNTH_CLASSES), "step_id": "SYN-STEP"},
    )
