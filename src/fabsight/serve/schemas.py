"""Request and response models of the REST API (they are the OpenAPI schema at ``/docs``).

Inputs and outputs are separate models; outputs are built from store rows with
``model_validate(row)`` (``from_attributes``) or from the library's ``to_dict`` results.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class PredictionOut(_Out):
    model: str
    label: str
    probability: float
    top3: list[tuple[str, float]]
    needs_review: bool
    review_reason: str | None
    ood_score: float | None


class ReviewOut(_Out):
    id: int
    wafer: int = Field(validation_alias="wafer_pk")
    state: str
    predicted: str | None
    label: str | None
    reason: str | None
    reviewer: str | None
    decided_at: datetime | None
    priority: float


class WaferSummary(BaseModel):
    """One stored result: a physical wafer as one file (an inspection step or sort) measured it."""

    id: int
    lot: str
    wafer_id: str
    physical_wafer: str = Field(description="the lot's wafer this result belongs to ('01' for '1', 'A103-01')")
    source: str
    format: str
    measured_by: str = Field(description="the result's source: 'inspection STEP', 'sort' or 'map'")
    measured_at: datetime
    shape: tuple[int, int]
    good: int
    failing: int
    yield_: float | None = Field(serialization_alias="yield")
    label: str | None = Field(description="current label: the reviewed one, else the model's prediction")
    probability: float | None
    review: str | None = Field(description="review state: pending, auto, accepted or corrected")
    upload: int


class ExplanationOut(_Out):
    text: str
    facts: dict[str, Any]
    root_causes: dict[str, Any]


class DieResultOut(_Out):
    id: int
    image: str
    label: str | None
    score: float | None
    boxes: list[Any]
    heatmap_path: str | None


class DieImageOut(BaseModel):
    upload: int
    duplicate: bool
    results: list[DieResultOut]


class WaferDetail(WaferSummary):
    timestamp: datetime | None
    notch: str
    labels: list[str] = Field(description="ground-truth labels carried by the file (WM-811K, MixedWM38, folders)")
    prediction: PredictionOut | None
    explanation: ExplanationOut | None
    review_item: ReviewOut | None
    die_results: list[DieResultOut]


class UploadOut(BaseModel):
    id: int
    filename: str
    sha256: str
    size: int
    format: str
    status: str
    model: str | None
    created_at: datetime
    duplicate: bool = Field(description="the same bytes were uploaded before; nothing new was stored")
    wafers: list[WaferSummary]


class SourceOut(BaseModel):
    source: str = Field(description="'inspection STEP', 'sort' or 'map'")
    wafers: int = Field(description="physical wafers this source measured")
    results: int = Field(description="stored results (the STDF and G85 of one sort are two results of one wafer)")
    mean_yield: float | None = Field(description="mean over this source's wafers (latest result of each)")
    patterns: dict[str, int]


class LotOut(BaseModel):
    name: str
    wafers: int = Field(description="physical wafers")
    results: int = Field(description="stored results: one per wafer and file")
    sources: list[SourceOut] = Field(description="per source its own yield: inspection and sort are never averaged")
    first: datetime | None
    last: datetime | None
    patterns: dict[str, int] = Field(description="pattern mix over all results")
    pending_reviews: int


class LotWaferOut(BaseModel):
    wafer_id: str
    results: list[WaferSummary] = Field(description="this wafer's results, one per source and file")


class LotDetail(LotOut):
    wafer_list: list[WaferSummary] = Field(description="every result of the lot, newest first")
    physical_wafers: list[LotWaferOut] = Field(description="the lot's wafers in id order, each with its results")


class AskIn(BaseModel):
    question: str = Field(min_length=1, max_length=500)
    wafer: int | None = Field(None, description="ask about this wafer (store id)")
    lot: str | None = Field(None, description="ask about every wafer of this lot")


class AskOut(BaseModel):
    question: str
    answered: bool
    answer: str
    intent: str | None
    similarity: float
    slots: dict[str, Any]
    data: dict[str, Any]
    wafers: int = Field(description="how many wafers the answer was computed from")


class ReviewDecision(BaseModel):
    reviewer: str | None = Field(None, max_length=100)


class ReviewCorrection(ReviewDecision):
    label: str = Field(min_length=1, max_length=100)


class Selection(BaseModel):
    """A set of wafers; fields combine with AND, an empty selection is everything."""

    lot: str | None = None
    lots: list[str] | None = None
    pattern: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    wafers: list[int] | None = None


class DriftIn(BaseModel):
    a: Selection
    b: Selection
    n_permutations: int = Field(1000, ge=10, le=20000)
    seed: int = 0
    alpha: float = Field(0.05, gt=0, lt=1)


class FeatureShiftOut(BaseModel):
    name: str
    distance: float
    p_value: float
    p_holm: float
    mean_a: float
    mean_b: float
    smd: float


class DriftOut(BaseModel):
    distance: float
    p_value: float
    alpha: float
    drift: bool
    n_a: int
    n_b: int
    n_permutations: int
    per_feature: list[FeatureShiftOut]
    pattern_changes: list[dict[str, Any]] | None


class DieResultIn(BaseModel):
    image: str = Field(min_length=1, max_length=300)
    label: str | None = None
    score: float | None = None
    boxes: list[list[Any]] = Field(default_factory=list, description="[x0, y0, x1, y1, label, score] per defect")
    heatmap_path: str | None = None
    wafer: int | None = None


class Health(BaseModel):
    status: str
    store: str
    wafer_model: str | None
    anomaly_model: str | None
    classes: list[str]
    counts: dict[str, int]


# ----------------------------------------------------------------------------- yield analytics


class ParetoRowOut(BaseModel):
    key: str
    label: str
    count: int
    share: float
    cumulative: float
    yield_loss: float | None = Field(None, description="sort only: share of tested dies this row's fails cost")


class ParetoOut(BaseModel):
    by: str
    unit: str = Field(description="'defects' (inspection) or 'failing dies' (sort)")
    total: int
    maps: int
    scope: str
    rows: list[ParetoRowOut]
    tested_dies: int | None = None
    yield_: float | None = Field(None, serialization_alias="yield", validation_alias="yield")
    size_bins_um: list[float] | None = None


class RepeaterWaferOut(BaseModel):
    lot: str
    wafer: str
    defects: int
    repeaters: int
    in_wafer: int
    in_lot: int
    sites: int
    dies: int
    expected_by_chance: float
    dies_needed: int
    wafers_needed: int | None
    flagged_defects: list[int] = Field(description="DEFECTID of every repeating defect of the wafer")


class RepeatersOut(BaseModel):
    tolerance_um: float
    reticle_dies: list[int] | None
    min_dies: int
    min_wafers: int
    repeaters: int
    wafers_with_repeaters: int
    wafers: list[RepeaterWaferOut]


class ImpactRowOut(BaseModel):
    key: str
    name: str
    defects: int
    dies_with: int
    failing_with: int
    fail_rate: float | None
    kill_ratio: float | None
    kill_ratio_low: float | None
    kill_ratio_high: float | None
    kill_probability: float | None
    killed_share: float | None
    yield_loss: float | None


class KillRatioOut(BaseModel):
    alignment: dict[str, Any] = Field(description="the die-index alignment used (the defaults: no offset, no flip)")
    dies: int
    clean_dies: int
    clean_failing: int
    clean_fail_rate: float | None
    defects_untested: int
    wafers: list[dict[str, Any]]
    by_class: list[ImpactRowOut]
    by_size: list[ImpactRowOut]
    inspection_only: list[str]
    sort_only: list[str]
    warnings: list[str]


class HistoryOut(BaseModel):
    lot: str
    filename: str
    rows: int
    columns: dict[str, str] = Field(description="history field → the CSV column named for it (others: the field name)")
    created_at: datetime


class FindingOut(BaseModel):
    step: str
    factor: str
    level: str
    flagged_at: int
    wafers_at: int
    flagged_elsewhere: int
    wafers_elsewhere: int
    odds_ratio: float | None = Field(description="None when infinite (no flagged wafer elsewhere)")
    p_value: float
    q_value: float


class FactorTestOut(BaseModel):
    step: str
    factor: str
    levels: int
    wafers: int
    chi2: float
    dof: int
    p_value: float
    q_value: float


class CommonalityOut(BaseModel):
    criterion: str
    correction: str
    wafers: int
    flagged: int
    findings: list[FindingOut]
    factors: list[FactorTestOut]
    not_in_history: list[str]
    answer: str = Field(description="the strongest shared level in one sentence, or that none stands out")
