"""The results store's tables (SQLAlchemy 2.0 declarative models).

A lot holds physical wafers (:class:`LotWafer`, one per wafer id in the lot); a physical
wafer holds its results (:class:`Wafer` rows), one per file that measured it, each tagged
with its source: an inspection step (KLARF) or sort (STDF, G85), see
:func:`fabsight.types.source_label`. So the KLARF, STDF and G85 of one lot make one lot of
its physical wafers, each listing its inspection and sort results with their own yields.
One upload holds the results it carried; each result has at most one prediction, one
explanation and one review row, and any number of die-image results. Rows are only ever
written together with the upload that brought them (see :mod:`fabsight.store.repo`), so a
wafer without its upload, or an upload with half its wafers, cannot exist.

Die grids are stored zlib-compressed (``grid_blob``) with their shape: a 52×52 map is
~2.7 kB raw and typically 100–300 bytes compressed, and the bytes round-trip exactly.
"""

from __future__ import annotations

import zlib
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from fabsight.types import source_label

#: Review states. ``auto``: the model was confident, nobody has looked; ``pending``: routed
#: to a person; ``accepted``/``corrected``: a person decided (the same words as
#: :mod:`fabsight.labeling`).
REVIEW_STATES: tuple[str, ...] = ("pending", "auto", "accepted", "corrected")
OPEN_STATES: tuple[str, ...] = ("pending", "auto")


def utcnow() -> datetime:
    """Naive UTC: SQLite has no time zones, so every timestamp in the store is naive UTC."""
    return datetime.now(UTC).replace(tzinfo=None)


def pack_grid(grid: np.ndarray) -> bytes:
    """Compress a 0/1/2 die grid for storage (shape is kept in its own columns)."""
    return zlib.compress(np.ascontiguousarray(grid, dtype=np.uint8).tobytes(), 6)


def unpack_grid(blob: bytes, rows: int, cols: int) -> np.ndarray:
    return np.frombuffer(zlib.decompress(blob), dtype=np.uint8).reshape(rows, cols).copy()


class Base(DeclarativeBase):
    pass


class Lot(Base):
    __tablename__ = "lots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    wafers: Mapped[list[Wafer]] = relationship(back_populates="lot")
    physical_wafers: Mapped[list[LotWafer]] = relationship(back_populates="lot", order_by="LotWafer.wafer_id")


class LotWafer(Base):
    """A physical wafer of a lot: what its inspection and sort results have in common."""

    __tablename__ = "lot_wafers"
    __table_args__ = (UniqueConstraint("lot_pk", "wafer_id", name="uq_lot_wafers_wafer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lot_pk: Mapped[int] = mapped_column(ForeignKey("lots.id", name="fk_lot_wafers_lot"))
    #: :func:`fabsight.types.wafer_key` of the results' wafer ids ("01" for "1", "01", "A103-01").
    wafer_id: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    lot: Mapped[Lot] = relationship(back_populates="physical_wafers")
    results: Mapped[list[Wafer]] = relationship(back_populates="lot_wafer", order_by="Wafer.id")


class LotHistory(Base):
    """The wafer-history CSV uploaded for a lot (the last upload replaces the one before), with the
    columns it was checked with, so the lot page and ``/commonality`` read it the same way."""

    __tablename__ = "lot_histories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lot_pk: Mapped[int] = mapped_column(ForeignKey("lots.id", name="fk_lot_histories_lot"), unique=True)
    filename: Mapped[str] = mapped_column(String(300))
    data: Mapped[bytes] = mapped_column(LargeBinary)
    #: History field (lot, wafer, step, tool, chamber, slot, time) → the CSV's column, for those named.
    columns: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    rows: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    lot: Mapped[Lot] = relationship()


class Upload(Base):
    __tablename__ = "uploads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    filename: Mapped[str] = mapped_column(String(300))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    size: Mapped[int] = mapped_column(Integer)
    content_type: Mapped[str] = mapped_column(String(120))
    format: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20), default="stored")
    path: Mapped[str] = mapped_column(String(500))
    model: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    wafers: Mapped[list[Wafer]] = relationship(back_populates="upload", order_by="Wafer.id")


