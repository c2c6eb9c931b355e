"""Kill ratio and yield impact: which inline defects make dies fail at sort.

For every defect class (KLARF ``CLASSNUMBER``) and size bin (``DSIZE``, µm), over the dies
that were both inspected and tested (see :mod:`fabsight.analytics.align`):

* ``dies_with``: dies holding at least one defect of the group, ``failing_with`` of them
  failing at sort, ``fail_rate`` = failing_with / dies_with;
* ``kill_ratio`` = fail_rate − fail rate of clean dies (dies without any defect): the excess
  failures the defect brings, with a 95 % Newcombe (hybrid Wilson score) interval;
* ``kill_probability`` = kill_ratio / (1 − clean fail rate): the chance that the defect kills
  a die that would otherwise pass (the normalised form; it equals the defect's kill
  probability when defects and other fail causes are independent);
* ``killed_share`` = failing_with / dies_with: the classic "killed / defective" form, which
  also counts dies that would have failed anyway;
* ``yield_loss`` = dies_with × max(kill_ratio, 0) / dies: the share of all dies the group
  costs, the yield gained if it were gone.

Dies count as inspected when the KLARF lists its tested dies (``SampleTestPlan``); otherwise
every tested die is taken as inspected. Defects on dies that were not tested are counted in
``defects_untested`` and left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from typing import Any

import numpy as np

from fabsight.analytics.align import (
    Alignment,
    Pairing,
    WaferPair,
    check_alignment,
    die_keys,
    flip_warning,
    on_wafer_dies,
    pair_wafers,
)
from fabsight.errors import FabsightError
from fabsight.types import DefectList, WaferMap

#: Default upper edges of the size bins (µm); a last bin takes everything larger.
SIZE_EDGES_UM: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0)
_Z95 = 1.959963984540054


def wilson(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n ((0, 1) when n is 0)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float = _Z95) -> tuple[float, float]:
    """Newcombe's hybrid score interval of the difference k1/n1 − k2/n2 (method 10)."""
    p1, p2 = (k1 / n1 if n1 else 0.0), (k2 / n2 if n2 else 0.0)
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    return d - math.hypot(p1 - l1, u2 - p2), d + math.hypot(u1 - p1, p2 - l2)


def size_bin_labels(edges: Sequence[float]) -> list[str]:
    """Labels of the bins ``np.digitize(size, edges)`` gives: ``<0.5 µm``, ``0.5–1 µm``, …, ``≥100 µm``."""
    e = [f"{v:g}" for v in edges]
    return [f"<{e[0]} µm"] + [f"{a}–{b} µm" for a, b in pairwise(e)] + [f"≥{e[-1]} µm"]


@dataclass
class ImpactRow:
    """Kill ratio and yield impact of one defect class or size bin."""

    key: str
    name: str
    defects: int
    dies_with: int
    failing_with: int
    fail_rate: float
    kill_ratio: float
    kill_ratio_low: float
    kill_ratio_high: float
    kill_probability: float
    killed_share: float
    yield_loss: float


@dataclass
class KillRatioReport:
    """Kill ratios of one set of paired wafers (see the module docstring)."""

    alignment: Alignment
    dies: int
    clean_dies: int
    clean_failing: int
    defects_untested: int
    wafers: list[dict[str, Any]]
    by_class: list[ImpactRow]
    by_size: list[ImpactRow]
    inspection_only: list[str] = field(default_factory=list)
    sort_only: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def clean_fail_rate(self) -> float:
        return self.clean_failing / self.clean_dies if self.clean_dies else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (what ``--json`` and the REST API return)."""
        out = asdict(self)
        out["alignment"] = {**asdict(self.alignment), "options": self.alignment.options()}
        out["clean_fail_rate"] = self.clean_fail_rate
        return out


@dataclass
class _Tally:
    """Counts of one group summed over wafers."""

    defects: int = 0
    dies_with: int = 0
    failing_with: int = 0


@dataclass
class _WaferDies:
    """One wafer's dies in the sort frame: the sorted keys of counted dies and their fail flags."""

    keys: np.ndarray
    failed: np.ndarray


def _counted_dies(pair: WaferPair, alignment: Alignment) -> _WaferDies:
    """Tested dies that were also inspected (all tested dies without a KLARF test plan)."""
    sx, sy, sfail = on_wafer_dies(pair.sort)
    keys = die_keys(sx, sy)
    if pair.inspection.extras.get("die_grid") == "SampleTestPlan":
        ix, iy, _ = on_wafer_dies(pair.inspection)
        keep = np.isin(keys, die_keys(*alignment.apply(ix, iy)))
        keys, sfail = keys[keep], sfail[keep]
    order = np.argsort(keys)
    return _WaferDies(keys[order], sfail[order])


