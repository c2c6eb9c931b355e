"""``/api/lots``: per-lot summaries (yield, pattern mix, open reviews) and the trend chart."""

from __future__ import annotations

from fastapi import APIRouter, Response

from fabsight.serve.deps import SessionDep, wafer_summary
from fabsight.serve.pictures import lot_trend_png
from fabsight.serve.schemas import LotDetail, LotOut
from fabsight.store.queries import NotFound, WaferFilter, list_wafers, lot_summaries

router = APIRouter(prefix="/api/lots", tags=["lots"])


@router.get("")
def list_(session: SessionDep) -> list[LotOut]:
    """Every lot, oldest first."""
    return [LotOut(**vars(s)) for s in lot_summaries(session)]


@router.get("/trend.png", response_class=Response, responses={200: {"content": {"image/png": {}}}})
def trend(session: SessionDep) -> Response:
    """Mean yield and pattern mix per lot, oldest lot on the left."""
    return Response(lot_trend_png(lot_summaries(session)), media_type="image/png")


@router.get("/{name}", responses={404: {"description": "no such lot"}})
def get(name: str, session: SessionDep) -> LotDetail:
    """One lot's summary and its wafers."""
    found = lot_summaries(session, [name])
    if not found:
        raise NotFound(None, f"no lot {name!r}")
    wafers = list_wafers(session, WaferFilter(lot=name), limit=10_000)
    return LotDetail(**vars(found[0]), wafer_list=[wafer_summary(w) for w in wafers])
