"""MixedWM38 .npz: arr_0 maps + arr_1 multi-hot labels in MIXEDWM38_LABELS order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fabsight.errors import FormatError
from fabsight.io import detect_format, read_maps, write_mixedwm38
from fabsight.types import MIXEDWM38_LABELS, WaferMap


def _npz(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    maps = rng.integers(0, 3, size=(4, 52, 52))
    labels = np.zeros((4, 8), np.int64)
    labels[0, 0] = 1  # Center
    labels[1, [3, 6]] = 1  # Edge-Ring + Scratch
    labels[3, 7] = 1  # Random (last column)
    path = tmp_path / "Wafer_Map_Datasets.npz"
    np.savez(path, maps, labels)  # the public file's layout: positional arr_0, arr_1
    return path, maps, labels


def test_reads_the_public_layout(tmp_path: Path) -> None:
    path, maps, _ = _npz(tmp_path)
    assert detect_format(path) == "mixedwm38"
    out = read_maps(path)
    assert [m.labels for m in out] == [("Center",), ("Edge-Ring", "Scratch"), ("none",), ("Random",)]
    assert MIXEDWM38_LABELS[6] == "Scratch" and MIXEDWM38_LABELS[7] == "Random"
    assert np.array_equal(out[1].grid, maps[1])
    assert out[1].extras["label_vector"].tolist() == [0, 0, 0, 1, 0, 0, 1, 0]


def test_round_trip(tmp_path: Path) -> None:
    path, maps, labels = _npz(tmp_path)
    out = write_mixedwm38(read_maps(path), tmp_path / "copy.npz")
    with np.load(out) as npz:
        assert sorted(npz.files) == ["arr_0", "arr_1"]
        assert np.array_equal(npz["arr_0"], maps) and np.array_equal(npz["arr_1"], labels)


def test_writer_refuses_what_the_layout_cannot_hold(tmp_path: Path) -> None:
    a = WaferMap(np.ones((3, 3)), labels=("Center",))
    with pytest.raises(FormatError, match="one grid shape"):
        write_mixedwm38([a, WaferMap(np.ones((4, 4)))], tmp_path / "x.npz")
    with pytest.raises(FormatError, match="'Blob' is not a MixedWM38 pattern"):
        write_mixedwm38([WaferMap(np.ones((3, 3)), labels=("Blob",))], tmp_path / "x.npz")
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({"arr_0": np.zeros((2, 4, 4))}, "needs arrays arr_0"),
        ({"arr_0": np.zeros((2, 16)), "arr_1": np.zeros((2, 8))}, "N×H×W"),
        ({"arr_0": np.zeros((2, 4, 4)), "arr_1": np.zeros((3, 8))}, "2×8"),
        ({"arr_0": np.full((1, 4, 4), 3), "arr_1": np.zeros((1, 8))}, "values other than 0/1/2"),
        ({"arr_0": np.zeros((1, 4, 4)), "arr_1": np.full((1, 8), 2)}, "only 0/1"),
    ],
)
def test_bad_npz(tmp_path: Path, arrays: dict[str, np.ndarray], problem: str) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(FormatError, match=problem):
        read_maps(path, format="mixedwm38")


def test_corrupt_zip(tmp_path: Path) -> None:
    path, _, _ = _npz(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError):
        read_maps(path)
