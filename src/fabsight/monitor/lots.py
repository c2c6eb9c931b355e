"""Lot monitoring: group wafers into lots, chart them against baseline lots, raise alarms.

A lot is judged three ways, because each catches what the others miss:

* **control limits** on the failing-die fraction (and, with a classifier, on the share
  of wafers showing each pattern): a lot clearly worse than the baseline;
* **Western-Electric runs** on the same charts: small sustained shifts;
* a **drift test** of the lot's wafers against all baseline wafers (permutation tests of
  the wafer features and, with a classifier, of the pattern mix and the embedding,
  combined; :mod:`fabsight.monitor.drift`): a change of *spatial signature* at equal
  yield, e.g. fails moving from the centre to the edge, or of the pattern mix.

Each monitored lot is tested at level α on its own; with many lots some false alarms are
expected (about α per lot), which is why alarms name the features that moved.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from fabsight.errors import FabsightError
from fabsight.monitor.charts import ChartKind, ControlChart, p_chart, western_electric
from fabsight.monitor.drift import DriftResult, drift_test
from fabsight.monitor.features import FeatureTable, extract_features
from fabsight.types import WaferMap, source_of, wafer_key
from fabsight.utils.progress import track

#: Lots named by neither the file nor the data fall back to this.
UNNAMED_LOT = "(no lot id)"


@dataclass
class Lot:
    """Wafers of one lot (indices into the monitored list) and when the lot was made."""

    lot_id: str
    wafers: list[int]
    time: datetime | None
    time_source: str  # "timestamp" (from the file's data), "file mtime" or "input order"
    source: str = "map"  # what measured its wafers (:func:`fabsight.types.source_of`)


@dataclass
class Alarm:
    lot: str
    kind: str  # "limit", "run" or "drift"
    chart: str
    detail: str


@dataclass
class MonitorResult:
    lots: list[Lot]
    n_baseline: int
    charts: list[ControlChart]
    drift: dict[str, DriftResult]
    alarms: list[Alarm]
    features: FeatureTable

    def lot_summary(self, lot: Lot, maps: Sequence[WaferMap]) -> dict[str, Any]:
        """One lot as a dict (JSON output, report rows)."""
        ws = [maps[i] for i in lot.wafers]
        dies = sum(w.n_dies for w in ws)
        fails = sum(w.n_fail for w in ws)
        out: dict[str, Any] = {
            "lot": lot.lot_id,
            "time": lot.time,
            "time_source": lot.time_source,
            "source": lot.source,
            "baseline": self.lots.index(lot) < self.n_baseline,
            "wafers": len(ws),
            "dies": dies,
            "fail_fraction": fails / dies if dies else None,
            "yield": 1 - fails / dies if dies else None,  # die yield of the lot
        }
        if self.features.predicted is not None:
            mix = [self.features.predicted[i] for i in lot.wafers]
            out["pattern_mix"] = {c: mix.count(c) for c in self.features.classes or [] if mix.count(c)}
        d = self.drift.get(lot.lot_id)
        if d is not None:
            out["drift"] = {
                "distance": d.distance,
                "p_value": d.p_value,
                "components": {c.name: c.p_value for c in d.components},
                "top_features": [{"name": s.name, "smd": s.smd, "p_value": s.p_value} for s in d.per_feature[:3]],
            }
        out["alarms"] = [a.__dict__ for a in self.alarms if a.lot == lot.lot_id]
        return out

    def to_dict(self, maps: Sequence[WaferMap]) -> dict[str, Any]:
        return {
            "lots": [self.lot_summary(lot, maps) for lot in self.lots],
            "n_baseline": self.n_baseline,
            "time_sources": sorted({lot.time_source for lot in self.lots}),
            "charts": [c.to_dict() for c in self.charts],
            "alarms": [a.__dict__ for a in self.alarms],
        }


def _naive_utc(t: datetime) -> datetime:
    """Compare file timestamps (naive, fab local time) and aware ones on one scale."""
    return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo is not None else t


def _lot_time(maps: Sequence[WaferMap], idx: list[int]) -> tuple[datetime | None, str]:
    stamps = [maps[i].timestamp for i in idx if maps[i].timestamp is not None]
    if stamps:
        return min(_naive_utc(t) for t in stamps), "timestamp"
    files = [maps[i].source for i in idx if maps[i].source and os.path.exists(maps[i].source)]
    if files:
        return datetime.fromtimestamp(min(os.path.getmtime(s) for s in files)), "file mtime"
    return None, "input order"


def group_lots(maps: Sequence[WaferMap]) -> list[Lot]:
    """Lots in time order. A lot's time is its earliest wafer timestamp; files without one
    fall back to the file's modification time, and failing that to input order.

    When the maps come from several sources (the KLARF, STDF and G85 of one lot), each lot is
    split per source and named ``A103 · sort``: an inspection yield and a sort yield are
    different measurements of the same wafers, never one lot's average. Within a source, a
    wafer measured twice (the STDF and the G85 of one sort) counts once, with its last map.
    """
    several = len({source_of(m) for m in maps}) > 1
    groups: dict[str, dict[tuple[str, str], int]] = {}
    sources: dict[str, str] = {}
    for i, m in enumerate(maps):
        lot = m.lot_name or UNNAMED_LOT  # a file without a lot id is its own lot
        name = f"{lot} · {source_of(m)}" if several else lot
        sources[name] = source_of(m)
        groups.setdefault(name, {})[(str(m.lot_id), wafer_key(str(m.wafer_id), m.lot_id) or str(i))] = i
    lots = []
    for lot_id, keyed in groups.items():
        idx = sorted(keyed.values())
        lots.append(Lot(lot_id, idx, *_lot_time(maps, idx), source=sources[lot_id]))
    # Stable sort: lots without any time keep their input order after the dated ones.
    return sorted(lots, key=lambda lot: (lot.time is None, lot.time or datetime.min))


def monitor_lots(
    maps: Sequence[WaferMap],
    *,
    model: Any = None,
    n_baseline: int = 5,
    chart: ChartKind = "laney",
    alpha: float = 0.05,
    n_projections: int = 64,
    n_permutations: int = 500,
    seed: int = 0,
) -> MonitorResult:
    """Chart and test every lot of ``maps`` against the first ``n_baseline`` lots in time."""
    lots = group_lots(maps)
    if len(lots) < 2:
        raise FabsightError(None, f"monitoring needs at least 2 lots, found {len(lots)} (wafers are grouped by lot id)")
    if not 1 <= n_baseline < len(lots):
        raise FabsightError(
            None, f"--baseline must be 1..{len(lots) - 1} lots (there are {len(lots)}), got {n_baseline}"
        )
    names = [lot.lot_id for lot in lots]
    feats = extract_features(maps, model=model)

    dies = np.array([sum(maps[i].n_dies for i in lot.wafers) for lot in lots])
    fails = np.array([sum(maps[i].n_fail for i in lot.wafers) for lot in lots])
    charts = [p_chart("fail fraction", names, fails, dies, n_baseline=n_baseline, kind=chart)]
    if feats.predicted is not None:
        wafers = np.array([len(lot.wafers) for lot in lots])
        for c in feats.classes or []:
            count = np.array([sum(feats.predicted[i] == c for i in lot.wafers) for lot in lots])
            charts.append(p_chart(f"share of {c}", names, count, wafers, n_baseline=n_baseline, kind=chart))

    alarms: list[Alarm] = []
    for ch in charts:
        for k, rules in enumerate(western_electric(ch.z)):
            if k < n_baseline:
                continue
            if ch.value[k] > ch.ucl[k] or ch.value[k] < ch.lcl[k]:
                side = "above UCL" if ch.value[k] > ch.ucl[k] else "below LCL"
                limit = ch.ucl[k] if ch.value[k] > ch.ucl[k] else ch.lcl[k]
                note = " (absent from every baseline lot)" if ch.center == 0 else ""
                alarms.append(Alarm(names[k], "limit", ch.name, f"{ch.value[k]:.4g} {side} {limit:.4g}{note}"))
            alarms += [Alarm(names[k], "run", ch.name, r) for r in rules if not r.startswith("rule 1")]

    base_idx = [i for lot in lots[:n_baseline] for i in lot.wafers]
    base = feats.subset(base_idx)
    drift: dict[str, DriftResult] = {}
    for lot in track(lots[n_baseline:], "drift tests"):
        if len(lot.wafers) < 2:
            continue
        res = drift_test(
            base,
            feats.subset(lot.wafers),
            n_projections=n_projections,
            n_permutations=n_permutations,
            seed=seed,
            alpha=alpha,
        )
        drift[lot.lot_id] = res
        if res.drift:
            moved = ", ".join(f"{s.name} ({s.smd:+.2f} SD)" for s in res.per_feature[:3])
            parts = ", ".join(f"{c.name} p={c.p_value:.4f}" for c in res.components)
            alarms.append(
                Alarm(lot.lot_id, "drift", "features", f"p={res.p_value:.4f} < {alpha} ({parts}); moved most: {moved}")
            )
    return MonitorResult(lots, n_baseline, charts, drift, alarms, feats)
