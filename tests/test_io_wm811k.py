"""WM-811K LSWMD.pkl: the public layout, old-pandas pickles, labels and streaming."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fabsight.errors import FormatError
from fabsight.io import detect_format, iter_maps, read_maps, write_lswmd
from fabsight.types import WaferMap


def _frame() -> pd.DataFrame:
    """Three rows exactly as in the public LSWMD.pkl: nested label arrays, empty when unlabelled."""
    maps = [
        np.array([[0, 1, 0], [1, 2, 1], [0, 1, 0]], np.uint8),
        np.array([[0, 1, 1, 0], [1, 1, 1, 1], [0, 2, 2, 0]], np.uint8),
        np.array([[1, 1], [1, 1]], np.uint8),
    ]
    return pd.DataFrame(
        {
            "waferMap": maps,
            "dieSize": [5.0, 10.0, 4.0],
            "lotName": ["lot1", "lot1", "lot47"],
            "waferIndex": [1.0, 2.0, 25.0],
            "trianTestLabel": [np.array([["Training"]]), np.array([["Test"]]), np.zeros((0, 0))],
            "failureType": [np.array([["Center"]]), np.array([["none"]]), np.zeros((0, 0))],
        },
        index=pd.Index([0, 1, 2], dtype="int64"),
    )


def _check(maps: list[WaferMap]) -> None:
    assert [m.labels for m in maps] == [("Center",), ("none",), ()]
    assert [m.extras["split"] for m in maps] == ["Training", "Test", None]
    assert [(m.lot_id, m.wafer_id) for m in maps] == [("lot1", "1"), ("lot1", "2"), ("lot47", "25")]
    assert maps[1].grid.tolist() == [[0, 1, 1, 0], [1, 1, 1, 1], [0, 2, 2, 0]]
    assert maps[0].extras["die_size"] == 5.0


def test_reads_the_public_layout(tmp_path: Path) -> None:
    path = tmp_path / "LSWMD.pkl"
    _frame().to_pickle(path)
    assert detect_format(path) == "lswmd"
    _check(read_maps(path))


@pytest.mark.parametrize(
    "renames",
    [
        {b"cpandas\nIndex\n": b"cpandas.indexes.base\nIndex\n"},
        {
            b"cpandas\nIndex\n": b"cpandas.core.indexes.numeric\nInt64Index\n",
            b"cpandas.core.internals.managers\nBlockManager\n": b"cpandas.core.internals\nBlockManager\n",
        },
    ],
)
def test_reads_pickles_that_name_old_pandas_modules(tmp_path: Path, renames: dict[bytes, bytes]) -> None:
    """pandas 0.x wrote its classes under module paths that no longer exist."""
    data = pickle.dumps(_frame(), protocol=2)
    for new, old in renames.items():
        assert new in data  # protocol 2 names classes as text: swap in the old location
        data = data.replace(new, old)
    path = tmp_path / "old.pkl"
    path.write_bytes(data)
    with pytest.raises((ImportError, AttributeError)):
        pickle.loads(data)  # what a plain unpickler does with it
    _check(read_maps(path))


def test_write_lswmd_round_trip_and_streaming(tmp_path: Path) -> None:
    maps = read_maps_from_frame(tmp_path)
    out = write_lswmd(maps, tmp_path / "copy.pkl")
    df = pd.read_pickle(out)
    assert list(df.columns) == ["waferMap", "dieSize", "lotName", "waferIndex", "trianTestLabel", "failureType"]
    assert df["failureType"][0].tolist() == [["Center"]] and df["failureType"][2].shape == (0, 0)
    streamed = iter_maps([out])
    first = next(streamed)
    assert first.labels == ("Center",)
    _check([first, *streamed])


def read_maps_from_frame(tmp_path: Path) -> list[WaferMap]:
    path = tmp_path / "src.pkl"
    _frame().to_pickle(path)
    return read_maps(path)


@pytest.mark.parametrize(
    ("call", "name"),
    [((print, ("owned",)), "builtins.print"), ((os.system, ("true",)), ".system"), ((pd.read_csv, ("x",)), "read_csv")],
)
def test_refuses_code_in_pickles(tmp_path: Path, call: tuple, name: str) -> None:
    class Evil:
        def __reduce__(self):
            return call

    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(Evil(), protocol=4))
    with pytest.raises(FormatError, match=f"refusing to load .*{re.escape(name)}"):
        read_maps(path)


@pytest.mark.parametrize(
    ("obj", "problem"),
    [
        ([1, 2, 3], "holds a list"),
        (pd.DataFrame({"a": [1]}), "no 'waferMap' column"),
        (pd.DataFrame({"waferMap": [np.full((2, 2), 7)]}), "values other than 0/1/2"),
        (pd.DataFrame({"waferMap": [np.zeros(4)]}), "not a 2-D map"),
    ],
)
def test_bad_pickles(tmp_path: Path, obj: object, problem: str) -> None:
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=4))
    with pytest.raises(FormatError, match=problem):
        read_maps(path, format="lswmd")
