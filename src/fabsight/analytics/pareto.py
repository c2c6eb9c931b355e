"""Paretos of inspection defects and sort bins: what dominates a lot, ranked, with names.

Two sources, never mixed in one Pareto (a defect and a failing die are different units):

* **Inspection** (maps with a KLARF defect list) counts *defects* by class (number and the
  ``ClassLookup`` name), by size bin of ``DSIZE`` (:data:`SIZE_BINS_UM`), by wafer, lot,
  rough bin (``ROUGHBINNUMBER``) or inspection step (``StepID``).
* **Sort** (STDF, G85 and every other die map) counts *failing dies* by hard bin (STDF HBR,
  G85 ``BinDefinition``), soft bin (STDF SBR), wafer or lot. Each row also carries its yield
  loss: the fraction of all tested dies that the row's failing dies cost, so the rows' losses
  add up to ``1 - yield``. A die fails when its map says so (the reader's pass/fail decision).

Everything is a handful of numpy passes over the concatenated columns (``np.unique`` on one
integer key per defect), so a million defects take well under a second.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.errors import FabsightError
from fabsight.types import BinDefinition, DieState, WaferMap
from fabsight.utils.atomic import atomic_path

#: Default upper edges (µm) of the DSIZE bins: < 0.5, 0.5–1, 1–2, 2–5, 5–10, 10–20, 20–50,
#: 50–100 and ≥ 100 µm; a defect exactly on an edge goes to the bin above it.
SIZE_BINS_UM: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
#: What ``by`` may be, per source.
INSPECTION_BY: tuple[str, ...] = ("class", "size", "wafer", "lot", "bin", "step")
SORT_BY: tuple[str, ...] = ("bin", "softbin", "wafer", "lot")
_NO_VALUE = -1  # key of defects without the column (no CLASSNUMBER, no DSIZE, ...)


@dataclass
class ParetoRow:
    """One bar: its key (class number, bin code, size range, wafer), what people read, its count."""

    key: str
    label: str
    count: int
    share: float
    cumulative: float
    yield_loss: float | None = None


@dataclass
class Pareto:
    """Rows ranked by count (ties by key), with what was counted and over how many maps."""

    by: str
    unit: str
    total: int
    rows: list[ParetoRow]
    maps: int
    scope: str
    tested_dies: int | None = None
    size_bins_um: list[float] | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "by": self.by,
            "unit": self.unit,
            "total": self.total,
            "maps": self.maps,
            "scope": self.scope,
            "rows": [row.__dict__ for row in self.rows],
        }
        if self.tested_dies is not None:
            out["tested_dies"] = self.tested_dies
            out["yield"] = round(1 - self.total / self.tested_dies, 6) if self.tested_dies else None
        if self.size_bins_um is not None:
            out["size_bins_um"] = self.size_bins_um
        return out


def pareto(maps: Sequence[WaferMap], by: str = "class", *, size_bins: Sequence[float] | None = None) -> Pareto:
    """The Pareto of ``maps`` by ``by``: of defects for KLARF maps, of failing dies otherwise.

    Raises :class:`FabsightError` naming a file when inputs mix the two sources, or when
    ``by`` does not apply to the source (``class`` of an STDF file, ``softbin`` of a KLARF).
    """
    if not maps:
        raise FabsightError(None, "nothing to rank: no wafer maps")
    if by not in INSPECTION_BY + SORT_BY:
        raise FabsightError("--by", f"{by!r} is not {_or(sorted(set(INSPECTION_BY + SORT_BY)))}")
    inspection = [m.defects is not None for m in maps]
    if any(inspection) and not all(inspection):
        odd = maps[inspection.index(not inspection[0])]
        raise FabsightError(
            odd.source or None,
            "mixes inspection defects (KLARF) with sort/die maps; a Pareto counts one source: run it on each apart",
        )
    if inspection[0]:
        if by not in INSPECTION_BY:
            raise FabsightError(
                maps[0].source or None, f"--by {by} needs sort bins; KLARF defects go by {_or(INSPECTION_BY)}"
            )
        return _defect_pareto(maps, by, SIZE_BINS_UM if size_bins is None else check_size_bins(size_bins))
    if by not in SORT_BY:
        raise FabsightError(maps[0].source or None, f"--by {by} needs KLARF defects; die maps go by {_or(SORT_BY)}")
    return _sort_pareto(maps, by)


def check_size_bins(edges: Sequence[float]) -> tuple[float, ...]:
    """Size-bin edges as given, checked: positive, finite and strictly increasing."""
    values = tuple(float(e) for e in edges)
    if not values or not all(np.isfinite(values)) or min(values) <= 0 or any(np.diff(values) <= 0):
        raise FabsightError("--size-bins", f"{list(edges)} must be positive µm edges in increasing order")
    return values


def _or(options: Sequence[str]) -> str:
    return ", ".join(options[:-1]) + f" or {options[-1]}"


# ----------------------------------------------------------------------------- inspection


def _defect_pareto(maps: Sequence[WaferMap], by: str, edges: tuple[float, ...]) -> Pareto:
    lengths = np.array([len(m.defects) for m in maps], dtype=np.int64)  # type: ignore[arg-type]
    if by == "class":
        keys = np.concatenate([m.defects.class_number for m in maps])  # type: ignore[union-attr]
        rows = _rank(keys, _class_labeller(maps))
    elif by == "size":
        keys = size_keys(np.concatenate([m.defects.size for m in maps]), edges)  # type: ignore[union-attr]
        rows = _rank(keys, lambda k: size_label(k, edges), keyer=lambda k: size_label(k, edges))
    elif by == "bin":
        keys = np.concatenate([_rough_bins(m) for m in maps])
        if np.all(keys == _NO_VALUE):
            raise FabsightError(maps[0].source or None, "no ROUGHBINNUMBER column in the defect list to rank by")
        rows = _rank(keys, lambda k: "no rough bin" if k == _NO_VALUE else f"rough bin {k}")
    else:
        names = [_group_name(m, by) for m in maps]
        rows = _rank_groups(names, lengths)
    return Pareto(
        by=by,
        unit="defects",
        total=int(lengths.sum()),
        rows=rows,
        maps=len(maps),
        scope=scope_of(maps),
        size_bins_um=list(edges) if by == "size" else None,
    )


def size_keys(size: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """The size-bin index of each defect (0 = below the first edge), -1 without a DSIZE."""
    keys = np.searchsorted(np.asarray(edges, dtype=np.float64), size, side="right").astype(np.int64)
    keys[~np.isfinite(size)] = _NO_VALUE
    return keys


def size_label(key: int, edges: Sequence[float]) -> str:
    """``"2–5 µm"`` for a size-bin index, ``"< 0.5 µm"`` / ``"≥ 100 µm"`` at the ends."""
    if key == _NO_VALUE:
        return "no DSIZE"
    if key == 0:
        return f"< {edges[0]:g} µm"
    if key == len(edges):
        return f"≥ {edges[-1]:g} µm"
    return f"{edges[key - 1]:g}–{edges[key]:g} µm"


def class_names(maps: Sequence[WaferMap]) -> dict[int, str]:
    """The class names of every map's KLARF ``ClassLookup`` (the first name of a number wins)."""
    names: dict[int, str] = {}
    for m in maps:
        for code, name in (m.extras.get("class_names") or {}).items():
            names.setdefault(int(code), str(name))
    return names


