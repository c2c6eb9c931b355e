"""Wafer-level data in any format users bring → :class:`fabsight.types.WaferMap`.

``read_maps`` / ``iter_maps`` pick the reader from the file's *content*
(:func:`detect_format`), not its name, so a renamed ``.txt`` KLARF or an ``.xml`` that is
really something else is handled (or refused) correctly. Every reader turns a bad file
into :class:`fabsight.errors.FormatError` naming the file and the problem.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from fabsight.errors import FabsightError, FormatError
from fabsight.io._common import load_npz
from fabsight.io.folder import MAP_SUFFIXES, iter_folder, read_npy, read_png, write_folder
from fabsight.io.g85 import read_g85, write_g85
from fabsight.io.klarf import read_klarf, write_klarf
from fabsight.io.mixedwm38 import read_mixedwm38, write_mixedwm38
from fabsight.io.stdf import read_stdf, write_stdf
from fabsight.io.wm811k import iter_lswmd, write_lswmd
from fabsight.types import WaferMap

__all__ = [
    "FORMATS",
    "WRITERS",
    "detect_format",
    "expand_paths",
    "iter_maps",
    "read_maps",
    "write_folder",
    "write_g85",
    "write_klarf",
    "write_lswmd",
    "write_mixedwm38",
    "write_stdf",
]

#: Format name → streaming reader of one path.
_READERS: dict[str, Callable[[Path], Iterable[WaferMap]]] = {
    "klarf": read_klarf,
    "stdf": read_stdf,
    "g85": read_g85,
    "lswmd": iter_lswmd,
    "mixedwm38": read_mixedwm38,
    "folder": lambda p: _iter_dir(p),  # defined below: it needs detect_format
    "npy": lambda p: [read_npy(p)],
    "png": lambda p: [read_png(p)],
}
FORMATS: tuple[str, ...] = tuple(_READERS)
_ALIASES = {"npz": "mixedwm38", "wm811k": "lswmd", "pkl": "lswmd", "xml": "g85", "klf": "klarf"}

#: ``fabsight convert --to`` name → writer ``(maps, path)``.
WRITERS: dict[str, Callable[[Sequence[WaferMap], Path], Path]] = {
    "g85": write_g85,
    "folder": write_folder,
    "klarf": write_klarf,
    "stdf": write_stdf,
    "npz": write_mixedwm38,
    "lswmd": write_lswmd,
}


def detect_format(path: str | Path) -> str:
    """The format of ``path`` from its content: one of :data:`FORMATS`."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    if not path.exists():
        raise FabsightError(path, "no such file or folder")
    with open(path, "rb") as fh:
        head = fh.read(4096)
    if not head.strip():
        raise FormatError(path, "empty file")
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\x93NUMPY"):
        return "npy"
    if head.startswith(b"PK\x03\x04"):
        names, _ = load_npz(path, ())
        if "arr_0" in names:
            return "mixedwm38"
        raise FormatError(path, "a zip archive without arr_0.npy: not a MixedWM38 .npz")
    if len(head) >= 6 and head[2:4] == b"\x00\x0a" and head[5] == 4 and head[:2] in (b"\x00\x02", b"\x02\x00"):
        return "stdf"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return "lswmd"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if text.startswith(b"FileVersion") or text.startswith(b"Record FileRecord"):
        return "klarf"
    if text.startswith(b"<"):
        if b"<Map" in head or b":Map" in head:
            return "g85"
        raise FormatError(path, "XML without a SEMI G85 <Map> element")
    raise FormatError(path, "unrecognised wafer data (not KLARF, STDF, G85, LSWMD pickle, MixedWM38 npz, PNG or NPY)")


def _iter_dir(root: Path) -> Iterator[WaferMap]:
    """A folder: its ``ROOT/CLASS/*.png|*.npy`` maps plus every wafer-data file directly in it.

    Files that are not wafer data (a README, a licence) are skipped, so a folder of KLARF
    or STDF files from a tool can be given as is.
    """
    files = [p for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")]
    wafer_files: list[tuple[Path, str]] = []
    for p in files:
        if p.suffix.lower() in MAP_SUFFIXES:
            continue
        try:
            wafer_files.append((p, detect_format(p)))
        except FormatError:
            continue
    has_images = any(p.suffix.lower() in MAP_SUFFIXES for p in files) or any(
        d.is_dir() and not d.name.startswith(".") for d in root.iterdir()
    )
    if has_images or not wafer_files:
        yield from iter_folder(root)
    for p, name in wafer_files:
        yield from _READERS[name](p)


def _resolve(path: Path, format: str | None) -> str:
    if format is None:
        return detect_format(path)
    name = _ALIASES.get(format.lower(), format.lower())
    if name not in _READERS:
        raise FabsightError(path, f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    if not path.exists():
        raise FabsightError(path, "no such file or folder")
    return name


def read_maps(path: str | Path, format: str | None = None) -> list[WaferMap]:
    """Every wafer map in one file or folder layout (``format`` overrides detection)."""
    p = Path(path)
    return list(_READERS[_resolve(p, format)](p))


def expand_paths(item: str | Path) -> list[Path]:
    """A path as given, or the sorted files a glob pattern matches (an empty match is an error)."""
    text = str(item)
    if any(ch in text for ch in "*?[") and not Path(text).exists():
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
        if not matches:
            raise FabsightError(text, "the pattern matches no files")
        return matches
    return [Path(text)]


def iter_maps(paths: Iterable[str | Path]) -> Iterator[WaferMap]:
    """Stream the maps of many files, folders and glob patterns, one map at a time.

    A folder is a ``ROOT/CLASS/*.png|*.npy`` layout and/or a folder of wafer-data files;
    LSWMD pickles yield row by row.
    """
    for item in paths:
        for path in expand_paths(item):
            name = detect_format(path)
            yield from _READERS[name](path)
