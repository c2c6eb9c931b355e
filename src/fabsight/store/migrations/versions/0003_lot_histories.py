"""Wafer histories per lot: the CSV a user uploads for commonality (which tool, chamber, slot or
time window the lot's flagged wafers share).

One row per lot (``lot_histories.lot_pk`` is unique; a new upload replaces the old one): the
CSV's bytes, the columns it was checked with and its row count. The bytes live in the
database rather than the files folder so a history and its lot are written in one
transaction.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-08 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lot_histories",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("lot_pk", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=300), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("columns", sa.JSON(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["lot_pk"], ["lots.id"], name="fk_lot_histories_lot"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("lot_pk"),
    )


def downgrade() -> None:
    op.drop_table("lot_histories")
