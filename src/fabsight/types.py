"""Canonical in-memory types every reader produces and every model consumes.

Readers turn a file format into these; nothing downstream ever sees a file format.
Arrays are plain numpy so the types pickle cheaply to Ray workers and serialise to
JSON/Parquet without custom code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import IntEnum
from pathlib import Path
from typing import Any

import numpy as np

#: The nine WM-811K single-type classes, in the order used everywhere in fabsight.
WM811K_CLASSES: tuple[str, ...] = (
    "Center",
    "Donut",
    "Edge-Loc",
    "Edge-Ring",
    "Loc",
    "Near-full",
    "Random",
    "Scratch",
    "none",
)

#: The eight MixedWM38 basic patterns, in the column order of ``arr_1``.
MIXEDWM38_LABELS: tuple[str, ...] = (
    "Center",
    "Donut",
    "Edge-Loc",
    "Edge-Ring",
    "Loc",
    "Near-full",
    "Scratch",
    "Random",
)


class DieState(IntEnum):
    """Die states of a wafer map grid; the same codes as WM-811K and MixedWM38."""

    OFF = 0
    GOOD = 1
    FAIL = 2


@dataclass
class DefectList:
    """Defects of one wafer as columns (one entry per defect).

    Coordinates follow KLARF: ``xrel``/``yrel`` are positions inside the die (µm) and
    ``xindex``/``yindex`` the die indices; ``x``/``y`` are wafer coordinates (µm) relative
    to the wafer centre, derived from index, pitch and die origin when the file allows.
    Columns a file does not have are filled with NaN (floats) or -1 (ints) so the
    arrays always share one length.
    """

    defect_id: np.ndarray
    x: np.ndarray
    y: np.ndarray
    xrel: np.ndarray
    yrel: np.ndarray
    xindex: np.ndarray
    yindex: np.ndarray
    size: np.ndarray
    class_number: np.ndarray
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.defect_id)

    @classmethod
    def empty(cls) -> DefectList:
        f = np.zeros(0, dtype=np.float64)
        i = np.zeros(0, dtype=np.int64)
        return cls(i, f, f, f, f, i, i, f, i)


@dataclass
class BinDefinition:
    """What a bin code means (SEMI G85 ``BinDefinition`` / STDF HBR/SBR)."""

    code: int
    passed: bool
    name: str = ""
    count: int | None = None


@dataclass
class WaferMap:
    """One wafer: a die grid plus identity and provenance.

    ``grid[r, c]`` holds a :class:`DieState`; row 0 is the top of the wafer as drawn with
    the notch where ``notch`` says. ``x_index[c]``/``y_index[r]`` give the die indices of
    the file for each column/row so results can be mapped back to the fab's coordinates.
    ``counts`` (defects per die) and ``bins`` (bin code per die, -1 off-wafer) are present
    when the source has them.
    """

    grid: np.ndarray
    lot_id: str = ""
    wafer_id: str = ""
    source: str = ""
    format: str = ""
    die_pitch: tuple[float, float] | None = None
    notch: str = "down"
    x_index: np.ndarray | None = None
    y_index: np.ndarray | None = None
    counts: np.ndarray | None = None
    bins: np.ndarray | None = None
    bin_definitions: dict[int, BinDefinition] = field(default_factory=dict)
    defects: DefectList | None = None
    timestamp: datetime | None = None
    labels: tuple[str, ...] = ()
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.grid = np.asarray(self.grid, dtype=np.uint8)
        if self.grid.ndim != 2:
            raise ValueError(f"wafer grid must be 2-D, got shape {self.grid.shape}")

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.grid.shape[0]), int(self.grid.shape[1]))

    @property
    def n_good(self) -> int:
        return int(np.count_nonzero(self.grid == DieState.GOOD))

    @property
    def n_fail(self) -> int:
        return int(np.count_nonzero(self.grid == DieState.FAIL))

    @property
    def n_off(self) -> int:
        return int(np.count_nonzero(self.grid == DieState.OFF))

    @property
    def n_dies(self) -> int:
        return self.n_good + self.n_fail

    @property
    def yield_(self) -> float:
        """Fraction of on-wafer dies that are good (NaN for an empty wafer)."""
        n = self.n_dies
        return self.n_good / n if n else float("nan")

    @property
    def lot_name(self) -> str:
        """The lot as people name it: the lot id, else the file's stem (never a full path, which
        would fill a picture title or a table column with directories)."""
        if self.lot_id:
            return self.lot_id
        return Path(self.source).stem if self.source else ""

    @property
    def label(self) -> str | None:
        """The single ground-truth label, when there is exactly one."""
        return self.labels[0] if len(self.labels) == 1 else None

    def with_grid(self, grid: np.ndarray) -> WaferMap:
        """A copy with another grid (e.g. resized) and everything else kept."""
        return replace(self, grid=grid)

    def summary(self) -> dict[str, Any]:
        """The per-wafer facts `fabsight info` prints."""
        return {
            "lot_id": self.lot_id,
            "wafer_id": self.wafer_id,
            "shape": list(self.shape),
            "good": self.n_good,
            "failing": self.n_fail,
            "off": self.n_off,
            "yield": None if self.n_dies == 0 else round(self.yield_, 6),
            "defects": None if self.defects is None else len(self.defects),
            "labels": list(self.labels),
        }


#: What each wafer format measures: an inspection step (defects per die) or wafer sort (bins).
#: Anything else (WM-811K, MixedWM38, image folders) is a ``map`` of unknown origin.
SOURCE_KINDS: dict[str, str] = {"klarf": "inspection", "stdf": "sort", "g85": "sort"}


def source_kind(fmt: str) -> str:
    """``inspection``, ``sort`` or ``map``: which kind of measurement a file format carries."""
    return SOURCE_KINDS.get(str(fmt).lower(), "map")


def source_label(kind: str, step: str = "") -> str:
    """The name a result's source is shown and grouped under: ``inspection M1-ETCH``, ``sort``.

    Inspection results of different steps are different sources (each has its own yield);
    sort results are one source whatever the file format (STDF and G85 of one wafer are
    the same test).
    """
    step = step.strip() if kind == "inspection" else ""
    return f"{kind} {step}" if step else kind


def source_of(wmap: WaferMap) -> str:
    """:func:`source_label` of a map (the KLARF ``StepID`` is in ``extras['step_id']``)."""
    return source_label(source_kind(wmap.format), str(wmap.extras.get("step_id") or ""))


def wafer_key(wafer_id: str, lot_id: str = "") -> str:
    """The physical wafer a result belongs to, so the KLARF, STDF and G85 of one wafer meet.

    Files spell one wafer differently: ``1``, ``01`` and ``A103-01`` (the lot name as a
    prefix, common in STDF ``WAFER_ID``) are all wafer ``01`` of lot ``A103``. The lot prefix
    (followed by ``-``, ``_`` or ``.``) is dropped and an all-digit id is written with at least
    two digits; any other id is kept as it is.
    """
    wid = str(wafer_id).strip()
    lot = str(lot_id).strip()
    if lot and len(wid) > len(lot) + 1 and wid.lower().startswith(lot.lower()) and wid[len(lot)] in "-_.":
        wid = wid[len(lot) + 1:]
    return f"{int(wid):02d}" if wid.isdigit() else wid


@dataclass
class ImageSample:
    """A die / inspection image with optional label and mask (die-level work)."""

    image: np.ndarray
    path: str = ""
    label: str | None = None
    mask: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)
