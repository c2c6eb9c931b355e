"""The web dashboard: server-rendered Jinja2 pages over the same queries as the API.

Pages: lots with trend charts and an upload form (``/``), a wafer gallery with filters
(``/wafers``), one wafer with prediction, explanation, clusters, Q&A and die-image results
(``/wafers/{id}``), the review queue with keyboard shortcuts (``/review``) and die-image
results with heat-maps and boxes (``/die-images``). The little
interactivity there is (upload, ask, review decisions) is plain JavaScript calling the REST
API, so there is no front-end build.
"""

from __future__ import annotations

from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from fabsight.serve.deps import ServiceDep, SessionDep, wafer_detail, wafer_summary
from fabsight.serve.routers.wafers import wafer_filter
from fabsight.serve.schemas import DieResultOut
from fabsight.store.models import REVIEW_STATES, DieResult
from fabsight.store.queries import WaferFilter, get_wafer, list_wafers, lot_summaries, review_queue

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.PackageLoader("fabsight.serve", "templates"), autoescape=jinja2.select_autoescape()
    )
)


def _page(request: Request, name: str, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context)


@router.get("/")
def index(request: Request, session: SessionDep, svc: ServiceDep) -> HTMLResponse:
    lots = lot_summaries(session)
    return _page(request, "index.html", lots=lots, model=svc.model_name, max_mb=svc.max_upload_bytes / 2**20)


@router.get("/wafers")
def gallery(
    request: Request,
    session: SessionDep,
    flt: Annotated[WaferFilter, Depends(wafer_filter)],
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> HTMLResponse:
    wafers = [wafer_summary(w) for w in list_wafers(session, flt, limit=limit)]
    lots = [s.name for s in lot_summaries(session)]
    return _page(request, "gallery.html", wafers=wafers, flt=flt, lots=lots, states=REVIEW_STATES, limit=limit)


@router.get("/wafers/{wafer_id}")
def wafer_page(wafer_id: int, request: Request, session: SessionDep, svc: ServiceDep) -> HTMLResponse:
    w = wafer_detail(get_wafer(session, wafer_id))
    clusters = (w.explanation.facts.get("clustering") or {}).get("clusters", []) if w.explanation else []
    return _page(request, "wafer.html", w=w, clusters=clusters, classes=svc.classes)


@router.get("/review")
def review_page(
    request: Request,
    session: SessionDep,
    svc: ServiceDep,
    state: Annotated[str, Query()] = "pending",
) -> HTMLResponse:
    items = review_queue(session, state=state, limit=500)
    rows = [(r, wafer_summary(r.wafer)) for r in items]
    return _page(request, "review.html", rows=rows, classes=svc.classes, state=state, states=REVIEW_STATES)


@router.get("/die-images")
def die_images(request: Request, session: SessionDep, svc: ServiceDep) -> HTMLResponse:
    rows = session.scalars(select(DieResult).order_by(DieResult.id.desc()).limit(200)).all()
    results = [DieResultOut.model_validate(r) for r in rows]
    model = None if svc.anomaly_model is None else svc.anomaly_model.method
    return _page(request, "dies.html", results=results, model=model)
