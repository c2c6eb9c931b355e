"""``/api/lots/{name}/…``: a lot's yield analytics, thin layers over :mod:`fabsight.analytics`.

Paretos (defects by class, size, wafer …; sort bins), the stacked map, repeaters, kill ratios
(when the lot holds inspection and sort results of the same wafers; default alignment, which
the answer reports) and commonality over a wafer history uploaded for the lot. Everything is
computed from the lot's stored uploads read again (:mod:`fabsight.serve.lotdata`).
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Query, Response, UploadFile, status

from fabsight.analytics.lot import LotAnalytics
from fabsight.errors import FabsightError
from fabsight.serve.deps import ServiceDep, SessionDep
from fabsight.serve.lotdata import lot_analytics
from fabsight.serve.routers.uploads import clean_filename, read_limited
from fabsight.serve.schemas import (
    CommonalityOut,
    HistoryOut,
    KillRatioOut,
    ParetoOut,
    RepeatersOut,
    RepeaterWaferOut,
)
from fabsight.store.history import MAX_HISTORY_BYTES, save_history
from fabsight.store.models import Wafer
from fabsight.store.queries import Conflict, WaferFilter, current_label, list_wafers
from fabsight.types import wafer_key

router = APIRouter(prefix="/api/lots", tags=["yield analytics"])
PNG = {200: {"content": {"image/png": {}}}}
SORT_BY = ("bin", "softbin")


def finite(value: Any) -> Any:
    """``value`` with NaN and infinite floats as None (JSON has neither), through dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def lot_pareto(an: LotAnalytics, by: str, source: str | None = None) -> Any:
    """The Pareto of ``by`` over the lot's ``source`` results; without a source, bins come from sort
    results (KLARF rough bins when the lot has none) and the rest from inspection defects, else
    from what the lot has. Conflict when the lot has no such results."""
    if source is None:
        sort = (by in SORT_BY and bool(an.sort)) or not an.inspection or by == "softbin"
    else:
        sort = source == "sort"
    p = an.sort_pareto(by) if sort else an.defect_pareto(by)
    if p is None:
        what = "sort (STDF/G85)" if sort else "inspection (KLARF)"
        raise Conflict(None, f"the lot has no {what} results to rank by {by}")
    return p


def _png_of(write: Any, *args: Any) -> bytes:
    """Run a library writer that takes a .png path and return the picture's bytes."""
    with tempfile.TemporaryDirectory(prefix="fabsight-png-") as tmp:
        target = Path(tmp) / "picture.png"
        write(*args, target)
        return target.read_bytes()


@router.get("/{name}/pareto", responses={404: {"description": "no such lot"}, 409: {"description": "no such results"}})
def pareto(
    name: str, svc: ServiceDep, session: SessionDep,
    by: Annotated[str, Query(description="class, size, wafer, lot, bin (ROUGHBINNUMBER) or step for defects; bin, "
                                         "softbin, wafer or lot for sort")] = "class",
    source: Annotated[str | None, Query(pattern="^(inspection|sort)$", description="which results (default: sort "
                                        "for bins when the lot has them, else inspection)")] = None,
) -> ParetoOut:
    """Defects (inspection) or failing dies (sort) ranked by ``by``, with shares and sort yield loss."""
    return ParetoOut(**finite(lot_pareto(lot_analytics(session, svc, name), by, source).to_json()))


@router.get("/{name}/pareto.png", response_class=Response, responses=PNG)
def pareto_png(
    name: str, svc: ServiceDep, session: SessionDep, by: str = "class",
    source: Annotated[str | None, Query(pattern="^(inspection|sort)$")] = None,
) -> Response:
    """The Pareto chart: bars largest first, cumulative share line."""
    from fabsight.analytics.pareto import pareto_png as draw

    result = lot_pareto(lot_analytics(session, svc, name), by, source)
    return Response(_png_of(draw, result), media_type="image/png")


@router.get("/{name}/stack.png", response_class=Response, responses=PNG)
def stack_png(name: str, svc: ServiceDep, session: SessionDep) -> Response:
    """Fail frequency per die position over the lot's sort wafers (and its top bins), else its inspection
    wafers' defect dies, with colour bars; 400 when the wafers do not share one die grid."""
    from fabsight.report.render import render_stack_png

    return Response(_png_of(render_stack_png, lot_analytics(session, svc, name).stacks()), media_type="image/png")


def repeaters_out(an: LotAnalytics) -> RepeatersOut:
    """:func:`find_repeaters` of the lot with every flagged defect's DEFECTID; Conflict without defects."""
    res = an.repeaters
    if res is None:
        raise Conflict(None, "the lot has no inspection (KLARF) results: repeaters need defect positions")
    wafers = [RepeaterWaferOut(**finite(w.to_json()),
                               flagged_defects=[int(i) for i in m.defects.defect_id[w.flags]] if m.defects else [])
              for m, w in zip(an.inspection, res.wafers, strict=True)]
    return RepeatersOut(**{**finite(res.to_json()), "wafers": wafers})


@router.get("/{name}/repeaters")
def repeaters(name: str, svc: ServiceDep, session: SessionDep) -> RepeatersOut:
    """Defects repeating at one die position within a wafer or across the lot's wafers (default tolerance)."""
    return repeaters_out(lot_analytics(session, svc, name))


def kill_ratio_out(an: LotAnalytics) -> KillRatioOut:
    report = an.kill_ratio
    if report is None:
        raise Conflict(None, str(an.kill_missing()))
    return KillRatioOut(**finite(report.to_dict()))


