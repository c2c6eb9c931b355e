"""``/api/wafers``: list and filter stored wafers, one wafer in full, its pictures."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response

from fabsight.serve.deps import SessionDep, wafer_detail, wafer_summary
from fabsight.serve.pictures import clusters_png, thumbnail_png
from fabsight.serve.schemas import WaferDetail, WaferSummary
from fabsight.store.queries import WaferFilter, get_wafer, list_wafers, to_wafer_map

router = APIRouter(prefix="/api/wafers", tags=["wafers"], responses={404: {"description": "no such wafer"}})

_PNG = {"content": {"image/png": {}}, "description": "PNG picture"}


def wafer_filter(
    lot: Annotated[str | None, Query(description="lot name")] = None,
    pattern: Annotated[str | None, Query(description="current label (reviewed, else predicted)")] = None,
    review: Annotated[str | None, Query(description="pending, auto, accepted or corrected")] = None,
    since: Annotated[datetime | None, Query(description="measured at or after (ISO 8601, UTC)")] = None,
    until: Annotated[datetime | None, Query(description="measured at or before (ISO 8601, UTC)")] = None,
    upload: Annotated[int | None, Query(description="upload id")] = None,
) -> WaferFilter:
    """The filter of the query string; empty values (an HTML form's "all") match everything."""
    naive = [None if t is None else t.replace(tzinfo=None) for t in (since, until)]
    return WaferFilter(
        lot=lot or None, pattern=pattern or None, review=review or None, since=naive[0], until=naive[1], upload=upload
    )


@router.get("")
def list_(
    session: SessionDep,
    flt: Annotated[WaferFilter, Depends(wafer_filter)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> list[WaferSummary]:
    """Wafers matching every given filter, newest measurement first."""
    return [wafer_summary(w) for w in list_wafers(session, flt, limit=limit, offset=offset)]


@router.get("/{wafer_id}")
def get(wafer_id: int, session: SessionDep) -> WaferDetail:
    """A wafer with its prediction, explanation (text, facts, root causes), review item and die-image results."""
    return wafer_detail(get_wafer(session, wafer_id))


@router.get("/{wafer_id}/map.png", response_class=Response, responses={200: _PNG})
def map_png(wafer_id: int, session: SessionDep, size: Annotated[int, Query(ge=16, le=1024)] = 160) -> Response:
    """The die grid as a square picture (blank off-wafer, light good dies, red failing dies)."""
    w = get_wafer(session, wafer_id)
    return Response(thumbnail_png(w.grid, size), media_type="image/png", headers={"Cache-Control": "max-age=3600"})


@router.get("/{wafer_id}/clusters.png", response_class=Response, responses={200: _PNG})
def clusters(wafer_id: int, session: SessionDep) -> Response:
    """The wafer with its spatial clusters of failing dies outlined and numbered."""
    w = get_wafer(session, wafer_id)
    return Response(clusters_png(to_wafer_map(w)), media_type="image/png", headers={"Cache-Control": "max-age=3600"})
