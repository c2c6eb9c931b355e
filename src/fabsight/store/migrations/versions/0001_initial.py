"""Initial schema: lots, uploads, wafers, predictions, explanations, reviews, die-image results.

Revision ID: 0001
Revises: (none)
Create Date: 2026-11-22 11:12:40.796203
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lots",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name"),
    )
    op.create_table(
        "uploads",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("filename", sa.String(length=300), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("content_type", sa.String(length=120), nullable=False),
        sa.Column("format", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("path", sa.String(length=500), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sha256"),
    )
    op.create_table(
        "wafers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("upload_id", sa.Integer(), nullable=False),
        sa.Column("lot_pk", sa.Integer(), nullable=False),
        sa.Column("wafer_id", sa.String(length=100), nullable=False),
        sa.Column("source", sa.String(length=300), nullable=False),
        sa.Column("format", sa.String(length=20), nullable=False),
        sa.Column("timestamp", sa.DateTime(), nullable=True),
        sa.Column("measured_at", sa.DateTime(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("cols", sa.Integer(), nullable=False),
        sa.Column("grid_blob", sa.LargeBinary(), nullable=False),
        sa.Column("notch", sa.String(length=8), nullable=False),
        sa.Column("n_good", sa.Integer(), nullable=False),
        sa.Column("n_fail", sa.Integer(), nullable=False),
        sa.Column("yield", sa.Float(), nullable=True),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["lot_pk"],
            ["lots.id"],
        ),
        sa.ForeignKeyConstraint(["upload_id"], ["uploads.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("wafers", schema=None) as batch_op:
        batch_op.create_index("ix_wafers_lot", ["lot_pk"], unique=False)
        batch_op.create_index("ix_wafers_measured", ["measured_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_wafers_upload_id"), ["upload_id"], unique=False)

    op.create_table(
        "die_results",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("upload_id", sa.Integer(), nullable=False),
        sa.Column("wafer_pk", sa.Integer(), nullable=True),
        sa.Column("image", sa.String(length=300), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("boxes", sa.JSON(), nullable=False),
        sa.Column("heatmap_path", sa.String(length=500), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["upload_id"], ["uploads.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["wafer_pk"], ["wafers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("upload_id", "image", name="uq_die_results_image"),
    )
    with op.batch_alter_table("die_results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_die_results_upload_id"), ["upload_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_die_results_wafer_pk"), ["wafer_pk"], unique=False)

    op.create_table(
        "explanations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("wafer_pk", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("facts", sa.JSON(), nullable=False),
        sa.Column("root_causes", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["wafer_pk"], ["wafers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("wafer_pk"),
    )
    op.create_table(
        "predictions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("wafer_pk", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("label", sa.String(length=100), nullable=False),
        sa.Column("probability", sa.Float(), nullable=False),
        sa.Column("top3", sa.JSON(), nullable=False),
        sa.Column("needs_review", sa.Boolean(), nullable=False),
        sa.Column("review_reason", sa.Text(), nullable=True),
        sa.Column("ood_score", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(["wafer_pk"], ["wafers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("wafer_pk"),
    )
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.create_index("ix_predictions_label", ["label"], unique=False)

    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("wafer_pk", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("predicted", sa.String(length=100), nullable=True),
        sa.Column("label", sa.String(length=100), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("reviewer", sa.String(length=100), nullable=True),
        sa.Column("decided_at", sa.DateTime(), nullable=True),
        sa.Column("priority", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["wafer_pk"], ["wafers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("wafer_pk"),
    )
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.create_index("ix_reviews_state", ["state"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_index("ix_reviews_state")

    op.drop_table("reviews")
    with op.batch_alter_table("predictions", schema=None) as batch_op:
        batch_op.drop_index("ix_predictions_label")

    op.drop_table("predictions")
    op.drop_table("explanations")
    with op.batch_alter_table("die_results", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_die_results_wafer_pk"))
        batch_op.drop_index(batch_op.f("ix_die_results_upload_id"))

    op.drop_table("die_results")
    with op.batch_alter_table("wafers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_wafers_upload_id"))
        batch_op.drop_index("ix_wafers_measured")
        batch_op.drop_index("ix_wafers_lot")

    op.drop_table("wafers")
    op.drop_table("uploads")
    op.drop_table("lots")
