"""Review routing pieces with known answers: raw-grid rules, the harder synthetic maps, and
the augmentation that keeps sharp (un-interpolated) inputs in training. No training here."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from fabsight.synth import generate_dataset
from fabsight.types import WM811K_CLASSES
from fabsight.wafer.net import augment
from fabsight.wafer.review import SHIFTED_SHAPES, grid_checks, shifted_maps


def disk(shape: tuple[int, int], fail: np.ndarray | bool) -> np.ndarray:
    """A round wafer on ``shape`` failing where ``fail`` is true."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    inside = np.hypot((yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2)) <= 1
    return np.where(inside, np.where(fail, 2, 1), 0).astype(np.uint8)


def grid_index(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    return np.mgrid[0 : shape[0], 0 : shape[1]]


@pytest.mark.parametrize("shape", [(40, 40), (52, 52), (60, 45), (120, 120)])
def test_rules_catch_what_resampling_hides(shape) -> None:
    yy, xx = grid_index(shape)
    checker, stripes, columns, fail_all = grid_checks(
        [disk(shape, (yy + xx) % 2 == 0), disk(shape, yy % 6 < 2), disk(shape, xx % 5 == 0), disk(shape, True)]
    )
    for reason, period in ((checker, np.sqrt(2)), (stripes, 6.0), (columns, 5.0)):  # checkerboard: diagonal, √2
        assert reason.startswith("periodic failures")
        found = float(re.search(r"every ([\d.]+) dies", reason).group(1))
        # the strongest frequency: the pattern's own, or one of its first harmonics
        assert any(found == pytest.approx(period / k, abs=0.2) for k in (1, 2))
    assert fail_all.startswith("whole-wafer failure: 100%")
    assert grid_checks([np.zeros(shape, np.uint8)]) == ["no dies on the wafer: every cell is off-wafer"]


def test_rules_leave_ordinary_maps_alone() -> None:
    # Every class and a share of the mixed combinations, on small to large grids with up
    # to 6 % background failures: process signatures are neither periodic nor all-failing.
    shapes = ((26, 26), (45, 60), (64, 64), (150, 120))
    maps = generate_dataset(25, shapes=shapes, noise=(0.0, 0.06), seed=31)
    maps += generate_dataset(4, mixed=True, shapes=shapes, noise=(0.0, 0.06), seed=32)
    maps += generate_dataset(10, classes=["Near-full"], shapes=shapes, density=0.97, noise=0.06, seed=33)
    flags = grid_checks([m.grid for m in maps])
    assert [(m.labels, f) for m, f in zip(maps, flags, strict=True) if f] == []


def test_rules_ignore_a_few_failing_dies_on_a_lattice() -> None:
    # Three failing dies in a row are too few to call a periodic failure.
    grid = disk((40, 40), False)
    grid[20, 10:30:8] = 2
    assert grid_checks([grid]) == [None]


def test_rules_work_on_mixed_shapes_in_one_call() -> None:
    yy, xx = grid_index((30, 30))
    grids = [disk((30, 30), False), disk((44, 52), True), disk((30, 30), (yy + xx) % 2 == 0)]
    flags = grid_checks(grids)
    assert flags[0] is None and flags[1].startswith("whole-wafer") and flags[2].startswith("periodic")


def test_shifted_maps_are_the_harder_distribution() -> None:
    maps = shifted_maps(3, WM811K_CLASSES, seed=1)
    assert [m.labels[0] for m in maps] == [c for c in WM811K_CLASSES for _ in range(3)]
    assert {m.shape for m in maps} <= set(SHIFTED_SHAPES)
    scratch = [m.extras["patterns"]["Scratch"] for m in maps if m.labels == ("Scratch",)]
    assert all(s["width_dies"] == 1.0 and 0.6 <= s["density"] <= 0.8 for s in scratch)
    assert all(0.03 <= m.extras["noise"] <= 0.06 for m in maps)
    assert [m.grid.tolist() for m in shifted_maps(3, WM811K_CLASSES, seed=1)] == [m.grid.tolist() for m in maps]
    mixed = shifted_maps(2, ["Center+Loc", "none"], mixed=True, seed=2)
    assert [m.labels for m in mixed] == [("Center", "Loc")] * 2 + [("none",)] * 2


def test_augment_keeps_half_the_maps_sharp() -> None:
    # Binary inputs (a grid as large as the input) stay binary under the exact turns; the
    # any-angle rotations blur them. Both halves keep the three fractions summing to 1.
    rng = np.random.default_rng(0)
    fail = rng.random((64, 32, 32)) < 0.2
    x = torch.from_numpy(np.stack([np.zeros_like(fail), ~fail, fail], axis=1).astype(np.float32))
    out = augment(x, torch.Generator().manual_seed(0), max_noise=0.0)
    torch.testing.assert_close(out.sum(dim=1), torch.ones(64, 32, 32))
    sharp = ((out == 0) | (out == 1)).flatten(1).all(dim=1)
    assert 16 <= int(sharp.sum()) <= 48  # about half
    for i in np.flatnonzero(sharp.numpy()):  # each sharp map is a turn / mirror of its input
        turns = [torch.rot90(v, k, dims=(1, 2)) for v in (x[i], x[i].flip(-1)) for k in range(4)]
        assert any(torch.equal(out[i], t) for t in turns)
    # Without rotation every map is exact: mirrored or left as it is.
    flipped = augment(x, torch.Generator().manual_seed(1), rotate=False, max_noise=0.0)
    assert all(torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(-1)) for i in range(64))
