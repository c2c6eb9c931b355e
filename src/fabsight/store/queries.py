"""Reading the store and the few writes a person makes (review decisions, die-image results).

The REST service, the dashboard and the demo all go through these functions, so a filter
means the same thing everywhere.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, joinedload, selectinload

from fabsight.errors import FabsightError
from fabsight.io._common import safe_name
from fabsight.store.db import Store
from fabsight.store.models import (
    OPEN_STATES,
    REVIEW_STATES,
    DieResult,
    Lot,
    LotWafer,
    Prediction,
    Review,
    Upload,
    Wafer,
    utcnow,
)
from fabsight.types import WaferMap


class NotFound(FabsightError):
    """A wafer, lot, upload or review item that is not in the store."""


class Conflict(FabsightError):
    """A request that contradicts the store's current state (e.g. deciding a decided review)."""


@dataclass
class WaferFilter:
    """Which wafers to list; every field left ``None`` matches everything."""

    lot: str | None = None
    lots: Sequence[str] | None = None
    pattern: str | None = None
    review: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    upload: int | None = None
    ids: Sequence[int] | None = None

    def check(self) -> None:
        if self.review is not None and self.review not in REVIEW_STATES:
            raise FabsightError(None, f"review state must be one of {', '.join(REVIEW_STATES)}, got {self.review!r}")
        if self.since and self.until and self.since > self.until:
            raise FabsightError(None, "'since' is later than 'until'")


def current_label(wafer: Wafer) -> str | None:
    """The wafer's current label: a person's decision beats the model's prediction."""
    if wafer.review is not None and wafer.review.label:
        return wafer.review.label
    return wafer.prediction.label if wafer.prediction is not None else None


def list_wafers(
    session: Session, flt: WaferFilter, *, limit: int | None = 200, offset: int = 0, newest_first: bool = True
) -> list[Wafer]:
    """Wafers matching ``flt``, newest measurement first (else in storage order), with lot, prediction
    and review loaded.

    ``pattern`` matches the current label (the reviewed one, else the prediction), case-insensitively.
    """
    flt.check()
    q = (
        select(Wafer)
        .join(Wafer.lot)
        .outerjoin(Wafer.prediction)
        .outerjoin(Wafer.review)
        .options(joinedload(Wafer.lot), joinedload(Wafer.lot_wafer), joinedload(Wafer.prediction),
                 joinedload(Wafer.review))
    )
    if flt.lot is not None:
        q = q.where(Lot.name == flt.lot)
    if flt.lots is not None:
        q = q.where(Lot.name.in_(list(flt.lots)))
    if flt.pattern is not None:
        current = func.coalesce(Review.label, Prediction.label)
        q = q.where(func.lower(current) == flt.pattern.lower())
    if flt.review is not None:
        q = q.where(Review.state == flt.review)
    if flt.since is not None:
        q = q.where(Wafer.measured_at >= flt.since)
    if flt.until is not None:
        q = q.where(Wafer.measured_at <= flt.until)
    if flt.upload is not None:
        q = q.where(Wafer.upload_id == flt.upload)
    if flt.ids is not None:
        q = q.where(Wafer.id.in_(list(flt.ids)))
    q = q.order_by(Wafer.measured_at.desc(), Wafer.id) if newest_first else q.order_by(Wafer.id)
    q = q.limit(limit).offset(offset)
    return list(session.scalars(q).unique())


def get_wafer(session: Session, wafer_pk: int) -> Wafer:
    q = (
        select(Wafer)
        .where(Wafer.id == wafer_pk)
        .options(
            joinedload(Wafer.lot),
            joinedload(Wafer.lot_wafer),
            joinedload(Wafer.upload),
            joinedload(Wafer.prediction),
            joinedload(Wafer.explanation),
            joinedload(Wafer.review),
            selectinload(Wafer.die_results),
        )
    )
    wafer = session.scalar(q)
    if wafer is None:
        raise NotFound(None, f"no wafer {wafer_pk}")
    return wafer


def get_upload(session: Session, upload_id: int) -> Upload:
    up = session.get(Upload, upload_id)
    if up is None:
        raise NotFound(None, f"no upload {upload_id}")
    return up


