"""Wafer histories of lots: the CSV behind commonality, checked when stored and read back as rows.

A history is checked with :func:`fabsight.analytics.commonality.read_history` before it is
stored (a CSV without the named columns is refused naming the file), and kept with the
columns it was checked with, so every later read sees the same rows.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from fabsight.analytics.commonality import HistoryRow, read_history
from fabsight.errors import FabsightError
from fabsight.io._common import safe_name
from fabsight.store.db import Store
from fabsight.store.models import Lot, LotHistory, utcnow
from fabsight.store.queries import NotFound

#: Largest history CSV kept (a year of a fab's wafer moves for one lot is far smaller).
MAX_HISTORY_BYTES = 20 * 2**20


def parse_history(data: bytes, filename: str, columns: Mapping[str, str]) -> list[HistoryRow]:
    """The history rows of a CSV's bytes; ``columns`` names the user's columns (others keep their
    field names). Errors name ``filename``, not the scratch copy."""
    if len(data) > MAX_HISTORY_BYTES:
        raise FabsightError(filename, f"history of {len(data)} bytes; the limit is {MAX_HISTORY_BYTES}")
    with tempfile.TemporaryDirectory(prefix="fabsight-history-") as scratch:
        path = Path(scratch) / safe_name(Path(filename).name, "history.csv")
        path.write_bytes(data)
        try:
            return read_history(path, dict(columns), list(columns))
        except FabsightError as exc:
            raise FabsightError(filename, exc.message) from None


def save_history(store: Store, lot: str, data: bytes, filename: str, columns: Mapping[str, str]) -> LotHistory:
    """Check and store the history of ``lot`` (replacing any earlier one); NotFound for an unknown lot."""
    rows = parse_history(data, filename, columns)
    with store.write() as s:
        lot_row = s.scalar(select(Lot).where(Lot.name == lot))
        if lot_row is None:
            raise NotFound(None, f"no lot {lot!r}")
        found = s.scalar(select(LotHistory).where(LotHistory.lot_pk == lot_row.id))
        if found is not None:
            s.delete(found)
            s.flush()
        row = LotHistory(lot_pk=lot_row.id, filename=filename[:300], data=data, columns=dict(columns),
                         rows=len(rows), created_at=utcnow())
        s.add(row)
        s.flush()
        s.expunge(row)
    return row


def lot_history(session: Session, lot: str) -> tuple[LotHistory, list[HistoryRow]] | None:
    """The stored history of ``lot`` with its rows, or None when none was uploaded."""
    row = session.scalar(select(LotHistory).join(Lot).where(Lot.name == lot))
    if row is None:
        return None
    return row, parse_history(row.data, row.filename, row.columns)
