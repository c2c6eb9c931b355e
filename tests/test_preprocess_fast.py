"""The chunked, single-BLAS-thread wafer preprocessing gives the same input as before.

``reference_resample`` is the implementation it replaced (session 1), kept here verbatim
as the oracle. "Same" means equal up to float32 rounding (2.5e-7, two units in the last
place at 1.0): the old code itself gave a map 6e-8 apart depending on the batch it was in,
because BLAS sums in a kernel-dependent order.
"""

from __future__ import annotations

import numpy as np
import pytest

from fabsight.errors import FabsightError
from fabsight.synth import generate_dataset
from fabsight.types import WaferMap
from fabsight.wafer.preprocess import _area_matrix, _resample, maps_to_array, to_model_input

ATOL = 2.5e-7


def reference_resample(grids: np.ndarray, size: int) -> np.ndarray:
    n, h, w = grids.shape
    states = np.stack([grids == 1, grids == 2], axis=1).astype(np.float32)
    cols = states.reshape(n * 2 * h, w) @ _area_matrix(w, size).T
    cols = cols.reshape(n * 2, h, size).transpose(1, 0, 2).reshape(h, n * 2 * size)
    both = (_area_matrix(h, size) @ cols).reshape(size, n, 2, size).transpose(1, 2, 0, 3)
    out = np.empty((n, 3, size, size), dtype=np.float32)
    out[:, 1:] = both
    out[:, 0] = np.clip(1.0 - both.sum(axis=1), 0.0, 1.0)
    return out


SHAPES = [(1, 1), (1, 9), (7, 1), (25, 27), (26, 26), (52, 52), (63, 65), (64, 64), (100, 37), (150, 150), (300, 280)]


@pytest.mark.parametrize("size", [1, 32, 64, 96])
def test_resample_matches_the_previous_implementation_on_random_grids(size: int) -> None:
    rng = np.random.default_rng(size)
    for h, w in SHAPES:
        n = int(rng.integers(1, 40)) if h * w < 40_000 else 3
        # Random states, and blocky ones (runs of equal dies, like real patterns).
        grids = rng.integers(0, 3, size=(n, h, w), dtype=np.uint8)
        grids[: n // 2] = rng.integers(0, 3, size=(n // 2, 1, w), dtype=np.uint8)
        new, old = _resample(grids, size), reference_resample(grids, size)
        assert new.shape == old.shape == (n, 3, size, size) and new.dtype == np.float32
        np.testing.assert_allclose(new, old, rtol=0, atol=ATOL, err_msg=f"grid {h}x{w} -> {size}")
        np.testing.assert_allclose(new.sum(axis=1), 1.0, atol=1e-6)


def test_chunks_do_not_mix_maps() -> None:
    # More maps than one chunk holds: every map must come out as it does alone.
    rng = np.random.default_rng(0)
    grids = rng.integers(0, 3, size=(300, 52, 52), dtype=np.uint8)
    batch = _resample(grids, 64)
    for i in (0, 63, 64, 150, 299):
        np.testing.assert_allclose(batch[i], to_model_input(grids[i], 64), rtol=0, atol=ATOL)


def test_maps_to_array_over_mixed_shapes_matches_reference() -> None:
    maps = generate_dataset(3, shapes=((26, 26), (48, 64), (150, 150)), seed=4)
    rng = np.random.default_rng(1)
    order = rng.permutation(len(maps))
    shuffled: list[WaferMap] = [maps[i] for i in order]
    got = maps_to_array(shuffled, 64)
    for i, m in enumerate(shuffled):
        np.testing.assert_allclose(got[i], reference_resample(m.grid[None], 64)[0], rtol=0, atol=ATOL)
    same = [m.grid for m in maps if m.grid.shape == (26, 26)]
    np.testing.assert_allclose(maps_to_array(same, 64), reference_resample(np.stack(same), 64), rtol=0, atol=ATOL)


def test_a_bad_map_is_named_by_its_file_and_wafer() -> None:
    good = np.ones((10, 10), dtype=np.uint8)
    with pytest.raises(FabsightError, match=r"^map 2: wafer map values must be 0 \(off\), 1 \(good\) or 2"):
        maps_to_array([good, good, np.full((10, 10), 7)], 32)
    bad = WaferMap(grid=np.full((3, 3), 5), lot_id="L1", wafer_id="07", source="lot1.klarf")
    with pytest.raises(FabsightError, match=r"^lot1.klarf \(L1/07\): .* found \[5\]"):
        maps_to_array([good, bad], 32)