def to_wafer_map(wafer: Wafer) -> WaferMap:
    """The stored wafer as a :class:`WaferMap` again (grid, ids, provenance)."""
    return WaferMap(
        wafer.grid,
        lot_id=wafer.lot.name,
        wafer_id=wafer.wafer_id,
        source=wafer.source,
        format=wafer.format,
        notch=wafer.notch,
        timestamp=wafer.timestamp,
        labels=tuple(wafer.labels or ()),
        extras={"step_id": wafer.step} if wafer.step else {},
    )


@dataclass
class SourceSummary:
    """One source of a lot (an inspection step, or sort): its own wafers, yield and pattern mix.

    A wafer measured twice by one source (the STDF and the G85 of one sort) counts once, with
    its latest result, so ``mean_yield`` is a mean over physical wafers.
    """

    source: str
    wafers: int
    results: int
    mean_yield: float | None
    patterns: dict[str, int] = field(default_factory=dict)


@dataclass
class LotSummary:
    """A lot: its physical wafers, its results, and per source its own yield (never mixed)."""

    name: str
    wafers: int
    results: int
    sources: list[SourceSummary]
    first: datetime | None
    last: datetime | None
    patterns: dict[str, int] = field(default_factory=dict)
    pending_reviews: int = 0


def latest_per_wafer(results: Sequence[Wafer]) -> list[Wafer]:
    """One result per physical wafer: the latest measured (then stored) one, in physical-wafer order."""
    best: dict[int, Wafer] = {}
    for w in results:
        cur = best.get(w.lot_wafer_pk)
        if cur is None or (w.measured_at, w.id) > (cur.measured_at, cur.id):
            best[w.lot_wafer_pk] = w
    return [best[k] for k in sorted(best)]


#: Sources are listed in process order: inspection steps, then sort, then maps of unknown origin.
_KIND_ORDER = {"inspection": 0, "sort": 1, "map": 2}


def source_summaries(results: Sequence[Wafer]) -> list[SourceSummary]:
    """Per source (inspection steps first, then sort, then other maps): wafers, results, mean yield, patterns."""
    by_source: dict[str, list[Wafer]] = {}
    for w in results:
        by_source.setdefault(w.source_label, []).append(w)
    out = []
    for source, rows in sorted(by_source.items(), key=lambda kv: (_KIND_ORDER.get(kv[1][0].kind, 9), kv[0])):
        once = latest_per_wafer(rows)
        yields = [w.yield_ for w in once if w.yield_ is not None]
        mix = Counter(current_label(w) or "unclassified" for w in once)
        out.append(SourceSummary(source, len(once), len(rows), sum(yields) / len(yields) if yields else None,
                                 dict(mix.most_common())))
    return out


def lot_summaries(session: Session, names: Sequence[str] | None = None) -> list[LotSummary]:
    """Per lot: physical wafers, results, yield and pattern mix per source, time span and open reviews;
    oldest lot first. The lot's ``patterns`` count every result (one per wafer and source)."""
    q = select(Wafer).options(joinedload(Wafer.lot), joinedload(Wafer.prediction), joinedload(Wafer.review))
    if names is not None:
        q = q.join(Wafer.lot).where(Lot.name.in_(list(names)))
    by_lot: dict[str, list[Wafer]] = {}
    for w in session.scalars(q).unique():
        by_lot.setdefault(w.lot.name, []).append(w)
    out = []
    for name, ws in by_lot.items():
        times = [w.measured_at for w in ws]
        mix = Counter(current_label(w) or "unclassified" for w in ws)
        out.append(
            LotSummary(
                name=name,
                wafers=len({w.lot_wafer_pk for w in ws}),
                results=len(ws),
                sources=source_summaries(ws),
                first=min(times),
                last=max(times),
                patterns=dict(mix.most_common()),
                pending_reviews=sum(1 for w in ws if w.review is not None and w.review.state == "pending"),
            )
        )
    out.sort(key=lambda s: (s.first or datetime.min, s.name))
    return out


