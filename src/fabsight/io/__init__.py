"""Wafer-level data in any format users bring → :class:`fabsight.types.WaferMap`.

``read_maps`` / ``iter_maps`` pick the reader from the file's *content*
(:func:`detect_format`), not its name, so a renamed ``.txt`` KLARF or an ``.xml`` that is
really something else is handled (or refused) correctly. Every reader turns a bad file
into :class:`fabsight.errors.FormatError` naming the file and the problem.

Reading many files, a :class:`ReadLog` lets one unreadable file be recorded instead of
stopping the rest: this is the one place where commands skip and account for bad files.

``allow_pickle=False`` (what the service passes unless started with ``--allow-pickle``)
refuses WM-811K ``LSWMD.pkl`` pickles wherever they turn up, before any byte is unpickled.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from fabsight.errors import FabsightError, FormatError, NothingReadable
from fabsight.io._common import load_npz
from fabsight.io.folder import (
    MAP_SUFFIXES,
    FolderEntry,
    folder_entries,
    read_map_file,
    read_npy,
    read_png,
    write_folder,
)
from fabsight.io.g85 import read_g85, write_g85
from fabsight.io.klarf import read_klarf, write_klarf
from fabsight.io.mixedwm38 import read_mixedwm38, write_mixedwm38
from fabsight.io.stdf import read_stdf, write_stdf
from fabsight.io.wm811k import iter_lswmd, write_lswmd
from fabsight.types import WaferMap

__all__ = [
    "FORMATS",
    "PICKLE_REFUSED",
    "WRITERS",
    "ReadLog",
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
    "folder": lambda p: iter_maps([p]),  # defined below: a folder's files each go through detection
    "npy": lambda p: [read_npy(p)],
    "png": lambda p: [read_png(p)],
}
FORMATS: tuple[str, ...] = tuple(_READERS)
_ALIASES = {"npz": "mixedwm38", "wm811k": "lswmd", "pkl": "lswmd", "xml": "g85", "klf": "klarf"}

#: The one-line reason :func:`read_maps` / :func:`iter_maps` give with ``allow_pickle=False``.
PICKLE_REFUSED = "pickle files are refused: start the service with --allow-pickle to accept WM-811K LSWMD pickles"

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
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except OSError as exc:  # no permission, an I/O error: this file cannot be read, others may
        raise FabsightError(path, f"cannot be read ({exc.strerror or exc})") from None
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


def _resolve(path: Path, format: str | None) -> str:
    if format is None:
        return detect_format(path)
    name = _ALIASES.get(format.lower(), format.lower())
    if name not in _READERS:
        raise FabsightError(path, f"unknown format {format!r}; known: {', '.join(FORMATS)}")
    if not path.exists():
        raise FabsightError(path, "no such file or folder")
    return name


def read_maps(
    path: str | Path, format: str | None = None, log: ReadLog | None = None, *, allow_pickle: bool = True
) -> list[WaferMap]:
    """Every wafer map in one file or folder layout (``format`` overrides detection).

    With a lenient ``log`` (see :class:`ReadLog`), unreadable files of a folder are recorded
    there and the others are read; without one the first unreadable file raises.
    ``allow_pickle=False`` refuses an LSWMD pickle, also one inside a folder, before reading it.
    """
    p = Path(path)
    if format is None:
        return list(iter_maps([p], log, allow_pickle=allow_pickle))
    name = _resolve(p, format)
    _check_pickle(p, name, allow_pickle)
    return list(_READERS[name](p))


def expand_paths(item: str | Path) -> list[Path]:
    """A path as given, or the sorted files a glob pattern matches (an empty match is an error)."""
    text = str(item)
    if any(ch in text for ch in "*?[") and not Path(text).exists():
        matches = sorted(Path(m) for m in glob.glob(text, recursive=True))
        if not matches:
            raise FabsightError(text, "the pattern matches no files")
        return matches
    return [Path(text)]


@dataclass
class ReadLog:
    """The files a many-file read could not read, so a command can report every one.

    Reading goes on past an unreadable file (one that raises :class:`FabsightError`: a
    corrupt or truncated file, a README in a folder, a pattern matching nothing); ``errors``
    keeps each in order and ``files_read`` counts the files that were read. ``strict=True``
    raises the first error instead, which is also what reading without a log does. Any other
    exception is a bug in fabsight and is never caught here.
    """

    strict: bool = False
    errors: list[FabsightError] = field(default_factory=list)
    files_read: int = 0

    def record(self, exc: FabsightError) -> None:
        """Keep ``exc`` (or raise it when strict)."""
        if self.strict:
            raise exc
        self.errors.append(exc)

    def __add__(self, other: ReadLog) -> ReadLog:
        """Both logs in one (a command that reads two sets reports them together)."""
        return ReadLog(self.strict, [*self.errors, *other.errors], self.files_read + other.files_read)

    def nothing_read(self, path: str | Path | None, message: str) -> FabsightError:
        """The error of a read that left nothing to work on: the one unreadable file's own error,
        a summary carrying every unreadable file (the CLI names each), or ``path: message``
        when no file was unreadable."""
        if len(self.errors) == 1:
            return self.errors[0]
        if self.errors:
            return NothingReadable(path, f"none of the inputs could be read ({len(self.errors)} unreadable files)",
                                   self.errors)
        return FabsightError(path, message)

    def to_json(self) -> list[dict[str, str | None]]:
        """``[{"file", "error"}]``: the shape of ``errors`` in every command's ``--json`` output."""
        return [{"file": e.path, "error": e.message} for e in self.errors]