@router.get("/{name}/killratio", responses={409: {"description": "the lot lacks inspection or sort of one wafer"}})
def killratio(name: str, svc: ServiceDep, session: SessionDep) -> KillRatioOut:
    """Kill ratio and yield loss per defect class and size bin of the wafers with inspection and sort."""
    return kill_ratio_out(lot_analytics(session, svc, name))


@router.put("/{name}/history", status_code=status.HTTP_201_CREATED,
            responses={400: {"description": "not a history CSV with the named columns"}})
def upload_history(
    name: str, svc: ServiceDep,
    file: Annotated[UploadFile, File(description="wafer history CSV: one row per wafer and step")],
    lot_col: str | None = None, wafer_col: str | None = None, step_col: str | None = None,
    tool_col: str | None = None, chamber_col: str | None = None, slot_col: str | None = None,
    time_col: str | None = None,
) -> HistoryOut:
    """Store the lot's wafer history (replacing an earlier one); ``*_col`` name the CSV's columns
    (default: the field's own name, as in ``fabsight commonality``)."""
    named = {"lot": lot_col, "wafer": wafer_col, "step": step_col, "tool": tool_col, "chamber": chamber_col,
             "slot": slot_col, "time": time_col}
    filename = clean_filename(file.filename, "history.csv")
    data = read_limited(file, MAX_HISTORY_BYTES)
    if not data:
        raise FabsightError(filename, "empty file")
    row = save_history(svc.store, name, data, filename, {k: v for k, v in named.items() if v})
    return HistoryOut(lot=name, filename=row.filename, rows=row.rows, columns=row.columns, created_at=row.created_at)


def pattern_labels(results: list[Wafer]) -> dict[tuple[str, str], str]:
    """Each physical wafer's current labels over its results (``A+B``), as commonality reads them."""
    out: dict[tuple[str, str], set[str]] = {}
    for w in results:
        labels = out.setdefault((w.lot.name, wafer_key(w.wafer_id, w.lot.name)), set())
        label = current_label(w)
        if label and label != "none":
            labels.add(label)
    return {k: "+".join(sorted(v)) for k, v in out.items()}


def commonality_out(an: LotAnalytics, results: list[Wafer], pattern: str | None, yield_below: float | None,
                    defect_class: str | None) -> CommonalityOut:
    from fabsight.analytics.commonality import Flag

    if an.history is None:
        raise Conflict(None, "no wafer history for this lot: upload one (PUT /api/lots/{name}/history)")
    report = an.commonality(Flag(pattern, yield_below, defect_class), pattern_labels(results))
    return CommonalityOut(**finite(report.to_dict()), answer=report.answer())


@router.get("/{name}/commonality", responses={409: {"description": "no history uploaded for the lot"}})
def commonality(
    name: str, svc: ServiceDep, session: SessionDep,
    pattern: str | None = None, yield_below: Annotated[float | None, Query(ge=0, le=1)] = None,
    defect_class: str | None = None,
) -> CommonalityOut:
    """Which tool, chamber, slot or time window the flagged wafers (one of ``pattern``, ``yield_below``,
    ``defect_class``) share more than chance, over the lot's uploaded history (Fisher, BH-corrected)."""
    results = list_wafers(session, WaferFilter(lot=name), limit=10_000)
    return commonality_out(lot_analytics(session, svc, name), results, pattern, yield_below, defect_class)


def dominant_pattern(results: list[Wafer]) -> str | None:
    """The commonest current pattern label of a lot's results other than none (what its page tests)."""
    counts: dict[str, int] = {}
    for w in results:
        label = current_label(w)
        if label and label != "none":
            counts[label] = counts.get(label, 0) + 1
    return max(counts, key=lambda k: (counts[k], k)) if counts else None


def _tried(fn: Any, *args: Any) -> tuple[Any, str | None]:
    """``fn(*args)``, or None and the user-facing reason it could not be computed."""
    try:
        return fn(*args), None
    except FabsightError as exc:
        return None, exc.message


def lot_page_analytics(session: SessionDep, svc: ServiceDep, name: str) -> dict[str, Any]:
    """What the dashboard's lot page shows: which Pareto charts exist, the stack, repeaters, kill ratios,
    the history and the commonality of the lot's dominant pattern, each with its reason when absent."""
    an, error = _tried(lot_analytics, session, svc, name)
    if an is None:
        return {"error": error}
    results = list_wafers(session, WaferFilter(lot=name), limit=10_000)
    wanted = [("defects by class", "class", "inspection"), ("defects by size", "size", "inspection"),
              ("failing dies by bin", "bin", "sort")]
    charts = [(caption, f"by={by}&source={source}") for caption, by, source in wanted
              if (p := _tried(lot_pareto, an, by, source)[0]) is not None and p.rows]
    view: dict[str, Any] = {"error": None, "charts": charts, "pattern": dominant_pattern(results)}
    view["stack_missing"] = _tried(an.stacks)[1]
    view["repeaters"], view["repeaters_missing"] = _tried(repeaters_out, an)
    view["kill"], view["kill_missing"] = _tried(kill_ratio_out, an)
    view["history"] = an.history_source
    view["commonality"], view["commonality_missing"] = None, None
    if an.history is not None and view["pattern"] is not None:
        view["commonality"], view["commonality_missing"] = _tried(commonality_out, an, results, view["pattern"],
                                                                  None, None)
    elif an.history is not None:
        view["commonality_missing"] = "no wafer of the lot has a pattern label to test"
    return view