def lot_wafers(session: Session, name: str) -> list[LotWafer]:
    """The physical wafers of lot ``name`` in wafer-id order, each with its results (sources) loaded."""
    q = (
        select(LotWafer)
        .join(LotWafer.lot)
        .where(Lot.name == name)
        .options(
            selectinload(LotWafer.results).joinedload(Wafer.prediction),
            selectinload(LotWafer.results).joinedload(Wafer.review),
            selectinload(LotWafer.results).joinedload(Wafer.lot),
            selectinload(LotWafer.results).joinedload(Wafer.lot_wafer),
        )
        .order_by(LotWafer.wafer_id)
    )
    return list(session.scalars(q))


def review_queue(session: Session, *, state: str = "pending", limit: int = 200) -> list[Review]:
    """Review items in ``state``, most doubtful first."""
    if state not in REVIEW_STATES:
        raise FabsightError(None, f"review state must be one of {', '.join(REVIEW_STATES)}, got {state!r}")
    q = (
        select(Review)
        .where(Review.state == state)
        .options(
            joinedload(Review.wafer).joinedload(Wafer.lot),
            joinedload(Review.wafer).joinedload(Wafer.lot_wafer),
            joinedload(Review.wafer).joinedload(Wafer.prediction),
        )
        .order_by(Review.priority.desc(), Review.id)
        .limit(limit)
    )
    return list(session.scalars(q))


def clean_label(label: str) -> str:
    """A reviewer's class name, stripped; refused unless it can name a training folder (letters, digits, . _ + -)."""
    label = label.strip()
    if not label or len(label) > 100 or safe_name(label, "") != label:
        raise FabsightError(None, f"label {label!r} is not a usable class name (letters, digits, . _ + -)")
    return label


def decide_review(store: Store, review_id: int, *, label: str | None = None, reviewer: str | None = None) -> Review:
    """Accept the model's label (``label=None``) or correct it; the same rules as :mod:`fabsight.labeling`.

    Only an open item (``pending`` or ``auto``) can be decided, and the check and the update
    are one conditional UPDATE, so two reviewers clicking at once cannot both win.
    """
    with store.write() as s:
        review = s.get(Review, review_id)
        if review is None:
            raise NotFound(None, f"no review item {review_id}")
        if label is None:
            if not review.predicted:
                raise Conflict(None, f"review item {review_id} has no prediction to accept; correct it with a label")
            label, state = review.predicted, "accepted"
        else:
            label = clean_label(label)
            state = "accepted" if label == review.predicted else "corrected"
        done = s.execute(
            update(Review)
            .where(Review.id == review_id, Review.state.in_(OPEN_STATES))
            .values(state=state, label=label, reviewer=(reviewer or "")[:100] or None, decided_at=utcnow())
        )
        if done.rowcount != 1:
            raise Conflict(None, f"review item {review_id} is already decided ({review.state})")
    with store.session() as s:
        return s.scalars(
            select(Review).where(Review.id == review_id).options(joinedload(Review.wafer).joinedload(Wafer.lot))
        ).one()


def add_die_results(store: Store, upload_id: int, results: Sequence[dict[str, Any]]) -> list[int]:
    """Store die-image results of an upload in one transaction.

    Each result: ``image`` (name), ``label``, ``score``, ``boxes`` (``[x0, y0, x1, y1, label, score]``
    lists), ``heatmap_path`` (a file in the files folder) and optionally ``wafer`` (a stored wafer id).
    """
    with store.write() as s:
        get_upload(s, upload_id)
        rows = []
        for r in results:
            if not r.get("image"):
                raise FabsightError(None, "a die-image result needs the image name")
            if r.get("wafer") is not None and s.get(Wafer, int(r["wafer"])) is None:
                raise NotFound(None, f"no wafer {r['wafer']}")
            row = DieResult(
                upload_id=upload_id,
                wafer_pk=r.get("wafer"),
                image=str(r["image"])[:300],
                label=r.get("label"),
                score=r.get("score"),
                boxes=list(r.get("boxes") or []),
                heatmap_path=r.get("heatmap_path"),
                created_at=utcnow(),
            )
            s.add(row)
            rows.append(row)
        s.flush()
        return [r.id for r in rows]


def counts(session: Session) -> dict[str, int]:
    """Rows per table: what /api/health reports and tests check for "nothing stored"."""
    tables = {"uploads": Upload, "lots": Lot, "wafers": Wafer, "reviews": Review, "die_results": DieResult}
    return {name: int(session.scalar(select(func.count()).select_from(t)) or 0) for name, t in tables.items()}
