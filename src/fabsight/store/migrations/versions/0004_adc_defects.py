"""ADC of uploaded KLARF lots: one ``adc_lots`` row per uploaded KLARF-with-images archive and
one ``adc_defects`` row per KLARF defect, with the model's class and its review state.

Nothing stored before this revision had review images, so there is nothing to backfill.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-08 00:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "adc_lots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("upload_id", sa.Integer(), nullable=False),
        sa.Column("folder", sa.String(length=200), nullable=False),
        sa.Column("klarf", sa.String(length=500), nullable=False),
        sa.Column("classified", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("class_numbers", sa.JSON(), nullable=False),
        sa.Column("review_code", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["upload_id"], ["uploads.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("upload_id"),
    )
    op.create_table(
        "adc_defects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("adc_lot_pk", sa.Integer(), nullable=False),
        sa.Column("wafer_pk", sa.Integer(), nullable=True),
        sa.Column("wafer_id", sa.String(length=100), nullable=False),
        sa.Column("defect_id", sa.Integer(), nullable=False),
        sa.Column("original_class", sa.Integer(), nullable=True),
        sa.Column("predicted", sa.String(length=100), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("reason", sa.String(length=100), nullable=False),
        sa.Column("image", sa.String(length=500), nullable=True),
        sa.Column("page", sa.Integer(), nullable=False),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=True),
        sa.Column("reviewer", sa.String(length=100), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["adc_lot_pk"], ["adc_lots.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["wafer_pk"], ["wafers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("adc_lot_pk", "wafer_id", "defect_id", name="uq_adc_defects_defect"),
    )
    with op.batch_alter_table("adc_defects", schema=None) as batch_op:
        batch_op.create_index("ix_adc_defects_state", ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_adc_defects_adc_lot_pk"), ["adc_lot_pk"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("adc_defects", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_adc_defects_adc_lot_pk"))
        batch_op.drop_index("ix_adc_defects_state")
    op.drop_table("adc_defects")
    op.drop_table("adc_lots")
