"""The fast prediction path gives the straightforward path's answers, on real and odd maps.

The fast path resamples all maps of one grid shape as one product (written in place or
scattered back), checks grids in batches over cached spectrum layouts, and runs
preprocessing and grid checks in a worker thread beside the network. The oracle here is
the plain definition: each map alone, one-hot in float64, ``R_rows @ X @ R_cols.T``; and
the classifier with the worker off (one step after the other).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fabsight.errors import FabsightError
from fabsight.io import read_maps
from fabsight.synth import generate_dataset
from fabsight.wafer import WaferClassifier
from fabsight.wafer.preprocess import _area_matrix, maps_to_array
from fabsight.wafer.review import grid_checks

#: float32 rounding of fractions in [0, 1] summed over a few hundred dies
ATOL = 1e-6


def plain_input(grid: np.ndarray, size: int) -> np.ndarray:
    """One map by the documented definition, in float64 (channel = area fraction in that state)."""
    rows, cols = (_area_matrix(n, size).astype(np.float64) for n in grid.shape)
    return np.stack([rows @ (grid == state).astype(np.float64) @ cols.T for state in (0, 1, 2)])


@pytest.fixture(scope="module")
def real_grids(shared: Path) -> list[np.ndarray]:
    """The first 600 validation maps of WM-811K: ~70 grid shapes, in the data set's order."""
    return [m.grid for m in read_maps(shared / "data" / "wm811k" / "LSWMD_val.pkl")[:600]]


def odd_grids() -> list[np.ndarray]:
    """Single rows and columns, one die, a large grid, and a shape that repeats apart
    (scattered back) and in a run (written in place)."""
    rng = np.random.default_rng(5)
    shapes = [(1, 40), (40, 1), (1, 1), (2, 3), (212, 204), (1, 40), (25, 27), (25, 27), (25, 27), (97, 13)]
    return [rng.integers(0, 3, size=s, dtype=np.uint8) for s in shapes]


def test_preprocessing_equals_the_plain_definition_on_real_maps(real_grids) -> None:
    assert len({g.shape for g in real_grids}) >= 40  # a realistic mix, not one lot
    got = maps_to_array(real_grids, 64)
    for i in range(0, len(real_grids), 7):
        np.testing.assert_allclose(got[i], plain_input(real_grids[i], 64), rtol=0, atol=ATOL, err_msg=f"map {i}")
    np.testing.assert_allclose(got[:256], maps_to_array(real_grids[:256], 64), rtol=0, atol=0)


@pytest.mark.parametrize("size", [1, 32, 64])
def test_preprocessing_equals_the_plain_definition_on_odd_shapes(size: int) -> None:
    grids = odd_grids()
    got = maps_to_array(grids, size)
    for i, g in enumerate(grids):
        np.testing.assert_allclose(got[i], plain_input(g, size), rtol=0, atol=ATOL, err_msg=f"{g.shape} -> {size}")
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=ATOL)


def test_grid_checks_in_batches_equal_one_map_at_a_time(real_grids) -> None:
    grids = real_grids[:300] + odd_grids()
    batched = grid_checks(grids)
    assert batched == [grid_checks([g])[0] for g in grids]


@pytest.fixture(scope="module")
def model() -> WaferClassifier:
    train = generate_dataset(8, classes=("Center", "Edge-Ring", "Scratch", "none"), shapes=((26, 26), (45, 43)), seed=3)
    return WaferClassifier(input_size=32, epochs=1, batch_size=32, n_threads=2).fit(train)


def test_overlapped_prediction_equals_one_step_after_the_other(model, real_grids, monkeypatch) -> None:
    # 600 real maps are three batches: the worker preprocesses the next batch and checks
    # this one's grids while the network runs on one thread fewer.
    grids = real_grids + odd_grids()
    fast = model.predict_details(grids)
    monkeypatch.setattr(WaferClassifier, "OVERLAP", False)
    slow = model.predict_details(grids)
    assert [d["label"] for d in fast] == [d["label"] for d in slow]
    assert [d["review_reason"] for d in fast] == [d["review_reason"] for d in slow]
    for key in ("probability", "ood_score"):
        np.testing.assert_allclose([d[key] for d in fast], [d[key] for d in slow], rtol=1e-5, atol=1e-5)
    assert sum(d["review_reason"] is not None for d in slow) > 0  # the reasons compared are not all empty


def test_a_bad_map_in_a_later_batch_is_named_and_no_worker_is_left(model) -> None:
    import threading

    grids = [np.ones((20, 20), dtype=np.uint8)] * 300 + [np.full((5, 5), 7)]
    with pytest.raises(FabsightError, match=r"^map 300: wafer map values must be 0"):
        model.predict_details(grids)
    assert not [t for t in threading.enumerate() if t.name.startswith("fabsight-prep")]
