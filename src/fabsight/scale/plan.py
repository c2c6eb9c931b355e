"""Which files a batch job reads, how they are grouped into work units, and what is already done.

Inputs are files, folders (walked recursively), glob patterns and list files (one path per
line). Files that hold many wafers (KLARF, STDF, LSWMD, .npz, G85) are a unit each; one-map
files (``.npy``/``.png`` maps, die images) are grouped ``group`` at a time so that per-file
scheduling overhead does not dominate. A unit's id is a hash of its files, so the same
inputs give the same part names on every run.

:class:`Manifest` is the resume record (``OUT/_manifest.jsonl``): one line per finished
input with its size and mtime, appended only after the input's part file is in place.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabsight.die.data import IMAGE_SUFFIXES
from fabsight.errors import FabsightError
from fabsight.io import expand_paths
from fabsight.io.folder import MAP_SUFFIXES
from fabsight.scale.work import WorkUnit
from fabsight.utils.atomic import atomic_open

MANIFEST = "_manifest.jsonl"


@dataclass(frozen=True)
class InputFile:
    """One input file, its class-folder label (``ROOT/CLASS/file``) and whether it holds one map/image."""

    path: str
    label: str | None
    single: bool


def read_list_file(path: str | os.PathLike[str]) -> list[str]:
    """Paths listed one per line (blank lines and ``#`` comments ignored; relative to the list's folder)."""
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FabsightError(p, f"cannot read the list file ({exc})") from None
    out = []
    for line in lines:
        text = line.strip()
        if text and not text.startswith("#"):
            out.append(text if Path(text).is_absolute() else str(p.parent / text))
    return out


def _walk(root: Path, mode: str) -> list[InputFile]:
    """Every input under a folder, sorted; hidden files and folders (``.*``) are left out.

    For wafer jobs every other file is an input, so one that is not wafer data (a README, a
    KLARF cut before its header) is reported with an error row, never dropped in silence.
    Image jobs take the files with an image suffix (annotations beside the images are not inputs).
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        here = Path(dirpath)
        label = None if here == root else here.name
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = here / name
            suffix = path.suffix.lower()
            if mode == "image":
                if suffix in IMAGE_SUFFIXES:
                    found.append(InputFile(str(path), label, True))
            else:
                single = suffix in MAP_SUFFIXES
                found.append(InputFile(str(path), label if single else None, single))
    return found


def collect_inputs(inputs: Sequence[str | os.PathLike[str]], mode: str) -> list[InputFile]:
    """The input files of a job, each once, in a stable order."""
    files: list[InputFile] = []
    for item in inputs:
        for path in expand_paths(item):
            if path.is_dir():
                files += _walk(path, mode)
            elif path.is_file():
                single = path.suffix.lower() in (IMAGE_SUFFIXES if mode == "image" else MAP_SUFFIXES)
                files.append(InputFile(str(path), None, single))
            else:
                raise FabsightError(path, "no such file or folder")
    seen: set[str] = set()
    unique = []
    for f in files:
        key = os.path.abspath(f.path)
        if key not in seen:
            seen.add(key)
            unique.append(InputFile(key, f.label, f.single))
    if not unique:
        raise FabsightError(None, "the inputs hold no files to process")
    return unique


def make_units(files: Iterable[InputFile], group: int) -> list[WorkUnit]:
    """Consecutive one-map files ``group`` at a time; every other file alone."""
    units: list[WorkUnit] = []
    pending: list[InputFile] = []

    def unit(members: list[InputFile]) -> WorkUnit:
        names = tuple(f.path for f in members)
        uid = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
        return WorkUnit(uid, names, tuple(f.label for f in members))

    for f in files:
        if f.single:
            pending.append(f)
            if len(pending) == group:
                units.append(unit(pending))
                pending = []
        else:
            units.append(unit([f]))
    if pending:
        units.append(unit(pending))
    return units


def stamp(path: str) -> tuple[int, int]:
    """Size and modification time (ns): what says an input changed since it was processed."""
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


class Manifest:
    """Finished inputs of an output dataset, read from and appended to ``OUT/_manifest.jsonl``.

    Lines are appended (and fsynced) after a part is in place. A crash can cut the last
    lines short or leave them out: a line that does not parse is dropped and ``damaged`` is
    set, so the file is rewritten whole before anything is appended after it (a new line
    glued to the torn one would be lost too). Which parts lost lines is for the caller to
    tell (the job compares each part's rows with the rows its entries claim) and to
    :meth:`forget_parts`, so their inputs are redone without a duplicate row.
    """

    def __init__(self, out: Path) -> None:
        self.path = out / MANIFEST
        self.entries: dict[str, dict[str, Any]] = {}
        self.damaged = False
        if self.path.is_file():
            text = self.path.read_text(encoding="utf-8", errors="replace")
            self.damaged = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[entry["file"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    self.damaged = True

    def is_done(self, path: str) -> bool:
        entry = self.entries.get(path)
        if entry is None:
            return False
        try:
            return (entry["size"], entry["mtime_ns"]) == stamp(path)
        except OSError:
            return False

    def forget_parts(self, parts: set[str]) -> None:
        """Drop every entry written to ``parts`` (their inputs are redone) and rewrite the file."""
        self.entries = {k: e for k, e in self.entries.items() if e.get("part") not in parts}
        with atomic_open(self.path, "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps(e) + "\n" for e in self.entries.values())
        self.damaged = False

    def parts(self) -> set[str]:
        return {e["part"] for e in self.entries.values() if e.get("part")}

    def claimed_rows(self) -> dict[str, int | None]:
        """Rows each part should hold by its entries (``None`` where an entry predates the count)."""
        claimed: dict[str, int | None] = {}
        for e in self.entries.values():
            part = e.get("part")
            if part:
                rows, before = e.get("rows"), claimed.get(part, 0)
                claimed[part] = None if rows is None or before is None else before + rows
        return claimed

    def commit(self, entries: list[dict[str, Any]]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.writelines(json.dumps(e) + "\n" for e in entries)
            fh.flush()
            os.fsync(fh.fileno())
        for e in entries:
            self.entries[e["file"]] = e
