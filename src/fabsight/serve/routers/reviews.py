"""``/api/reviews``: the review queue, and a person's accept / correct decisions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from fabsight.serve.deps import ServiceDep, SessionDep
from fabsight.serve.schemas import ReviewCorrection, ReviewDecision, ReviewOut
from fabsight.store.queries import decide_review, review_queue

router = APIRouter(
    prefix="/api/reviews",
    tags=["reviews"],
    responses={404: {"description": "no such review item"}, 409: {"description": "already decided"}},
)


@router.get("")
def queue(
    session: SessionDep,
    state: Annotated[str, Query(description="pending, auto, accepted or corrected")] = "pending",
    limit: Annotated[int, Query(ge=1, le=1000)] = 200,
) -> list[ReviewOut]:
    """Review items in ``state``, the ones the model is least sure about first."""
    return [ReviewOut.model_validate(r) for r in review_queue(session, state=state, limit=limit)]


@router.post("/{review_id}/accept")
def accept(review_id: int, svc: ServiceDep, body: ReviewDecision | None = None) -> ReviewOut:
    """The model's label is right."""
    return ReviewOut.model_validate(decide_review(svc.store, review_id, reviewer=body.reviewer if body else None))


@router.post("/{review_id}/correct")
def correct(review_id: int, body: ReviewCorrection, svc: ServiceDep) -> ReviewOut:
    """The right label is ``label`` (state ``accepted`` if it equals the prediction, else ``corrected``)."""
    return ReviewOut.model_validate(decide_review(svc.store, review_id, label=body.label, reviewer=body.reviewer))
