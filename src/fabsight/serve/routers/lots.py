"""``/api/lots``: per-lot summaries (physical wafers, yield per source, pattern mix, open reviews), the
trend chart, and one lot's wafers each with its inspection and sort results."""

from __future__ import annotations

from fastapi import APIRouter, Response

from fabsight.serve.deps import SessionDep, lot_wafer_list, wafer_summary
from fabsight.serve.pictures import lot_trend_png
from fabsight.serve.schemas import LotDetail, LotOut
from fabsight.store.queries import LotSummary, NotFound, WaferFilter, list_wafers, lot_summaries

router = APIRouter(prefix="/api/lots", tags=["lots"])


def lot_out(s: LotSummary) -> LotOut:
    return LotOut(**{**vars(s), "sources": [vars(x) for x in s.sources]})


@router.get("")
def list_(session: SessionDep) -> list[LotOut]:
    """Every lot, oldest first."""
    return [lot_out(s) for s in lot_summaries(session)]


@router.get("/trend.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def trend(session: SessionDep) -> Response:
    """Mean yield per source and pattern mix per lot, oldest lot on the left."""
    return Response(lot_trend_png(lot_summaries(session)), media_type="image/png")


@router.get("/{name}", responses={404: {"description": "no such lot"}})
def get(name: str, session: SessionDep) -> LotDetail:
    """One lot's summary, its results, and its physical wafers each with its results per source."""
    found = lot_summaries(session, [name])
    if not found:
        raise NotFound(None, f"no lot {name!r}")
    wafers = list_wafers(session, WaferFilter(lot=name), limit=10_000)
    return LotDetail(**lot_out(found[0]).model_dump(), wafer_list=[wafer_summary(w) for w in wafers],
                     physical_wafers=lot_wafer_list(session, name))
