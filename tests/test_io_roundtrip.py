"""Every writer → reader pair keeps every die (and bins, labels, ids where the format holds them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabsight.io import read_maps, write_folder, write_g85, write_klarf, write_lswmd, write_mixedwm38, write_stdf
from fabsight.types import WaferMap


@st.composite
def wafers(draw: st.DrawFn) -> WaferMap:
    """A round wafer of random size with random failing dies and optional bin codes."""
    rows = draw(st.integers(1, 30))
    cols = draw(st.integers(1, 30))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:rows, :cols]
    inside = ((yy - (rows - 1) / 2) / (rows / 2)) ** 2 + ((xx - (cols - 1) / 2) / (cols / 2)) ** 2 <= 1.0
    inside[rows // 2, cols // 2] = True
    grid = np.where(inside, np.where(rng.random((rows, cols)) < 0.2, 2, 1), 0).astype(np.uint8)
    bins = None
    if draw(st.booleans()):
        bins = np.where(grid == 0, -1, np.where(grid == 2, rng.integers(2, 40, grid.shape), 1)).astype(np.int32)
    return WaferMap(grid, lot_id="LOT7", wafer_id=str(draw(st.integers(1, 25))), bins=bins, die_pitch=(800.0, 900.0))


FAST = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture], database=None
)


def _same_dies(a: WaferMap, b: WaferMap) -> None:
    assert b.shape == a.shape
    assert np.array_equal(b.grid, a.grid)


def _crop(grid: np.ndarray) -> np.ndarray:
    """The grid cut to its on-wafer dies: formats that list dies (KLARF, STDF) cannot hold
    all-off border rows/columns, which are not dies."""
    rows, cols = np.nonzero(grid)
    return grid[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]


@FAST
@given(maps=st.lists(wafers(), min_size=1, max_size=3))
def test_g85_stdf_klarf_keep_every_die(tmp_path: Path, maps: list[WaferMap]) -> None:
    for writer, name in ((write_g85, "m.xml"), (write_stdf, "m.stdf"), (write_klarf, "m.000")):
        back = read_maps(writer(maps, tmp_path / name))
        assert len(back) == len(maps)
        for a, b in zip(maps, back, strict=True):
            if writer is write_g85:
                _same_dies(a, b)
            else:
                assert np.array_equal(_crop(b.grid), _crop(a.grid))
                assert b.n_good == a.n_good and b.n_fail == a.n_fail
            assert (b.lot_id, b.wafer_id) == (a.lot_id, a.wafer_id)
            if a.bins is not None and writer is not write_klarf:  # KLARF has no bin codes
                assert np.array_equal(_crop(b.bins + 1), _crop(a.bins + 1))


@FAST
@given(maps=st.lists(wafers(), min_size=1, max_size=3), labels=st.lists(st.sampled_from(["Center", "Donut", "none"])))
def test_lswmd_and_folders_keep_every_die_and_label(tmp_path: Path, maps: list[WaferMap], labels: list[str]) -> None:
    for i, m in enumerate(maps):
        m.labels = (labels[i],) if i < len(labels) else ()
    back = read_maps(write_lswmd(maps, tmp_path / "m.pkl"))
    for a, b in zip(maps, back, strict=True):
        _same_dies(a, b)
        assert b.labels == a.labels
    for fmt in ("npy", "png"):
        back = read_maps(write_folder(maps, tmp_path / f"f_{fmt}", image_format=fmt))
        assert sorted(b.grid.tobytes() for b in back) == sorted(a.grid.tobytes() for a in maps)


@FAST
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 5))
def test_mixedwm38_keeps_every_die(tmp_path: Path, seed: int, n: int) -> None:
    rng = np.random.default_rng(seed)
    from fabsight.types import MIXEDWM38_LABELS

    maps = [
        WaferMap(
            rng.integers(0, 3, (52, 52)),
            labels=tuple(name for name in MIXEDWM38_LABELS if rng.random() < 0.3) or ("none",),
        )
        for _ in range(n)
    ]
    back = read_maps(write_mixedwm38(maps, tmp_path / "m.npz"))
    for a, b in zip(maps, back, strict=True):
        _same_dies(a, b)
        assert b.labels == a.labels


@pytest.mark.shared
def test_real_files_through_every_format(shared: Path, tmp_path: Path) -> None:
    """The real STDF and G85 maps survive every bin-capable writer with their bins."""
    for src in (shared / "fixtures/stdf/lot2.stdf", shared / "fixtures/g85/SEMI_G85_1101_ALL.xml"):
        (m,) = read_maps(src)
        for writer, name in ((write_g85, "r.xml"), (write_stdf, "r.stdf")):
            (b,) = read_maps(writer([m], tmp_path / name))
            _same_dies(m, b)
            assert np.array_equal(b.bins, m.bins)
            used = set(np.unique(m.bins).tolist()) - {-1}
            assert {k: (d.name, d.passed) for k, d in b.bin_definitions.items()} == {
                k: (d.name, d.passed) for k, d in m.bin_definitions.items() if k in used
            }
        (k,) = read_maps(write_klarf([m], tmp_path / "r.000"))
        _same_dies(m, k)


def test_per_wafer_metadata_survives_klarf(tmp_path: Path) -> None:
    grid = np.array([[0, 1, 0], [1, 2, 1], [0, 1, 0]], np.uint8)
    maps = [
        WaferMap(grid, lot_id="L", wafer_id="1", die_pitch=(2459.878, 2659.947), notch="left"),
        WaferMap(grid, lot_id="L", wafer_id="2", die_pitch=(1000.5, 2000.25), notch="up"),
    ]
    back = read_maps(write_klarf(maps, tmp_path / "m.000"))
    assert [b.die_pitch for b in back] == [m.die_pitch for m in maps]
    assert [b.notch for b in back] == ["left", "up"]
