"""Which files make up the data set: splits, labels and the layout the cleaned copy keeps.

Accepted layouts, per DATA argument:
- ``ROOT/CLASS/*`` (labelled) and/or images directly in ``ROOT`` (unlabelled);
- ``ROOT/train/CLASS/*`` + ``ROOT/test/CLASS/*`` (also ``val``/``valid``/``validation``):
  each sub-folder is a split;
- several DATA arguments: each is a split named after its folder (``.../train`` → train);
  two arguments with the same folder name become ``data1``, ``data2``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fabsight.die.data import IMAGE_SUFFIXES
from fabsight.errors import FabsightError

SPLIT_NAMES = ("train", "val", "valid", "validation", "test")


@dataclass(frozen=True)
class Entry:
    """One input file: where it came from and where a cleaned copy puts it (``rel``)."""

    path: Path
    split: str | None
    label: str | None
    rel: Path


def _files(folder: Path, suffixes: Sequence[str]) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in suffixes)


def _class_layout(root: Path, split: str | None, suffixes: Sequence[str]) -> list[Entry]:
    prefix = Path(split) if split else Path()
    entries = [Entry(p, split, None, prefix / p.name) for p in _files(root, suffixes)]
    for d in sorted(x for x in root.iterdir() if x.is_dir() and not x.name.startswith(".")):
        entries += [Entry(p, split, d.name, prefix / d.name / p.name) for p in _files(d, suffixes)]
    return entries


def split_of(root: Path) -> list[str] | None:
    """The split sub-folders of ``root`` when it is a ``ROOT/train|test/...`` layout, else ``None``."""
    subs = [d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    if subs and all(s.lower() in SPLIT_NAMES for s in subs):
        return sorted(subs, key=lambda s: SPLIT_NAMES.index(s.lower()))
    return None


def scan(data: Sequence[str | os.PathLike[str]], suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[Entry]:
    """Every input file of the DATA arguments with its split and label (see the module docstring)."""
    roots = [Path(d) for d in data]
    if not roots:
        raise FabsightError(None, "no DATA folders given")
    for r in roots:
        if not r.is_dir():
            raise FabsightError(r, "is not a folder (expected ROOT/CLASS/* or ROOT/train|test/CLASS/*)")
    names = [r.resolve().name for r in roots]
    if len(roots) > 1 and len(set(names)) < len(names):
        names = [f"data{i + 1}" for i in range(len(roots))]
    entries: list[Entry] = []
    for r, name in zip(roots, names, strict=True):
        splits = split_of(r)
        if splits:
            for s in splits:
                entries += _class_layout(r / s, s, suffixes)
        else:
            entries += _class_layout(r, name if len(roots) > 1 else None, suffixes)
    if not entries:
        raise FabsightError(roots[0], f"holds no files ({', '.join(suffixes)}) in ROOT or ROOT/CLASS/")
    return entries


def split_rank(split: str | None) -> int:
    """Preference when copies span splits: train first, test last (a test copy is the leak)."""
    if split is None:
        return 0
    s = split.lower()
    return SPLIT_NAMES.index(s) if s in SPLIT_NAMES else len(SPLIT_NAMES)