def _class_labeller(maps: Sequence[WaferMap]) -> Callable[[int], str]:
    names = class_names(maps)

    def label(code: int) -> str:
        if code == _NO_VALUE:
            return "no CLASSNUMBER"
        return f"{code} {names[code]}" if code in names else f"class {code}"

    return label


def _rough_bins(wmap: WaferMap) -> np.ndarray:
    d = wmap.defects
    assert d is not None
    column = d.extra.get("ROUGHBINNUMBER")
    if column is None:
        return np.full(len(d), _NO_VALUE, dtype=np.int64)
    return np.nan_to_num(np.asarray(column, dtype=np.float64), nan=_NO_VALUE).astype(np.int64)


def _group_name(wmap: WaferMap, by: str) -> str:
    if by == "lot":
        return wmap.lot_name or "(no lot id)"
    if by == "step":
        return str(wmap.extras.get("step_id") or "") or "(no step id)"
    return wafer_name(wmap)


def wafer_name(wmap: WaferMap) -> str:
    """``LOT #wafer`` as pictures and tables print it."""
    return " ".join(p for p in (wmap.lot_name, f"#{wmap.wafer_id}" if wmap.wafer_id else "") if p) or "(unnamed)"


def scope_of(maps: Sequence[WaferMap]) -> str:
    """What a title says the maps are: the one lot's name, or how many lots."""
    lots = sorted({m.lot_name for m in maps})
    if len(lots) == 1:
        return f"{lots[0] or 'one lot'} ({len(maps)} wafer{'s' if len(maps) != 1 else ''})"
    return f"{len(lots)} lots ({len(maps)} wafers)"


# ----------------------------------------------------------------------------- ranking


def _rank(
    keys: np.ndarray,
    labeller: Callable[[int], str],
    *,
    keyer: Callable[[int], str] = str,
    weights: np.ndarray | None = None,
) -> list[ParetoRow]:
    """Rows for each distinct key, most frequent first (ties by key), with shares of the total."""
    codes, counts = np.unique(keys, return_counts=True)
    if weights is not None:
        counts = np.bincount(np.searchsorted(codes, keys), weights=weights, minlength=codes.size).astype(np.int64)
    order = np.argsort(-counts, kind="stable")
    total = int(counts.sum())
    running = np.cumsum(counts[order])
    return [
        ParetoRow(
            key=keyer(int(codes[i])),
            label=labeller(int(codes[i])),
            count=int(counts[i]),
            share=round(float(counts[i]) / total, 6) if total else 0.0,
            cumulative=round(float(running[j]) / total, 6) if total else 0.0,
        )
        for j, i in enumerate(order)
        if counts[i] > 0
    ]