def _group_codes(d: DefectList, edges: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Per defect: its class number, and its size bin (``len(edges) + 1`` = no size)."""
    size = np.asarray(d.size, np.float64)
    bins = np.where(np.isfinite(size), np.digitize(np.nan_to_num(size), edges), len(edges) + 1)
    return np.asarray(d.class_number, np.int64), bins.astype(np.int64)


def _tally(tallies: dict[int, _Tally], codes: np.ndarray, die_idx: np.ndarray, failed: np.ndarray) -> None:
    """Add one wafer's defects (group code, index of their die) to the per-group tallies."""
    for code in np.unique(codes).tolist():
        sel = codes == code
        dies = np.unique(die_idx[sel])
        t = tallies.setdefault(int(code), _Tally())
        t.defects += int(sel.sum())
        t.dies_with += int(dies.size)
        t.failing_with += int(failed[dies].sum())


def _rows(tallies: dict[int, _Tally], names: dict[int, str], clean: tuple[int, int], dies: int) -> list[ImpactRow]:
    """Impact rows of the tallies, worst yield loss first."""
    k0, n0 = clean
    p0 = k0 / n0 if n0 else float("nan")
    rows = []
    for code, t in tallies.items():
        rate = t.failing_with / t.dies_with
        kr = rate - p0
        low, high = newcombe(t.failing_with, t.dies_with, k0, n0)
        rows.append(ImpactRow(
            key=str(code),
            name=names.get(code, str(code)),
            defects=t.defects,
            dies_with=t.dies_with,
            failing_with=t.failing_with,
            fail_rate=rate,
            kill_ratio=kr,
            kill_ratio_low=low,
            kill_ratio_high=high,
            kill_probability=kr / (1 - p0) if p0 < 1 else float("nan"),
            killed_share=rate,
            yield_loss=t.dies_with * max(kr, 0.0) / dies if dies else 0.0,
        ))
    return sorted(rows, key=lambda r: (-r.yield_loss if math.isfinite(r.yield_loss) else 0.0, -r.dies_with, r.key))


@dataclass
class _Accumulator:
    """Counts over every wafer of a kill-ratio run."""

    by_class: dict[int, _Tally] = field(default_factory=dict)
    by_size: dict[int, _Tally] = field(default_factory=dict)
    class_names: dict[int, str] = field(default_factory=dict)
    dies: int = 0
    clean: int = 0
    clean_failing: int = 0
    untested: int = 0
    wafers: list[dict[str, Any]] = field(default_factory=list)

    def add(self, pair: WaferPair, alignment: Alignment, edges: Sequence[float]) -> None:
        o = check_alignment(pair, alignment)
        counted = _counted_dies(pair, alignment)
        self.dies += int(counted.keys.size)
        d = pair.inspection.defects
        has_defect = np.zeros(counted.keys.size, bool)
        if d is not None and len(d):
            keys = die_keys(*alignment.apply(d.xindex, d.yindex))
            pos = np.clip(np.searchsorted(counted.keys, keys), 0, max(counted.keys.size - 1, 0))
            hit = counted.keys[pos] == keys if counted.keys.size else np.zeros(keys.size, bool)
            self.untested += int((~hit).sum())
            classes, sizes = _group_codes(d, edges)
            _tally(self.by_class, classes[hit], pos[hit], counted.failed)
            _tally(self.by_size, sizes[hit], pos[hit], counted.failed)
            has_defect[pos[hit]] = True
            self.class_names.update(pair.inspection.extras.get("class_names") or {})
        self.clean += int((~has_defect).sum())
        self.clean_failing += int(counted.failed[~has_defect].sum())
        self.wafers.append({
            "lot_id": pair.lot_id, "wafer_id": pair.wafer_id,
            "inspection": pair.inspection.source, "sort": pair.sort.source,
            "dies": int(counted.keys.size), "failing": int(counted.failed.sum()),
            "defect_dies": int(has_defect.sum()), "failing_defect_dies": int(counted.failed[has_defect].sum()),
            "defect_dies_tested": o.defect_dies_tested, "defect_dies_total": o.defect_dies,
        })


def kill_ratios(
    inspection: Sequence[WaferMap],
    sort: Sequence[WaferMap],
    alignment: Alignment | None = None,
    size_edges: Sequence[float] = SIZE_EDGES_UM,
) -> KillRatioReport:
    """Kill ratio and yield impact per defect class and size bin of paired wafers.

    ``inspection`` are KLARF maps (with defect lists), ``sort`` STDF or G85 maps of the same
    wafers; they are paired by lot and wafer id and aligned with ``alignment``. Unpaired
    wafers are listed, not counted.
    """
    alignment = alignment or Alignment()
    edges = sorted(float(e) for e in size_edges)
    if not edges or not all(math.isfinite(e) and e > 0 for e in edges):
        raise FabsightError(None, f"size bins {list(size_edges)}: expected positive µm edges, e.g. 1,2,5,10")
    no_defects = [m.source or m.wafer_id for m in inspection if m.defects is None]
    if no_defects:
        raise FabsightError(no_defects[0], "has no defect list: inspection files must be KLARF")
    inspection_as_sort = [m.source for m in sort if m.format == "klarf"]
    if inspection_as_sort:
        raise FabsightError(inspection_as_sort[0], "is inspection data (KLARF): sort files must be STDF or G85")
    pairing: Pairing = pair_wafers(inspection, sort)
    acc = _Accumulator()
    for pair in pairing.pairs:
        acc.add(pair, alignment, edges)
    names = {code: f"{code} {name}" if name else str(code) for code, name in acc.class_names.items()}
    sizes = {i: label for i, label in enumerate(size_bin_labels(edges))} | {len(edges) + 1: "no size"}
    clean = (acc.clean_failing, acc.clean)
    warning = flip_warning(pairing.pairs, alignment)
    return KillRatioReport(
        alignment=alignment,
        dies=acc.dies,
        clean_dies=acc.clean,
        clean_failing=acc.clean_failing,
        defects_untested=acc.untested,
        wafers=acc.wafers,
        by_class=_rows(acc.by_class, names, clean, acc.dies),
        by_size=_rows(acc.by_size, sizes, clean, acc.dies),
        inspection_only=pairing.inspection_only,
        sort_only=pairing.sort_only,
        warnings=[warning] if warning else [],
    )
