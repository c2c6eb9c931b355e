"""Folders of map images: ``ROOT/CLASS/*.png|*.npy`` (label = CLASS), and single files.

A ``.npy`` holds a 2-D array of 0/1/2. A PNG holds the values 0/1/2 directly, or any
three grey levels mapped in order (darkest = off-wafer, middle = good, brightest = fail);
with fewer than three levels above 2 each level goes to the nearest of 0/127/255. A PNG
with more than three levels is not a wafer map and is refused, naming the file.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fabsight.errors import FabsightError, FormatError
from fabsight.io._common import check_grid_values, load_npy, safe_name
from fabsight.io.limits import check_grid
from fabsight.types import WaferMap
from fabsight.utils.atomic import atomic_dir
from fabsight.utils.progress import track

MAP_SUFFIXES = (".png", ".npy")


class EmptyClassFolderWarning(UserWarning):
    """A class folder with no maps in it (reported, not fatal)."""


def _png_grid(path: Path) -> np.ndarray:
    """The die grid of a PNG; its size is checked from the header before the pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        # from memory: Pillow reads a damaged chunk length with fp.read(length), which on a file
        # reserves that many bytes (up to 4 GiB) before finding the file shorter
        with Image.open(io.BytesIO(path.read_bytes()), formats=["PNG"]) as im:
            check_grid(path, im.height, im.width, "the PNG map")
            im.load()
            if im.mode in ("RGB", "RGBA", "P", "LA"):
                rgb = np.asarray(im.convert("RGB"))
                if not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])):
                    raise FormatError(path, "colour PNG: a wafer map PNG must be grey levels")
                arr = rgb[..., 0]
            else:
                arr = np.asarray(im)
    except UnidentifiedImageError:
        raise FormatError(path, "not a readable PNG (no PNG signature and header)") from None
    except (Image.DecompressionBombError, OSError, SyntaxError, ValueError) as exc:
        raise FormatError(path, f"not a readable PNG ({str(exc)[:100]})") from None
    if arr.ndim != 2:
        raise FormatError(path, f"PNG is not a single-channel image (shape {arr.shape})")
    levels = np.unique(arr)
    if levels.size and levels.max() <= 2:
        return arr.astype(np.uint8)
    if levels.size > 3:
        raise FormatError(path, f"PNG has {levels.size} grey levels; a wafer map has at most 3 (off/good/fail)")
    if levels.size == 3:
        return np.searchsorted(levels, arr).astype(np.uint8)
    if arr.dtype.kind not in "ui":
        raise FormatError(path, f"PNG pixels are {arr.dtype}, not integer grey levels")
    scale = 255.0 / 2 if levels.max() <= 255 else 65535.0 / 2
    return np.clip(np.rint(arr / scale), 0, 2).astype(np.uint8)


def read_png(path: str | Path, label: str | None = None) -> WaferMap:
    """One wafer map from a PNG (see the module docstring for the grey levels)."""
    path = Path(path)
    return _single(path, _png_grid(path), "png", label)


def read_npy(path: str | Path, label: str | None = None) -> WaferMap:
    """One wafer map from a ``.npy`` holding a 2-D array of 0/1/2 (header checked before the data is read)."""
    path = Path(path)
    return _single(path, check_grid_values(path, load_npy(path, grids=True), "array"), "npy", label)


def _single(path: Path, grid: np.ndarray, fmt: str, label: str | None) -> WaferMap:
    return WaferMap(
        grid=grid,
        lot_id=path.parent.name,
        wafer_id=path.stem,
        source=str(path),
        format=fmt,
        labels=() if label is None else (label,),
    )


def read_map_file(path: str | Path, label: str | None = None) -> WaferMap:
    """One ``.png`` or ``.npy`` map of a folder, by its suffix (the folder convention)."""
    path = Path(path)
    return read_png(path, label) if path.suffix.lower() == ".png" else read_npy(path, label)


@dataclass(frozen=True)
class FolderEntry:
    """One thing in a map folder that a reader must account for.

    ``label`` is CLASS for ``ROOT/CLASS/file``. ``problem`` says why the entry cannot be
    read (a file of another kind in a class folder, a folder nested deeper, a device file),
    so it is reported like an unreadable file instead of being passed over in silence.
    """

    path: Path
    label: str | None = None
    problem: str | None = None


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _class_entries(folder: Path) -> list[FolderEntry]:
    """Entries of ``ROOT/CLASS/``: its maps, and every other file or folder with its problem."""
    found = []
    for p in _visible(folder):
        if p.is_dir():
            found.append(FolderEntry(p, folder.name, "a folder inside a class folder is not read (maps are "
                                                     "ROOT/CLASS/*.png|*.npy)"))
        elif not p.is_file():
            found.append(FolderEntry(p, folder.name, "not a regular file (a broken link or a device)"))
        elif p.suffix.lower() in MAP_SUFFIXES:
            found.append(FolderEntry(p, folder.name))
        else:
            found.append(FolderEntry(p, folder.name, "not a .png/.npy map (a class folder holds map files only)"))
    if not any(e.problem is None for e in found):
        warnings.warn(
            f"{folder}: class folder '{folder.name}' holds no .png/.npy maps",
            EmptyClassFolderWarning,
            stacklevel=3,
        )
    return found


def folder_entries(root: str | Path) -> list[FolderEntry]:
    """Every visible file of ``ROOT`` and ``ROOT/CLASS/`` (hidden ones, ``.*``, are left out).

    Files directly in ROOT may be maps or any wafer-data file (the caller detects which);
    sub-folders are class folders. Class folders without a map are reported with
    :class:`EmptyClassFolderWarning`; a folder with nothing in it is a :class:`FormatError`.
    """
    root = Path(root)
    if not root.is_dir():
        raise FabsightError(root, "not a folder")
    found: list[FolderEntry] = []
    for entry in _visible(root):
        if entry.is_dir():
            found += _class_entries(entry)
        elif entry.is_file():
            found.append(FolderEntry(entry))
        else:
            found.append(FolderEntry(entry, None, "not a regular file (a broken link or a device)"))
    if not found:
        raise FormatError(root, "no .png/.npy wafer maps in ROOT or ROOT/CLASS/, and no other wafer data files")
    return found


def write_folder(maps: Sequence[WaferMap], root: str | Path, *, image_format: str = "npy") -> Path:
    """Write ``ROOT/CLASS/<lot>_<wafer>.npy|png``; CLASS is the label (``+``-joined for
    several, ``unlabeled`` for none). PNGs store the values 0/1/2 so they read back exactly.
    The whole folder appears at once (built aside, then swapped in)."""
    from PIL import Image

    if image_format not in ("npy", "png"):
        raise ValueError("image_format must be 'npy' or 'png'")
    if not maps:
        raise FormatError(root, "nothing to write: no wafer maps")
    with atomic_dir(root) as tmp:
        used: set[Path] = set()
        for i, m in enumerate(track(maps, f"writing {Path(root).name}/")):
            cls = safe_name("+".join(m.labels), "unlabeled") if m.labels else "unlabeled"
            stem = safe_name(f"{m.lot_id}_{m.wafer_id}", f"map{i}")
            target = tmp / cls / f"{stem}.{image_format}"
            if target in used:
                target = tmp / cls / f"{stem}_{i}.{image_format}"
            used.add(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            grid = np.asarray(m.grid, np.uint8)
            if image_format == "npy":
                np.save(target, grid)
            else:
                Image.fromarray(grid, mode="L").save(target)
    return Path(root)