def _rank_groups(names: Sequence[str], counts: np.ndarray) -> list[ParetoRow]:
    """Rows for named groups of maps (wafers, lots, steps) whose counts are already known."""
    unique = sorted(set(names))
    index = np.array([unique.index(n) for n in names], dtype=np.int64)
    return _rank(index, lambda k: unique[k], keyer=lambda k: unique[k], weights=counts.astype(np.float64))


# ----------------------------------------------------------------------------- sort


def _sort_pareto(maps: Sequence[WaferMap], by: str) -> Pareto:
    tested = sum(m.n_dies for m in maps)
    if by in ("bin", "softbin"):
        keys, defs = _failing_bins(maps, by)
        rows = _rank(keys, lambda k: _bin_label(k, defs))
    else:
        names = [_group_name(m, by) for m in maps]
        rows = _rank_groups(names, np.array([m.n_fail for m in maps], dtype=np.int64))
    for row in rows:
        row.yield_loss = round(row.count / tested, 6) if tested else None
    return Pareto(
        by=by,
        unit="failing dies",
        total=sum(m.n_fail for m in maps),
        rows=rows,
        maps=len(maps),
        scope=scope_of(maps),
        tested_dies=tested,
    )


def _failing_bins(maps: Sequence[WaferMap], by: str) -> tuple[np.ndarray, dict[int, BinDefinition]]:
    """The bin code of every failing die, and the bins' definitions (names) of all maps."""
    keys: list[np.ndarray] = []
    defs: dict[int, BinDefinition] = {}
    for m in maps:
        bins = m.bins if by == "bin" else m.extras.get("soft_bins")
        if bins is None:
            what = "hard bins" if by == "bin" else "soft bins (only STDF has them)"
            raise FabsightError(m.source or None, f"this map has no {what} to rank by")
        keys.append(np.asarray(bins, dtype=np.int64)[np.asarray(m.grid) == DieState.FAIL])
        table = m.bin_definitions if by == "bin" else (m.extras.get("soft_bin_definitions") or {})
        for code, definition in table.items():
            defs.setdefault(int(code), definition)
    return np.concatenate(keys), defs


def _bin_label(code: int, defs: dict[int, BinDefinition]) -> str:
    definition = defs.get(code)
    return f"bin {code} {definition.name}" if definition is not None and definition.name else f"bin {code}"


# ----------------------------------------------------------------------------- chart


def pareto_png(result: Pareto, path: str | os.PathLike[str], *, top: int = 15) -> Path:
    """A report-ready Pareto chart, written atomically: bars (largest first, the rest as one
    "other" bar), count labels, and the cumulative share as a line on a 0–100 % axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    target = Path(path)
    if target.suffix.lower() != ".png":
        raise FabsightError(target, "output picture must be a .png file")
    if not result.rows:
        raise FabsightError(target, f"nothing to chart: no {result.unit}")
    labels, counts = _chart_bars(result.rows, top)
    fig = Figure(figsize=(max(6.0, 0.55 * len(labels) + 2.5), 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    bars = ax.bar(x, counts, color="#3b6ea8", width=0.7, zorder=2)
    ax.bar_label(bars, labels=[f"{c:,}" for c in counts], fontsize=7, padding=2)
    ax.set_xticks(x, [_short(t) for t in labels], rotation=35, ha="right", fontsize=8)
    ax.set_ylabel(result.unit)
    ax.set_xlabel(_AXIS_NAMES.get(result.by, result.by))
    ax.set_ylim(0, max(counts) * 1.15)
    ax.grid(axis="y", color="#dddddd", zorder=0)
    line = ax.twinx()
    cumulative = np.cumsum(counts) / result.total * 100
    line.plot(x, cumulative, color="#c8281f", marker="o", markersize=4, lw=1.5, label="cumulative %")
    line.axhline(80, color="#c8281f", lw=0.8, ls=":", alpha=0.7)
    line.set_ylim(0, 105)
    line.yaxis.set_major_formatter(PercentFormatter(100))
    line.set_ylabel("cumulative share", color="#c8281f")
    loss = f" (yield loss {100 * result.total / result.tested_dies:.1f} %)" if result.tested_dies else ""
    ax.set_title(
        f"{result.unit.capitalize()} by {_AXIS_NAMES.get(result.by, result.by)} · {result.scope} · "
        f"{result.total:,} in all{loss}",
        fontsize=10,
    )
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target


_AXIS_NAMES = {"class": "defect class", "size": "defect size (DSIZE)", "bin": "bin", "softbin": "soft bin"}


def _chart_bars(rows: Sequence[ParetoRow], top: int) -> tuple[list[str], list[int]]:
    """The first ``top`` rows as bars, and the rest summed into one "other" bar at the end."""
    shown = list(rows[:top])
    labels = [r.label for r in shown]
    counts = [r.count for r in shown]
    rest = rows[top:]
    if rest:
        labels.append(f"other ({len(rest)})")
        counts.append(sum(r.count for r in rest))
    return labels, counts


def _short(text: str, width: int = 26) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
