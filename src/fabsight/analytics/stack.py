"""Stacked maps: how often each die position fails over a set of wafers with one die grid.

A stack is the per-position frequency ``wafers where the die fails / wafers where it was
tested``: a die failing on 9 of 10 wafers is a systematic signature, one failing once is
noise. Sort data can be stacked per bin (how often each position lands in bin 8), which
separates a contact-failure ring from a parametric centre. Wafers must share their die
grid (same rows, columns and file die indices); anything else is refused, naming the file,
because stacking misaligned grids would draw a signature that is not on any wafer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fabsight.analytics.pareto import pareto, scope_of
from fabsight.errors import FabsightError
from fabsight.types import DieState, WaferMap


@dataclass
class StackedMap:
    """Per-position fail frequency (NaN off-wafer) over ``n_wafers`` wafers of one die grid."""

    frequency: np.ndarray
    tested: np.ndarray
    n_wafers: int
    what: str
    scope: str
    notch: str = "down"
    x_index: np.ndarray | None = None
    y_index: np.ndarray | None = None

    @property
    def on_wafer(self) -> np.ndarray:
        return self.tested > 0

    def to_json(self, worst: int = 5) -> dict[str, Any]:
        """Summary numbers and the ``worst`` positions (file die indices when the maps have them)."""
        freq = np.where(self.on_wafer, self.frequency, -1.0)
        order = np.argsort(-freq, axis=None, kind="stable")[:worst]
        rows, cols = np.unravel_index(order, freq.shape)
        top = [
            {
                "x": int(self.x_index[c]) if self.x_index is not None else int(c),
                "y": int(self.y_index[r]) if self.y_index is not None else int(r),
                "frequency": round(float(freq[r, c]), 6),
            }
            for r, c in zip(rows.tolist(), cols.tolist(), strict=True)
            if freq[r, c] > 0
        ]
        values = self.frequency[self.on_wafer]
        return {
            "what": self.what,
            "wafers": self.n_wafers,
            "dies": int(self.on_wafer.sum()),
            "mean_frequency": round(float(values.mean()), 6) if values.size else None,
            "max_frequency": round(float(values.max()), 6) if values.size else None,
            "always_failing": int((values >= 1).sum()),
            "worst": top,
        }


def check_same_grid(maps: Sequence[WaferMap]) -> None:
    """Refuse (naming the file) any map whose die grid differs from the first map's."""
    if not maps:
        raise FabsightError(None, "nothing to stack: no wafer maps")
    first = maps[0]
    for m in maps[1:]:
        if m.shape != first.shape or not (_same(m.x_index, first.x_index) and _same(m.y_index, first.y_index)):
            raise FabsightError(
                m.source or None,
                f"wafer {m.wafer_id or '?'} has die grid {_grid_text(m)}, not the {_grid_text(first)} of "
                f"wafer {first.wafer_id or '?'}; a stack needs wafers of one die grid",
            )


def _same(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is None or b is None or np.array_equal(a, b)


def _grid_text(m: WaferMap) -> str:
    rows, cols = m.shape
    if m.x_index is None or m.y_index is None or not len(m.x_index) or not len(m.y_index):
        return f"{rows}×{cols}"
    xs, ys = np.asarray(m.x_index), np.asarray(m.y_index)
    return f"{rows}×{cols} (x {int(xs.min())}..{int(xs.max())}, y {int(ys.min())}..{int(ys.max())})"


def stack_maps(maps: Sequence[WaferMap], *, bin_code: int | None = None) -> StackedMap:
    """How often each position fails (or, with ``bin_code``, lands in that bin) over ``maps``."""
    check_same_grid(maps)
    tested = np.zeros(maps[0].shape, dtype=np.int64)
    hits = np.zeros(maps[0].shape, dtype=np.int64)
    for m in maps:
        grid = np.asarray(m.grid)
        tested += grid != DieState.OFF
        if bin_code is None:
            hits += grid == DieState.FAIL
        elif m.bins is None:
            raise FabsightError(m.source or None, f"this map has no bin codes to stack bin {bin_code} of")
        else:
            hits += np.asarray(m.bins) == bin_code
    with np.errstate(invalid="ignore", divide="ignore"):
        frequency = np.where(tested > 0, hits / np.maximum(tested, 1), np.nan)
    first = maps[0]
    return StackedMap(
        frequency=frequency,
        tested=tested,
        n_wafers=len(maps),
        what=_what(maps, bin_code),
        scope=scope_of(maps),
        notch=first.notch,
        x_index=first.x_index,
        y_index=first.y_index,
    )


def _what(maps: Sequence[WaferMap], bin_code: int | None) -> str:
    if bin_code is not None:
        definition = next((m.bin_definitions[bin_code] for m in maps if bin_code in m.bin_definitions), None)
        return f"bin {bin_code} {definition.name}".rstrip() if definition is not None else f"bin {bin_code}"
    return "dies with defects" if maps[0].defects is not None else "failing dies"


def stack_by_bin(maps: Sequence[WaferMap], *, top: int = 5) -> list[StackedMap]:
    """The fail stack, then one stack per failing bin for the ``top`` bins with most failing dies."""
    stacks = [stack_maps(maps)]
    if all(m.bins is not None for m in maps):
        ranked = pareto(maps, "bin").rows[:top]
        stacks += [stack_maps(maps, bin_code=int(row.key)) for row in ranked]
    return stacks
