"""The web dashboard: server-rendered Jinja2 pages over the same queries as the API.

Pages: lots with trend charts and an upload form (``/``), one lot's wafers with their inspection
and sort results side by side (``/lots/{name}``), a wafer gallery with filters
(``/wafers``), one wafer with prediction, explanation, clusters, Q&A and die-image results
(``/wafers/{id}``), the review queue with keyboard shortcuts (``/review``) and die-image
results with heat-maps and boxes (``/die-images``). The little
interactivity there is (upload, ask, review decisions) is plain JavaScript calling the REST
API, so there is no front-end build.
"""

from __future__ import annotations

from typing import Annotated, Any

import jinja2
from fastapi import APIRouter, Depends, Form, Query, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from fabsight.serve.auth import COOKIE, SESSION_SECONDS, safe_next, session_cookie, token_matches
from fabsight.serve.deps import ServiceDep, SessionDep, lot_wafer_list, wafer_detail, wafer_summary
from fabsight.serve.routers.wafers import wafer_filter
from fabsight.serve.routers.yields import lot_page_analytics
from fabsight.serve.schemas import DieResultOut
from fabsight.store.models import REVIEW_STATES, DieResult
from fabsight.store.queries import (
    NotFound,
    WaferFilter,
    get_wafer,
    list_wafers,
    lot_summaries,
    review_queue,
)

router = APIRouter(include_in_schema=False, default_response_class=HTMLResponse)
templates = Jinja2Templates(
    env=jinja2.Environment(
        loader=jinja2.PackageLoader("fabsight.serve", "templates"), autoescape=jinja2.select_autoescape()
    )
)


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, context, status_code=status_code)


@router.get("/login")
def login_page(request: Request, next: str = "/") -> HTMLResponse:
    return _page(request, "login.html", next=safe_next(next), error=None)


@router.post("/login")
def login(
    request: Request,
    svc: ServiceDep,
    token: Annotated[str, Form(max_length=1000)] = "",
    next: Annotated[str, Form(max_length=2000)] = "/",
) -> Response:
    """Check the token and set the session cookie (HttpOnly: page scripts never see it; SameSite=Strict)."""
    if not token_matches(svc.token, token.strip()):
        return _page(request, "login.html", status.HTTP_401_UNAUTHORIZED, next=safe_next(next),
                     error="wrong access token")
    response = RedirectResponse(safe_next(next), status.HTTP_303_SEE_OTHER)
    response.set_cookie(COOKIE, session_cookie(svc.token), max_age=SESSION_SECONDS, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def logout() -> Response:
    response = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return response


@router.get("/")
def index(request: Request, session: SessionDep, svc: ServiceDep) -> HTMLResponse:
    lots = lot_summaries(session)
    return _page(request, "index.html", lots=lots, model=svc.model_name, max_mb=svc.max_upload_bytes / 2**20)


@router.get("/lots/{name}")
def lot_page(name: str, request: Request, session: SessionDep, svc: ServiceDep) -> HTMLResponse:
    """One lot: yield per source, its physical wafers each with its inspection and sort results, and its
    yield analytics (Pareto charts, stacked map, repeaters, kill ratios, commonality over its history)."""
    found = lot_summaries(session, [name])
    if not found:
        raise NotFound(None, f"no lot {name!r}")
    return _page(request, "lot.html", lot=found[0], wafers=lot_wafer_list(session, name),
                 yields=lot_page_analytics(session, svc, name))


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
