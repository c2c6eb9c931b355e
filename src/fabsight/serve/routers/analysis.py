"""``/api/ask`` and ``/api/drift``: questions over stored wafers and drift between two selections.

Both recompute from the stored grids with the library functions (:func:`fabsight.assist.qa.ask`,
:func:`fabsight.monitor.drift_test`), so an answer always reflects the current review
decisions.
"""

from __future__ import annotations

from fastapi import APIRouter

from fabsight.errors import FabsightError
from fabsight.serve.deps import ServiceDep, SessionDep, stored_facts
from fabsight.serve.lotdata import lot_analytics
from fabsight.serve.schemas import AskIn, AskOut, DriftIn, DriftOut, Selection
from fabsight.store.queries import WaferFilter, get_wafer, list_wafers, to_wafer_map

router = APIRouter(prefix="/api", tags=["analysis"])

#: Most wafers a question or one side of a drift test may cover (a request must stay interactive).
MAX_WAFERS = 2000


@router.post("/ask", responses={400: {"description": "neither or both of wafer and lot given"}})
def ask(body: AskIn, svc: ServiceDep, session: SessionDep) -> AskOut:
    """Answer a question about one wafer or one lot from measured facts, or refuse plainly.

    Repeaters, kill ratios, Paretos and commonality are computed from the lot's stored uploads
    (and its uploaded wafer history); a wafer question sees its own physical wafer only."""
    from fabsight.assist.qa import Lot, ask

    if (body.wafer is None) == (body.lot is None):
        raise FabsightError(None, "give exactly one of 'wafer' (an id) or 'lot' (a name)")
    if body.wafer is not None:
        wafers = [get_wafer(session, body.wafer)]
    else:
        wafers = list_wafers(session, WaferFilter(lot=body.lot), limit=MAX_WAFERS)
        if not wafers:
            raise FabsightError(None, f"no wafers in lot {body.lot!r}")
        wafers.sort(key=lambda w: (w.lot_wafer.wafer_id, w.id))  # physical wafers in order, each with its sources
    facts = [stored_facts(w) for w in wafers]
    first = wafers[0]
    analytics = lot_analytics(session, svc, first.lot.name, None if body.lot else first.lot_wafer.wafer_id)
    answer = ask(body.question, Lot(facts, svc.kb, analytics)).to_dict()
    return AskOut(**{k: answer[k] for k in AskOut.model_fields if k in answer}, wafers=len(wafers))


def _select(session: SessionDep, sel: Selection, which: str) -> list:
    flt = WaferFilter(
        lot=sel.lot,
        lots=sel.lots,
        pattern=sel.pattern,
        since=None if sel.since is None else sel.since.replace(tzinfo=None),
        until=None if sel.until is None else sel.until.replace(tzinfo=None),
        ids=sel.wafers,
    )
    wafers = list_wafers(session, flt, limit=MAX_WAFERS + 1)
    if len(wafers) > MAX_WAFERS:
        raise FabsightError(None, f"selection {which} has more than {MAX_WAFERS} wafers; narrow it")
    return [to_wafer_map(w) for w in wafers]


@router.post("/drift")
def drift(body: DriftIn, svc: ServiceDep, session: SessionDep) -> DriftOut:
    """Sliced-Wasserstein permutation test between selections ``a`` and ``b`` of stored wafers."""
    from fabsight.monitor import drift_test, extract_features

    a, b = _select(session, body.a, "a"), _select(session, body.b, "b")
    if len(a) < 2 or len(b) < 2:
        raise FabsightError(None, f"a drift test needs at least 2 wafers per selection, got {len(a)} and {len(b)}")
    fa = extract_features(a, model=svc.classifier)
    fb = extract_features(b, model=svc.classifier)
    result = drift_test(fa, fb, n_permutations=body.n_permutations, seed=body.seed, alpha=body.alpha).to_dict()
    return DriftOut(**{k: result[k] for k in DriftOut.model_fields})
