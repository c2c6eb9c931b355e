"""Wafer grid → model input: states stay distinct and areas are kept, at any grid size."""

from __future__ import annotations

import numpy as np
import pytest

from fabsight.errors import FabsightError
from fabsight.types import WaferMap
from fabsight.wafer import to_model_input
from fabsight.wafer.preprocess import maps_to_array


def test_upsampling_repeats_each_die_as_a_block() -> None:
    grid = np.array([[0, 1], [2, 1]])
    x = to_model_input(grid, 4)
    assert x.shape == (3, 4, 4) and x.dtype == np.float32
    for state in range(3):
        expected = np.kron((grid == state).astype(np.float32), np.ones((2, 2)))
        np.testing.assert_allclose(x[state], expected, atol=1e-6)


def test_downsampling_gives_area_fractions_never_blends_states() -> None:
    grid = np.ones((4, 4), dtype=np.uint8)
    grid[0, 0] = 2  # one failing die in the top-left 2x2 block
    grid[2:, 2:] = 0  # bottom-right block off-wafer
    x = to_model_input(grid, 2)
    np.testing.assert_allclose(x[2], [[0.25, 0], [0, 0]], atol=1e-6)
    np.testing.assert_allclose(x[1], [[0.75, 1], [1, 0]], atol=1e-6)
    np.testing.assert_allclose(x[0], [[0, 0], [0, 1]], atol=1e-6)


def test_non_square_grid_is_stretched_per_axis() -> None:
    # A non-square grid is the bounding box of a round wafer: each axis fills the input.
    grid = np.array([[0, 1, 2, 1], [1, 2, 2, 0]], dtype=np.uint8)
    x = to_model_input(grid, 4)
    for state in range(3):
        expected = np.repeat((grid == state).astype(np.float32), 2, axis=0)  # rows doubled, columns kept
        np.testing.assert_allclose(x[state], expected, atol=1e-6)


@pytest.mark.parametrize("shape", [(15, 15), (26, 26), (37, 52), (300, 300), (300, 211)])
def test_any_size_keeps_fractions_and_die_counts(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(0)
    grid = rng.integers(0, 3, size=shape).astype(np.uint8)
    x = to_model_input(grid, 64)
    np.testing.assert_allclose(x.sum(axis=0), 1.0, atol=1e-5)
    assert x.min() >= -1e-6 and x.max() <= 1 + 1e-6
    cell = shape[0] * shape[1] / 64**2  # dies per output pixel
    # Area is conserved: the fail channel integrates to the number of failing dies.
    assert x[2].sum() * cell == pytest.approx(np.count_nonzero(grid == 2), rel=1e-4)
    assert x[1].sum() * cell == pytest.approx(np.count_nonzero(grid == 1), rel=1e-4)


@pytest.mark.parametrize(
    ("grid", "message"),
    [
        (np.array([[0, 1], [3, 1]]), r"0 \(off\), 1 \(good\) or 2 \(fail\); found \[3\]"),
        (np.array([[0, -1], [1, 1]]), r"found \[-1\]"),
        (np.array([[1, 7], [255, 1]], dtype=np.uint8), r"found \[7, 255\]"),
        (np.array([[0.0, 1.5], [1.0, 1.0]]), r"found \[1.5\]"),
        (np.array([[0.0, np.nan], [1.0, 1.0]]), "found"),
        (np.array([1, 2, 1]), "2-D"),
        (np.zeros((0, 5)), "non-empty"),
    ],
)
def test_bad_grids_raise_user_errors(grid: np.ndarray, message: str) -> None:
    with pytest.raises(FabsightError, match=message):
        to_model_input(grid, 8, source="lot7.npy")


def test_error_names_the_map() -> None:
    bad = WaferMap(np.array([[1, 1], [1, 1]]), source="x/bad.npy", lot_id="L1", wafer_id="3")
    bad.grid[0, 0] = 9  # WaferMap itself does not check values; the model input does
    with pytest.raises(FabsightError, match=r"x/bad\.npy \(L1/3\)"):
        maps_to_array([WaferMap(np.ones((3, 3))), bad], 8)
