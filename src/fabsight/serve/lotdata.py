"""A stored lot's maps read again from its uploads, for the yield analytics of the API and dashboard.

The store keeps die grids, not defect lists or sort bins; the uploaded files themselves are
kept (immutable, under the service's files folder), so the lot's KLARF defects and STDF/G85
bins are read again from them, in the capped worker like any upload, and only the maps whose
result rows are in the lot are kept. Reads are cached per stored file (a file never changes).
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from pathlib import Path

from sqlalchemy.orm import Session

from fabsight.analytics.lot import LotAnalytics
from fabsight.serve.state import Service
from fabsight.store.history import lot_history
from fabsight.store.models import Wafer
from fabsight.store.queries import NotFound, WaferFilter, list_wafers
from fabsight.types import WaferMap, wafer_key

#: Stored files whose maps are kept in memory (a lot page reads each of its files once).
CACHED_FILES = 32
#: Most results one lot's analytics reads (as many as the lot page lists).
MAX_RESULTS = 10_000

_cache: OrderedDict[tuple[str, str], list[WaferMap]] = OrderedDict()
_lock = threading.Lock()


def _read(svc: Service, path: Path, fmt: str) -> list[WaferMap]:
    key = (str(path), fmt)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    if not path.is_file():
        raise NotFound(path.name, "the stored upload is missing from the files folder")
    _, maps = svc.wafer_reader()(path, (fmt,))
    with _lock:
        _cache[key] = maps
        while len(_cache) > CACHED_FILES:
            _cache.popitem(last=False)
    return maps


def stored_maps(svc: Service, lot: str, results: list[Wafer]) -> list[WaferMap]:
    """The maps behind ``results`` (rows of ``lot``), read from their uploads, with the lot's name."""
    wanted: dict[int, set[str]] = {}
    for w in results:
        wanted.setdefault(w.upload_id, set()).add(w.wafer_id)
    uploads = {w.upload_id: w.upload for w in results}
    out: list[WaferMap] = []
    for upload_id in sorted(wanted):  # oldest upload first: of one wafer and source the newest result wins
        up, ids = uploads[upload_id], wanted[upload_id]
        for m in _read(svc, svc.files_dir / up.path, up.format):
            if str(m.wafer_id) in ids and m.lot_id in ("", lot):
                m = copy.copy(m)
                m.lot_id, m.source = lot, up.filename
                out.append(m)
    return out


def lot_analytics(session: Session, svc: Service, lot: str, wafer: str | None = None) -> LotAnalytics:
    """The analytics of stored ``lot`` (or of one physical ``wafer`` of it), with its history when one
    was uploaded; NotFound for a lot without results."""
    results = list_wafers(session, WaferFilter(lot=lot), limit=MAX_RESULTS)
    if not results:
        raise NotFound(None, f"no lot {lot!r}")
    if wafer is not None:
        results = [w for w in results if w.lot_wafer.wafer_id == wafer_key(wafer, lot)]
    results.sort(key=lambda w: (w.lot_wafer.wafer_id, w.id))
    history = lot_history(session, lot)
    return LotAnalytics(stored_maps(svc, lot, results), None if history is None else history[1],
                        None if history is None else history[0].filename)
