"""Small FastAPI dependencies and the store-row → response conversions every router shares."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from fabsight.serve.schemas import LotWaferOut, WaferDetail, WaferSummary
from fabsight.serve.state import Service
from fabsight.store.models import Wafer
from fabsight.store.queries import current_label, lot_wafers


def service(request: Request) -> Service:
    return request.app.state.service


def session(svc: Annotated[Service, Depends(service)]) -> Iterator[Session]:
    with svc.store.session() as s:
        yield s


ServiceDep = Annotated[Service, Depends(service)]
SessionDep = Annotated[Session, Depends(session)]


def wafer_summary(w: Wafer) -> WaferSummary:
    return WaferSummary(
        id=w.id,
        lot=w.lot.name,
        wafer_id=w.wafer_id,
        physical_wafer=w.lot_wafer.wafer_id,
        source=w.source,
        format=w.format,
        measured_by=w.source_label,
        measured_at=w.measured_at,
        shape=(w.rows, w.cols),
        good=w.n_good,
        failing=w.n_fail,
        yield_=w.yield_,
        label=current_label(w),
        probability=None if w.prediction is None else w.prediction.probability,
        review=None if w.review is None else w.review.state,
        upload=w.upload_id,
    )


def lot_wafer_list(session: Session, lot: str) -> list[LotWaferOut]:
    """The lot's physical wafers in id order, each with its results (one per source and file)."""
    return [LotWaferOut(wafer_id=lw.wafer_id, results=[wafer_summary(w) for w in lw.results])
            for lw in lot_wafers(session, lot)]


def wafer_detail(w: Wafer) -> WaferDetail:
    return WaferDetail(
        **wafer_summary(w).model_dump(),
        timestamp=w.timestamp,
        notch=w.notch,
        labels=list(w.labels or []),
        prediction=w.prediction,
        explanation=w.explanation,
        review_item=w.review,
        die_results=list(w.die_results),
    )


def stored_facts(w: Wafer) -> Any:
    """The assist facts of a stored result, measured again from its grid (so they follow review decisions).

    The grid keeps no defect list, so the defect facts (count, sizes, classes) measured when the
    KLARF was uploaded are taken from the stored explanation.
    """
    from fabsight.assist.facts import DefectFacts, wafer_facts
    from fabsight.store.queries import to_wafer_map

    facts = wafer_facts(to_wafer_map(w), facts_prediction(w))
    stored = None if w.explanation is None else (w.explanation.facts or {}).get("defects")
    if stored:
        facts.defects = DefectFacts(**stored)
    return facts


def facts_prediction(w: Wafer) -> dict[str, Any] | None:
    """The prediction record the assist facts should use: a person's decision overrides the model."""
    p = None if w.prediction is None else w.prediction.details()
    if w.review is not None and w.review.state in ("accepted", "corrected") and w.review.label:
        top3 = p["top3"] if p else []
        return {"label": w.review.label, "probability": 1.0, "top3": top3, "needs_review": False,
                "review_reason": None, "ood_score": None if p is None else p["ood_score"]}
    return p
