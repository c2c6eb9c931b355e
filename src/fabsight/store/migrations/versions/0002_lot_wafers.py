"""Physical wafers and result sources: a lot holds wafers, a wafer holds results per source.

Before this revision every uploaded map was a "wafer" of its lot, so the KLARF, STDF and
G85 of lot A103 made a lot of 12 "wafers" for 8 physical ones, and the lot yield averaged
inspection with sort. This adds ``lot_wafers`` (one row per physical wafer of a lot) and
gives every result row its physical wafer (``lot_wafer_pk``), its source kind (``kind``:
inspection, sort or map, from the stored format) and its inspection step (``step``; rows
stored before this revision did not keep the step, so theirs is empty).

Existing rows are grouped with :func:`fabsight.types.wafer_key`, the function new uploads
use, so an upgraded store and a fresh one group the same files the same way.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07 23:30:00
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from fabsight.types import source_kind, wafer_key

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _backfill(conn: sa.Connection) -> None:
    """One ``lot_wafers`` row per (lot, wafer key) of the stored results, and each result linked to it."""
    rows = conn.execute(sa.text(
        "SELECT w.id, w.wafer_id, w.format, w.lot_pk, l.name FROM wafers w JOIN lots l ON l.id = w.lot_pk"
    )).all()
    now = datetime.now(UTC).replace(tzinfo=None)
    physical: dict[tuple[int, str], int] = {}
    for wid, wafer_id, fmt, lot_pk, lot_name in rows:
        key = (lot_pk, wafer_key(wafer_id, lot_name))
        if key not in physical:
            conn.execute(sa.text("INSERT INTO lot_wafers (lot_pk, wafer_id, created_at) VALUES (:l, :w, :t)"),
                         {"l": lot_pk, "w": key[1], "t": now})
            physical[key] = conn.execute(sa.text("SELECT id FROM lot_wafers WHERE lot_pk = :l AND wafer_id = :w"),
                                         {"l": lot_pk, "w": key[1]}).scalar_one()
        conn.execute(sa.text("UPDATE wafers SET lot_wafer_pk = :p, kind = :k, step = '' WHERE id = :i"),
                     {"p": physical[key], "k": source_kind(fmt), "i": wid})


def upgrade() -> None:
    op.create_table(
        "lot_wafers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("lot_pk", sa.Integer(), nullable=False),
        sa.Column("wafer_id", sa.String(length=100), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["lot_pk"], ["lots.id"], name="fk_lot_wafers_lot"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("lot_pk", "wafer_id", name="uq_lot_wafers_wafer"),
    )
    with op.batch_alter_table("wafers") as batch:
        batch.add_column(sa.Column("lot_wafer_pk", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("kind", sa.String(length=20), nullable=True))
        batch.add_column(sa.Column("step", sa.String(length=100), nullable=True))
    _backfill(op.get_bind())
    with op.batch_alter_table("wafers") as batch:
        batch.alter_column("lot_wafer_pk", existing_type=sa.Integer(), nullable=False)
        batch.alter_column("kind", existing_type=sa.String(length=20), nullable=False)
        batch.alter_column("step", existing_type=sa.String(length=100), nullable=False)
        batch.create_foreign_key("fk_wafers_lot_wafer", "lot_wafers", ["lot_wafer_pk"], ["id"])
        batch.create_index("ix_wafers_lot_wafer", ["lot_wafer_pk"])


def downgrade() -> None:
    with op.batch_alter_table("wafers") as batch:
        batch.drop_index("ix_wafers_lot_wafer")
        batch.drop_constraint("fk_wafers_lot_wafer", type_="foreignkey")
        batch.drop_column("step")
        batch.drop_column("kind")
        batch.drop_column("lot_wafer_pk")
    op.drop_table("lot_wafers")
