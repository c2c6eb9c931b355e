"""Golden-template pairs on disk, in the DeepPCB layout.

A list file (``trainval.txt`` / ``test.txt``) names one pair per line as
``groupX/X/NNN.jpg groupX/X_not/NNN.txt``: the image stem expands to ``NNN_test.jpg``
(the inspected image) and ``NNN_temp.jpg`` (its defect-free template), and the text file
holds one defect per line, ``x1 y1 x2 y2 type`` (spaces or commas), with types
1 open, 2 short, 3 mousebite, 4 spur, 5 spurious copper, 6 pin-hole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fabsight.die.data import read_grey
from fabsight.errors import FabsightError, FormatError

#: DeepPCB defect types in the order of their numeric codes 1..6.
DEFECT_TYPES: tuple[str, ...] = ("open", "short", "mousebite", "spur", "spurious-copper", "pin-hole")


@dataclass(frozen=True)
class Pair:
    """One test image, its template and (optionally) its annotation file."""

    name: str
    test: Path
    template: Path
    annotations: Path | None = None


@dataclass(frozen=True)
class Box:
    """An axis-aligned defect box in test-image pixels (x2/y2 exclusive) with its type."""

    x1: float
    y1: float
    x2: float
    y2: float
    type: str

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)


def read_gray(path: str | os.PathLike[str]) -> np.ndarray:
    """An image as 8-bit grey, or a one-line :class:`FormatError` naming the file."""
    return read_grey(path)


def read_annotations(path: str | os.PathLike[str]) -> list[Box]:
    """DeepPCB boxes of one pair (``x1 y1 x2 y2 type`` per line, spaces or commas)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FormatError(p, f"unreadable annotation file ({exc})") from None
    boxes = []
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        if len(parts) != 5:
            raise FormatError(p, f"line {lineno}: expected 'x1 y1 x2 y2 type', got {line.strip()!r}")
        try:
            x1, y1, x2, y2, code = (int(float(v)) for v in parts)
        except ValueError:
            raise FormatError(p, f"line {lineno}: non-numeric value in {line.strip()!r}") from None
        if not 1 <= code <= len(DEFECT_TYPES):
            raise FormatError(p, f"line {lineno}: unknown defect type {code} (expected 1..{len(DEFECT_TYPES)})")
        if x2 <= x1 or y2 <= y1:
            raise FormatError(p, f"line {lineno}: empty box {line.strip()!r}")
        boxes.append(Box(x1, y1, x2, y2, DEFECT_TYPES[code - 1]))
    return boxes


def read_list(root: str | os.PathLike[str], list_file: str | os.PathLike[str] | None = None) -> list[Pair]:
    """The pairs a DeepPCB list file names (relative to ``root``), or every pair under ``root``.

    ``list_file`` may be absolute or relative to ``root``. Without it, every
    ``*_test.<ext>`` with a sibling ``*_temp.<ext>`` under ``root`` is a pair (annotations
    are looked up in the DeepPCB ``X_not`` sibling folder when present).
    """
    base = Path(root)
    if not base.is_dir():
        raise FabsightError(base, "not a directory")
    if list_file is None:
        pairs = []
        for test in sorted(base.rglob("*_test.*")):
            stem = test.name[: -len("_test" + test.suffix)]
            temp = test.with_name(f"{stem}_temp{test.suffix}")
            if not temp.is_file():
                continue
            ann = test.parent.with_name(test.parent.name + "_not") / f"{stem}.txt"
            pairs.append(Pair(str(test.relative_to(base).with_name(stem)), test, temp, ann if ann.is_file() else None))
        if not pairs:
            raise FabsightError(base, "no '*_test.*' images with a '*_temp.*' template found")
        return pairs
    lf = Path(list_file)
    if not lf.is_absolute() and not lf.is_file():
        lf = base / lf
    if not lf.is_file():
        raise FabsightError(lf, "no such list file")
    pairs = []
    for lineno, line in enumerate(lf.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) > 2:
            raise FormatError(lf, f"line {lineno}: expected 'IMAGE [ANNOTATIONS]', got {line.strip()!r}")
        img = base / parts[0]
        stem = img.with_suffix("")
        suffix = img.suffix or ".jpg"
        pairs.append(
            Pair(
                parts[0].rsplit(".", 1)[0],
                stem.with_name(f"{stem.name}_test{suffix}"),
                stem.with_name(f"{stem.name}_temp{suffix}"),
                base / parts[1] if len(parts) == 2 else None,
            )
        )
    if not pairs:
        raise FabsightError(lf, "list file names no pairs")
    return pairs


def load_pair(test: str | os.PathLike[str], template: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Both images of a pair as grey arrays; a size mismatch is the user's problem, named."""
    t = read_gray(test)
    m = read_gray(template)
    if t.shape != m.shape:
        raise FabsightError(
            test, f"size {t.shape[1]}x{t.shape[0]} differs from its template {template} ({m.shape[1]}x{m.shape[0]})"
        )
    return t, m
