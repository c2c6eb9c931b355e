"""One lot's yield analytics from its maps, computed once and shared by ``ask``, ``explain``,
the REST API and the dashboard's lot page.

The maps of a lot come from several files: KLARF inspection results (with defect lists) and
STDF / G85 sort results, often of the same physical wafers. :class:`LotAnalytics` keeps one
result per source and physical wafer (the STDF and the G85 of one sort are one measurement,
the last one read wins, as in the store's per-source yields), then runs the library
functions on the right subset: Paretos of defects and of sort bins, the stacked map,
:func:`~fabsight.analytics.repeaters.find_repeaters`, :func:`~fabsight.analytics.killratio.kill_ratios`
with the default alignment and :func:`~fabsight.analytics.commonality.commonality` when a
wafer history is given. What cannot be computed (no sort results, wafers that do not pair,
no history) is said in one sentence (:meth:`LotAnalytics.kill_missing`), so callers refuse
instead of answering with something else.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fabsight.errors import FabsightError
from fabsight.types import WaferMap, source_kind, source_of, wafer_key

if TYPE_CHECKING:
    from fabsight.analytics.commonality import CommonalityReport, Flag, HistoryRow, WaferResult
    from fabsight.analytics.killratio import KillRatioReport
    from fabsight.analytics.pareto import Pareto
    from fabsight.analytics.repeaters import RepeaterResult
    from fabsight.analytics.stack import StackedMap


def latest_per_source(maps: Sequence[WaferMap]) -> list[WaferMap]:
    """One map per (source, lot, physical wafer): the last one given, in first-seen order."""
    last: dict[tuple[str, str, str], WaferMap] = {}
    for m in maps:
        last[(source_of(m), m.lot_id, wafer_key(str(m.wafer_id), m.lot_id))] = m
    return list(last.values())


@dataclass
class LotAnalytics:
    """The analytics of ``maps`` (one lot, or any set of wafers), with an optional wafer history."""

    maps: list[WaferMap]
    history: list[HistoryRow] | None = None
    history_source: str | None = None

    def __post_init__(self) -> None:
        self.maps = latest_per_source(self.maps)

    @property
    def inspection(self) -> list[WaferMap]:
        """Results with a KLARF defect list."""
        return [m for m in self.maps if m.defects is not None]

    @property
    def sort(self) -> list[WaferMap]:
        """Sort results (STDF, G85)."""
        return [m for m in self.maps if m.defects is None and source_kind(m.format) == "sort"]

    def defect_pareto(self, by: str = "class") -> Pareto | None:
        """Defects of the inspection results by ``by`` (class, size, wafer …), or None without any."""
        from fabsight.analytics.pareto import pareto

        return pareto(self.inspection, by) if self.inspection else None

    def sort_pareto(self, by: str = "bin") -> Pareto | None:
        """Failing dies of the sort results by ``by`` (bin, softbin, wafer, lot), or None without any."""
        from fabsight.analytics.pareto import pareto

        return pareto(self.sort, by) if self.sort else None

    def stacks(self) -> list[StackedMap]:
        """The fail stack of the sort results and its top bins, else the inspection results' defect-die
        stack; refused (FabsightError) when the wafers do not share one die grid."""
        from fabsight.analytics.stack import stack_by_bin, stack_maps

        if self.sort:
            return stack_by_bin(self.sort, top=3)
        if self.inspection:
            return [stack_maps(self.inspection)]
        return [stack_maps(self.maps)]

    @functools.cached_property
    def repeaters(self) -> RepeaterResult | None:
        """Repeating defects of the inspection results at the default tolerance; None without defects."""
        from fabsight.analytics.repeaters import find_repeaters

        return find_repeaters(self.inspection) if self.inspection else None

    @functools.cached_property
    def _kill(self) -> tuple[KillRatioReport | None, str | None]:
        from fabsight.analytics.killratio import kill_ratios

        if not self.inspection or not self.sort:
            holds = {(True, False): "inspection (KLARF) results only", (False, True): "sort (STDF/G85) results only",
                     (False, False): "neither"}[(bool(self.inspection), bool(self.sort))]
            return None, (f"kill ratios need inspection (KLARF) and sort (STDF or G85) results of the same wafers, "
                          f"and the data holds {holds}")
        try:
            return kill_ratios(self.inspection, self.sort), None
        except FabsightError as exc:
            return None, f"kill ratios cannot be computed: {exc.message}"

    @property
    def kill_ratio(self) -> KillRatioReport | None:
        """Kill ratios of the paired inspection and sort wafers (default alignment), or None."""
        return self._kill[0]

    def kill_missing(self) -> str | None:
        """Why there is no kill ratio (one clause, for a refusal), or None when there is one."""
        return self._kill[1]

    def results(self, labels: Mapping[tuple[str, str], str] | None = None) -> list[WaferResult]:
        """One :class:`WaferResult` per physical wafer: its pattern ``labels`` (keyed by
        ``(lot, wafer_key)``, several joined by ``+``), its sort yield (else its inspection yield)
        and the names of its defect classes."""
        from fabsight.analytics.commonality import WaferResult
        from fabsight.analytics.pareto import class_names

        out: dict[tuple[str, str], WaferResult] = {}
        names = class_names(self.inspection) if self.inspection else {}
        for m in sorted(self.maps, key=lambda m: m.defects is None):  # sort yield overwrites inspection yield
            key = (m.lot_id, wafer_key(str(m.wafer_id), m.lot_id))
            r = out.setdefault(key, WaferResult(m.lot_id, key[1], (labels or {}).get(key, "")))
            if m.n_dies:
                r.yield_ = float(m.yield_)
            if m.defects is not None:
                codes = {int(c) for c in m.defects.class_number.tolist() if int(c) >= 0}
                r.classes = r.classes | {str(c) for c in codes} | {names[c] for c in codes if names.get(c)}
        return list(out.values())

    def commonality(self, flag: Flag, labels: Mapping[tuple[str, str], str] | None = None) -> CommonalityReport:
        """What the wafers flagged by ``flag`` share in the history; FabsightError without a history."""
        from fabsight.analytics.commonality import commonality

        if self.history is None:
            raise FabsightError(None, "commonality needs a wafer history CSV (lot, wafer, step, tool, chamber, "
                                "slot, time)")
        return commonality(self.results(labels), self.history, flag, history_source=self.history_source)
