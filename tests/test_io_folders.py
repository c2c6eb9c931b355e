"""Folders ROOT/CLASS/*.png|*.npy and single map files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fabsight.errors import FabsightError, FormatError
from fabsight.io import ReadLog, detect_format, iter_maps, read_maps, write_folder
from fabsight.io.folder import EmptyClassFolderWarning
from fabsight.types import WaferMap

GRID = np.array([[0, 1, 1, 0], [1, 2, 1, 1], [0, 1, 2, 0]], np.uint8)


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)
    return path


def test_class_folders_give_labels(tmp_path: Path) -> None:
    (tmp_path / "Center").mkdir()
    np.save(tmp_path / "Center" / "a.npy", GRID)
    _png(tmp_path / "Scratch" / "b.png", GRID)
    _png(tmp_path / "Scratch" / "c.png", GRID * 100 + 20)  # any three grey levels: 20/120/220
    assert detect_format(tmp_path) == "folder"
    maps = read_maps(tmp_path)
    assert [m.labels for m in maps] == [("Center",), ("Scratch",), ("Scratch",)]
    for m in maps:
        assert np.array_equal(m.grid, GRID)
    assert [m.format for m in maps] == ["npy", "png", "png"]


def test_two_grey_levels_map_to_nearest(tmp_path: Path) -> None:
    path = _png(tmp_path / "m.png", np.where(GRID == 2, 255, 0))  # off + fail only, no good die
    (m,) = read_maps(path)
    assert m.n_good == 0 and m.n_fail == 2


def test_more_than_three_levels_is_refused(tmp_path: Path) -> None:
    _png(tmp_path / "cls" / "photo.png", np.arange(16).reshape(4, 4) * 10)
    with pytest.raises(FormatError, match=r"photo\.png: PNG has 16 grey levels"):
        read_maps(tmp_path)


def test_colour_png_is_refused(tmp_path: Path) -> None:
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[..., 0] = 200
    path = tmp_path / "c.png"
    Image.fromarray(rgb, mode="RGB").save(path)
    with pytest.raises(FormatError, match="colour PNG"):
        read_maps(path)


def test_empty_class_folder_is_reported(tmp_path: Path) -> None:
    (tmp_path / "Donut").mkdir()
    np.save(tmp_path / "a.npy", GRID)  # unlabelled map at ROOT
    with pytest.warns(EmptyClassFolderWarning, match="'Donut' holds no"):
        maps = read_maps(tmp_path)
    assert len(maps) == 1 and maps[0].labels == ()


def test_folder_without_maps(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"no \.png/\.npy wafer maps"):
        read_maps(tmp_path)
    (tmp_path / "notes.txt").write_text("hello")  # every file is accounted for: a note is not wafer data
    with pytest.raises(FormatError, match=r"notes\.txt: unrecognised wafer data"):
        read_maps(tmp_path)


@pytest.mark.parametrize("image_format", ["npy", "png"])
def test_write_folder_round_trip(tmp_path: Path, image_format: str) -> None:
    maps = [
        WaferMap(GRID, lot_id="L", wafer_id="1", labels=("Center",)),
        WaferMap(GRID.T.copy(), lot_id="L", wafer_id="2", labels=("Edge-Ring", "Scratch")),
        WaferMap(GRID, lot_id="L", wafer_id="3"),
    ]
    root = write_folder(maps, tmp_path / "out", image_format=image_format)
    assert sorted(p.name for p in root.iterdir()) == ["Center", "Edge-Ring+Scratch", "unlabeled"]
    back = {m.wafer_id: m for m in iter_maps([root])}
    assert np.array_equal(back["L_2"].grid, GRID.T) and back["L_2"].labels == ("Edge-Ring+Scratch",)
    assert np.array_equal(back["L_1"].grid, GRID) and back["L_1"].labels == ("Center",)


def test_bad_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 2)))
    with pytest.raises(FormatError, match="not a 2-D map"):
        read_maps(tmp_path / "x.npy")
    (tmp_path / "y.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(FormatError, match=r"not a readable \.npy"):
        read_maps(tmp_path / "y.npy")


def test_globs_expand(tmp_path: Path) -> None:
    for i in range(3):
        np.save(tmp_path / f"m{i}.npy", GRID)
    assert len(list(iter_maps([tmp_path / "m*.npy"]))) == 3
    with pytest.raises(FabsightError, match="matches no files"):
        list(iter_maps([tmp_path / "nothing*.npy"]))


@pytest.mark.shared
def test_folder_of_tool_files(shared: Path, tmp_path: Path) -> None:
    """A folder straight from a tool: wafer files are read, a README is reported (strict: it stops)."""
    (tmp_path / "README.txt").write_text("lot notes")
    (tmp_path / "lot.000").write_bytes((shared / "fixtures/klarf/QUU_NUU.000").read_bytes())
    (tmp_path / "sort.xml").write_bytes((shared / "fixtures/g85/SEMI_G85_1101_MIN.xml").read_bytes())
    log = ReadLog()
    maps = read_maps(tmp_path, log=log)
    assert [m.format for m in maps] == ["klarf"] * 3 + ["g85"]
    assert [(e.path, e.message.split(" (")[0]) for e in log.errors] == [
        (str(tmp_path / "README.txt"), "unrecognised wafer data")
    ]
    assert log.files_read == 2
    with pytest.raises(FormatError, match=r"README\.txt: unrecognised"):
        read_maps(tmp_path)