def _check_pickle(path: Path, name: str, allow_pickle: bool) -> None:
    if name == "lswmd" and not allow_pickle:
        raise FormatError(path, PICKLE_REFUSED)


def _read_file(path: Path, allow_pickle: bool) -> Iterable[WaferMap]:
    name = detect_format(path)
    _check_pickle(path, name, allow_pickle)
    return _READERS[name](path)


def _read_entry(entry: FolderEntry, allow_pickle: bool) -> Iterable[WaferMap]:
    """One file of a folder: a ``.png``/``.npy`` map by its suffix, anything else detected by content."""
    if entry.problem is not None:
        raise FormatError(entry.path, entry.problem)
    if entry.path.suffix.lower() in MAP_SUFFIXES:
        return [read_map_file(entry.path, entry.label)]
    return _read_file(entry.path, allow_pickle)


def _units(item: str | Path, allow_pickle: bool) -> list[Callable[[], Iterable[WaferMap]]]:
    """A reader for each file an input stands for (a glob's matches, a folder's entries).

    Each file is read, and may fail, on its own: one bad file never hides the others.
    """
    units: list[Callable[[], Iterable[WaferMap]]] = []
    for path in expand_paths(item):
        if path.is_dir():
            units += [partial(_read_entry, e, allow_pickle) for e in folder_entries(path)]
        else:
            units.append(partial(_read_file, path, allow_pickle))
    return units


def iter_maps(
    paths: Iterable[str | Path], log: ReadLog | None = None, *, allow_pickle: bool = True
) -> Iterator[WaferMap]:
    """Stream the maps of many files, folders and glob patterns, one map at a time.

    A folder is a ``ROOT/CLASS/*.png|*.npy`` layout and/or a folder of wafer-data files;
    LSWMD pickles yield row by row. Every file is read on its own: with a lenient ``log``
    an unreadable one is recorded there and the next file is read (maps a file yielded
    before its problem showed are kept); without one, the first unreadable file raises.
    ``allow_pickle=False`` refuses LSWMD pickles (:data:`PICKLE_REFUSED`) before any byte is unpickled.
    """
    log = log if log is not None else ReadLog(strict=True)
    for item in paths:
        try:
            units = _units(item, allow_pickle)
        except FabsightError as exc:
            log.record(exc)
            continue
        for read in units:
            try:
                yield from read()
            except FabsightError as exc:
                log.record(exc)
            else:
                log.files_read += 1