class Wafer(Base):
    __tablename__ = "wafers"
    __table_args__ = (
        Index("ix_wafers_lot", "lot_pk"),
        Index("ix_wafers_measured", "measured_at"),
        Index("ix_wafers_lot_wafer", "lot_wafer_pk"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    upload_id: Mapped[int] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    lot_pk: Mapped[int] = mapped_column(ForeignKey("lots.id"))
    lot_wafer_pk: Mapped[int] = mapped_column(ForeignKey("lot_wafers.id", name="fk_wafers_lot_wafer"))
    wafer_id: Mapped[str] = mapped_column(String(100))
    source: Mapped[str] = mapped_column(String(300))
    format: Mapped[str] = mapped_column(String(20))
    #: ``inspection``, ``sort`` or ``map`` (:func:`fabsight.types.source_kind` of the format).
    kind: Mapped[str] = mapped_column(String(20), default="map")
    #: The inspection step (KLARF ``StepID``), empty when the file names none and for sort.
    step: Mapped[str] = mapped_column(String(100), default="")
    timestamp: Mapped[datetime | None] = mapped_column(DateTime)
    #: ``timestamp`` from the file when it has one, else the upload time: what time filters use.
    measured_at: Mapped[datetime] = mapped_column(DateTime)
    rows: Mapped[int] = mapped_column(Integer)
    cols: Mapped[int] = mapped_column(Integer)
    grid_blob: Mapped[bytes] = mapped_column(LargeBinary)
    notch: Mapped[str] = mapped_column(String(8), default="down")
    n_good: Mapped[int] = mapped_column(Integer)
    n_fail: Mapped[int] = mapped_column(Integer)
    yield_: Mapped[float | None] = mapped_column("yield", Float)
    labels: Mapped[list[str]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    lot: Mapped[Lot] = relationship(back_populates="wafers")
    lot_wafer: Mapped[LotWafer] = relationship(back_populates="results")
    upload: Mapped[Upload] = relationship(back_populates="wafers")
    prediction: Mapped[Prediction | None] = relationship(back_populates="wafer", cascade="all, delete-orphan")
    explanation: Mapped[Explanation | None] = relationship(back_populates="wafer", cascade="all, delete-orphan")
    review: Mapped[Review | None] = relationship(back_populates="wafer", cascade="all, delete-orphan")
    die_results: Mapped[list[DieResult]] = relationship(back_populates="wafer", cascade="all, delete-orphan")

    @property
    def grid(self) -> np.ndarray:
        return unpack_grid(self.grid_blob, self.rows, self.cols)

    @property
    def source_label(self) -> str:
        """The source this result is grouped and shown under (``inspection M1-ETCH``, ``sort``)."""
        return source_label(self.kind, self.step)


class Prediction(Base):
    __tablename__ = "predictions"
    __table_args__ = (Index("ix_predictions_label", "label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    wafer_pk: Mapped[int] = mapped_column(ForeignKey("wafers.id", ondelete="CASCADE"), unique=True)
    model: Mapped[str] = mapped_column(String(200))
    label: Mapped[str] = mapped_column(String(100))
    probability: Mapped[float] = mapped_column(Float)
    top3: Mapped[list[Any]] = mapped_column(JSON)
    needs_review: Mapped[bool] = mapped_column(Boolean)
    review_reason: Mapped[str | None] = mapped_column(Text)
    ood_score: Mapped[float | None] = mapped_column(Float)

    wafer: Mapped[Wafer] = relationship(back_populates="prediction")

    def details(self) -> dict[str, Any]:
        """The ``predict_details`` record this row was stored from (what :mod:`fabsight.assist` reads)."""
        return {
            "label": self.label,
            "probability": self.probability,
            "top3": self.top3,
            "needs_review": self.needs_review,
            "review_reason": self.review_reason,
            "ood_score": self.ood_score,
        }


class Explanation(Base):
    __tablename__ = "explanations"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    wafer_pk: Mapped[int] = mapped_column(ForeignKey("wafers.id", ondelete="CASCADE"), unique=True)
    text: Mapped[str] = mapped_column(Text)
    facts: Mapped[dict[str, Any]] = mapped_column(JSON)
    root_causes: Mapped[dict[str, Any]] = mapped_column(JSON)

    wafer: Mapped[Wafer] = relationship(back_populates="explanation")


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (Index("ix_reviews_state", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    wafer_pk: Mapped[int] = mapped_column(ForeignKey("wafers.id", ondelete="CASCADE"), unique=True)
    state: Mapped[str] = mapped_column(String(20))
    predicted: Mapped[str | None] = mapped_column(String(100))
    label: Mapped[str | None] = mapped_column(String(100))
    reason: Mapped[str | None] = mapped_column(Text)
    reviewer: Mapped[str | None] = mapped_column(String(100))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: Review order, highest first: how unsure the model was (1 - confidence, OOD maps first).
    priority: Mapped[float] = mapped_column(Float, default=0.0)

    wafer: Mapped[Wafer] = relationship(back_populates="review")


class DieResult(Base):
    """A die-image result (classification, inspection boxes, anomaly heat-map).

    It belongs to the upload that brought the image and, when the image is known to come
    from a wafer of the store, to that wafer (its page then shows it).
    """

    __tablename__ = "die_results"
    __table_args__ = (UniqueConstraint("upload_id", "image", name="uq_die_results_image"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    upload_id: Mapped[int] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), index=True)
    wafer_pk: Mapped[int | None] = mapped_column(ForeignKey("wafers.id", ondelete="CASCADE"), index=True)
    image: Mapped[str] = mapped_column(String(300))
    label: Mapped[str | None] = mapped_column(String(100))
    score: Mapped[float | None] = mapped_column(Float)
    boxes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    heatmap_path: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    wafer: Mapped[Wafer | None] = relationship(back_populates="die_results")
    upload: Mapped[Upload] = relationship()


class AdcLot(Base):
    """One ADC run of an uploaded KLARF with its review images (a zip): where the unpacked files
    and the classified KLARF are, and how the model's classes were numbered in it."""

    __tablename__ = "adc_lots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    upload_id: Mapped[int] = mapped_column(ForeignKey("uploads.id", ondelete="CASCADE"), unique=True)
    #: Folder (in the files folder) holding the unpacked archive.
    folder: Mapped[str] = mapped_column(String(200))
    #: The KLARF inside that folder, and the classified copy written beside the folder.
    klarf: Mapped[str] = mapped_column(String(500))
    classified: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200))
    class_numbers: Mapped[dict[str, int]] = mapped_column(JSON)
    review_code: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    upload: Mapped[Upload] = relationship()
    defects: Mapped[list[AdcDefect]] = relationship(back_populates="adc_lot", order_by="AdcDefect.id",
                                                    cascade="all, delete-orphan")


class AdcDefect(Base):
    """One KLARF defect as ADC classified it, with its review state (the words of :class:`Review`).

    ``predicted`` is the model's class (None without images), ``label`` the class in force
    (the model's when it was sure, a person's once decided, None while pending), ``image`` /
    ``page`` its first review image (relative to the lot's folder; page of a multi-page TIFF).
    """

    __tablename__ = "adc_defects"
    __table_args__ = (Index("ix_adc_defects_state", "state"),
                      UniqueConstraint("adc_lot_pk", "wafer_id", "defect_id", name="uq_adc_defects_defect"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    adc_lot_pk: Mapped[int] = mapped_column(ForeignKey("adc_lots.id", ondelete="CASCADE"), index=True)
    wafer_pk: Mapped[int | None] = mapped_column(ForeignKey("wafers.id", ondelete="CASCADE"))
    wafer_id: Mapped[str] = mapped_column(String(100))
    defect_id: Mapped[int] = mapped_column(Integer)
    original_class: Mapped[int | None] = mapped_column(Integer)
    predicted: Mapped[str | None] = mapped_column(String(100))
    confidence: Mapped[float | None] = mapped_column(Float)
    reason: Mapped[str] = mapped_column(String(100), default="")
    image: Mapped[str | None] = mapped_column(String(500))
    page: Mapped[int] = mapped_column(Integer, default=1)
    n_images: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(20))
    label: Mapped[str | None] = mapped_column(String(100))
    reviewer: Mapped[str | None] = mapped_column(String(100))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime)
    #: Review order, highest first: 1 - confidence.
    priority: Mapped[float] = mapped_column(Float, default=0.0)

    adc_lot: Mapped[AdcLot] = relationship(back_populates="defects")
