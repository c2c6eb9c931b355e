"""Measured, structured facts about one wafer map: the only material explanations are built from.

Every fact is computed by one small function from the die grid (and, for the pattern, from
the classifier's prediction), so each sentence of an explanation can name the fact it states
and a test can check the sentence against the measurement.

Conventions (documented once here, used everywhere):

* **Radius** ``r`` is the distance of a die centre from the wafer centre divided by the wafer
  radius (the farthest on-wafer die centre plus half a die), in physical units when the die
  pitch is known. Zones: ``centre`` r < 0.35, ``middle`` 0.35 ≤ r < 0.75, ``edge`` r ≥ 0.75.
* **Sectors** are eight compass sectors of 45° with the notch at south (6 o'clock), whatever
  way the map is drawn; quadrants are named the same way (``upper-left`` = NW quarter with the
  notch down). A pattern has a sector only when it is angularly concentrated (mean resultant
  length of its dies' angles ≥ 0.5); rings and central blobs have none.
* **Near the notch** means the edge zone of the notch (S) sector.
* **Pattern vs background**: failing dies in spatial clusters (:func:`cluster_dies`) are the
  pattern; the rest are background fails at the random defect rate.
* **Severity** is graded on the wafer's total yield loss (fraction of on-wafer dies failing):
  ``low`` < 5 %, ``moderate`` < 15 %, ``high`` < 30 %, ``critical`` ≥ 30 %.
* **Location** is measured on the clustered dies when they hold at least a quarter of the
  failing dies (a few chance clusters on a randomly failing wafer do not make a pattern), else
  on all failing dies. ``whole wafer`` when at least half of the dies fail; for clusters, the
  zone of their median radius; for scattered fails, the zone holding most of them only when
  it is enriched there (share ≥ 1.5 × the zone's area share, and a one-sided binomial test
  against that area share at p < 0.01, so a handful of fails never makes a location);
  otherwise ``spread``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fabsight.assist.clustering import ClusterResult, cluster_defects, cluster_dies, cluster_grid
from fabsight.types import DefectList, DieState, WaferMap, source_of

ZONES: tuple[tuple[str, float, float], ...] = (("centre", 0.0, 0.35), ("middle", 0.35, 0.75), ("edge", 0.75, np.inf))
SECTORS: tuple[str, ...] = ("N", "NE", "E", "SE", "S", "SW", "W", "NW")
#: Where the notch is drawn, as an angle clockwise from "up" on the drawn map.
_NOTCH_ANGLE = {"down": 180.0, "up": 0.0, "left": 270.0, "right": 90.0}
SECTOR_CONCENTRATION = 0.5
ENRICHMENT = 1.5
ENRICHMENT_P = 0.01
WHOLE_WAFER = 0.5
CLUSTER_BASIS = 0.25
MIN_CONFIDENCE = 0.5
SEVERITY: tuple[tuple[str, float], ...] = (("low", 0.05), ("moderate", 0.15), ("high", 0.30), ("critical", np.inf))
RADIAL_BINS = 10


@dataclass(frozen=True)
class DieGeometry:
    """Per-die polar coordinates; ``radius``/``angle`` are NaN off-wafer.

    ``angle`` is in degrees clockwise from north with the notch at south (180°).
    """

    on_wafer: np.ndarray
    radius: np.ndarray
    angle: np.ndarray


def die_geometry(wmap: WaferMap) -> DieGeometry:
    """Normalised radius and notch-relative angle of every die (see the module docstring).

    Unlike :mod:`fabsight.synth.geometry`, which assumes the wafer fills its grid, this
    measures the wafer from the map itself (the bounding box of its on-wafer dies, scaled by
    the die pitch when the file gives one), as real KLARF / STDF / G85 grids need.
    """
    grid = wmap.grid
    on = grid != DieState.OFF
    rows, cols = np.indices(grid.shape, dtype=float)
    if on.any():
        r_idx, c_idx = np.nonzero(on)
        rc, cc = (r_idx.min() + r_idx.max()) / 2, (c_idx.min() + c_idx.max()) / 2
    else:
        rc, cc = (grid.shape[0] - 1) / 2, (grid.shape[1] - 1) / 2
    sx, sy = wmap.die_pitch if wmap.die_pitch else (1.0, 1.0)
    unit = min(sx, sy)
    dx = (cols - cc) * sx / unit
    dy = (rc - rows) * sy / unit
    dist = np.hypot(dx, dy)
    wafer_r = (dist[on].max() if on.any() else 0.0) + 0.5 * max(sx, sy) / unit
    drawn = np.degrees(np.arctan2(dx, dy)) % 360
    notch = _NOTCH_ANGLE.get(str(wmap.notch).lower(), 180.0)
    angle = (drawn - notch + 180.0) % 360
    nan = np.full(grid.shape, np.nan)
    return DieGeometry(on, np.where(on, dist / wafer_r, nan), np.where(on, angle, nan))


def zone_of(radius: float) -> str:
    for name, lo, hi in ZONES:
        if lo <= radius < hi:
            return name
    return ZONES[-1][0]


def sector_of(angle: float) -> str:
    return SECTORS[int(((angle + 22.5) % 360) // 45)]


def quadrant_of(angle: float) -> str:
    vertical = "upper" if (angle < 90 or angle >= 270) else "lower"
    horizontal = "right" if angle < 180 else "left"
    return f"{vertical}-{horizontal}"


@dataclass
class PatternFacts:
    """What the classifier says. ``status``: ``pattern`` (a dominant pattern), ``none`` (confidently
    clean), ``uncertain`` (low confidence or routed to review) or ``unclassified`` (no model)."""

    status: str
    label: str | None = None
    labels: list[str] = field(default_factory=list)
    probability: float | None = None
    top3: list[tuple[str, float]] = field(default_factory=list)
    needs_review: bool = False
    review_reason: str = ""


@dataclass
class LocationFacts:
    """Where the pattern's dies (or, without clusters, all failing dies) lie."""

    basis: str
    location: str
    coverage: float
    zone_share: dict[str, float]
    zone_enrichment: dict[str, float]
    radius_median: float | None
    radius_range: tuple[float, float] | None
    sector: str | None
    quadrant: str | None
    concentration: float
    radial_profile: list[float]


@dataclass
class ExtentFacts:
    dies: int
    failing: int
    fail_fraction: float
    failing_by_zone: dict[str, int]
    pattern_dies: int
    background_dies: int
    clusters: int
    cluster_sizes: list[int]
    cluster_shapes: list[str]


@dataclass
class YieldFacts:
    yield_: float
    yield_loss: float
    pattern_yield_loss: float
    background_yield_loss: float
    severity: str


@dataclass
class NotchFacts:
    dies: int
    failing: int
    fail_fraction: float


@dataclass
class DefectFacts:
    """The inspection file's defect list, measured: how many defects, how big (KLARF ``DSIZE``, µm),
    which classes (``CLASSNUMBER``). Sizes cover only the defects whose size the file gives."""

    count: int
    sized: int
    mean_size: float | None
    median_size: float | None
    p90_size: float | None
    max_size: float | None
    classes: dict[str, int]


@dataclass
class WaferFacts:
    """All measured facts about one wafer; ``to_dict`` is what ``--json`` prints.

    ``source`` says what measured the map (:func:`fabsight.types.source_of`: an inspection
    step or sort), so a wafer seen by both is two sets of facts that are never mixed.
    """

    wafer_id: str
    lot_id: str
    pattern: PatternFacts
    location: LocationFacts
    extent: ExtentFacts
    yield_: YieldFacts
    notch: NotchFacts
    clustering: ClusterResult
    defect_clustering: ClusterResult | None = None
    defects: DefectFacts | None = None
    source: str = "map"
    timestamp: str | None = None
    #: Facts measured over the lot the wafer was explained with (``repeaters``: this wafer's repeating
    #: defects; ``killer``: the lot's deadliest defect class), see :func:`fabsight.assist.explain.explain_maps`.
    lot: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "wafer_id": self.wafer_id,
            "lot_id": self.lot_id,
            "pattern": asdict(self.pattern),
            "location": asdict(self.location),
            "extent": asdict(self.extent),
            "yield": {k.rstrip("_"): v for k, v in asdict(self.yield_).items()},
            "near_notch": asdict(self.notch),
            "clustering": self.clustering.to_dict(),
            "defect_clustering": None if self.defect_clustering is None else self.defect_clustering.to_dict(),
            "defects": None if self.defects is None else asdict(self.defects),
            "source": self.source,
            "timestamp": self.timestamp,
            "lot": self.lot,
        }


def pattern_facts(prediction: Mapping[str, Any] | None, *, min_confidence: float = MIN_CONFIDENCE) -> PatternFacts:
    """Turn a ``predict_details`` record into a pattern verdict.

    The classifier's label is only called dominant when it is confident (≥ ``min_confidence``)
    and not routed to review; otherwise the explanation must say there is no dominant pattern.
    Multi-label models join their labels with ``+`` (``"Center+Loc"``) or give ``labels``;
    every label listed counts as present.
    """
    if prediction is None:
        return PatternFacts(status="unclassified")
    label = prediction.get("label")
    prob = prediction.get("probability")
    prob = None if prob is None else float(prob)
    labels = [str(x) for x in prediction.get("labels") or (str(label).split("+") if label else [])]
    top3 = [(str(n), round(float(p), 4)) for n, p in prediction.get("top3") or []]
    review = bool(prediction.get("needs_review", False))
    reason = str(prediction.get("review_reason") or "")
    confident = not review and prob is not None and prob >= min_confidence and bool(labels)
    if not confident:
        if not reason:
            reason = "no label" if not labels else f"confidence {prob:.2f} below {min_confidence:.2f}"
        return PatternFacts("uncertain", None, [], prob, top3, review, reason)
    real = [x for x in labels if x.lower() != "none"]
    if not real:
        return PatternFacts("none", "none", [], prob, top3, review, reason)
    return PatternFacts("pattern", real[0], real, prob, top3, review, reason)


def zone_masks(geo: DieGeometry) -> dict[str, np.ndarray]:
    r = np.nan_to_num(geo.radius, nan=-1.0)
    return {name: geo.on_wafer & (r >= lo) & (r < hi) for name, lo, hi in ZONES}


def radial_profile(wmap: WaferMap, geo: DieGeometry, bins: int = RADIAL_BINS) -> list[float]:
    """Fail fraction in ``bins`` equal-width rings of normalised radius (NaN-free: empty rings are 0)."""
    r = geo.radius[geo.on_wafer]
    fail = (wmap.grid == DieState.FAIL)[geo.on_wafer]
    idx = np.minimum((r * bins).astype(int), bins - 1)
    n = np.bincount(idx, minlength=bins)
    k = np.bincount(idx, weights=fail, minlength=bins)
    return [round(float(a / b), 4) if b else 0.0 for a, b in zip(k, n, strict=True)]


def _enriched(k: int, n: int, area_share: float) -> bool:
    """One-sided binomial test: are k of n fails in a zone more than its area share explains?"""
    from scipy.stats import binom

    return bool(binom.sf(k - 1, n, area_share) < ENRICHMENT_P)


def location_facts(wmap: WaferMap, geo: DieGeometry, mask: np.ndarray, basis: str) -> LocationFacts:
    """Zone, sector and quadrant of the dies in ``mask`` (see the module docstring for the rules)."""
    zones = zone_masks(geo)
    n_on = int(geo.on_wafer.sum())
    n = int(mask.sum())
    profile = radial_profile(wmap, geo)
    if n == 0 or n_on == 0:
        return LocationFacts(basis, "none", 0.0, {}, {}, None, None, None, None, 0.0, profile)
    share = {z: round(float((mask & m).sum() / n), 4) for z, m in zones.items()}
    area = {z: float(m.sum() / n_on) for z, m in zones.items()}
    enrich = {z: round(share[z] / area[z], 3) if area[z] else 0.0 for z in zones}
    top = max(share, key=lambda z: share[z])
    r = geo.radius[mask]
    if int((wmap.grid == DieState.FAIL).sum()) >= WHOLE_WAFER * n_on:
        location = "whole wafer"
    elif basis == "clusters":
        location = zone_of(float(np.median(r)))
    elif enrich[top] >= ENRICHMENT and _enriched(round(share[top] * n), n, area[top]):
        location = top
    else:
        location = "spread"
    theta = np.radians(geo.angle[mask])
    s, c = float(np.sin(theta).mean()), float(np.cos(theta).mean())
    conc = float(np.hypot(s, c))
    sector = quadrant = None
    if conc >= SECTOR_CONCENTRATION and location != "whole wafer":
        mean_angle = float(np.degrees(np.arctan2(s, c)) % 360)
        sector, quadrant = sector_of(mean_angle), quadrant_of(mean_angle)
    return LocationFacts(
        basis=basis,
        location=location,
        coverage=round(n / n_on, 4),
        zone_share=share,
        zone_enrichment=enrich,
        radius_median=round(float(np.median(r)), 3),
        radius_range=(round(float(np.percentile(r, 10)), 3), round(float(np.percentile(r, 90)), 3)),
        sector=sector,
        quadrant=quadrant,
        concentration=round(conc, 3),
        radial_profile=profile,
    )


def extent_facts(wmap: WaferMap, geo: DieGeometry, clustering: ClusterResult) -> ExtentFacts:
    """Die counts (also per zone), and how many failing dies the clusters (the pattern) hold versus background."""
    dies, failing = wmap.n_dies, wmap.n_fail
    pattern = clustering.clustered
    fail = wmap.grid == DieState.FAIL
    return ExtentFacts(
        dies=dies,
        failing=failing,
        fail_fraction=round(failing / dies, 4) if dies else 0.0,
        failing_by_zone={z: int((m & fail).sum()) for z, m in zone_masks(geo).items()},
        pattern_dies=pattern,
        background_dies=failing - pattern,
        clusters=len(clustering.clusters),
        cluster_sizes=[c.size for c in clustering.clusters],
        cluster_shapes=[c.shape for c in clustering.clusters],
    )


def severity_of(yield_loss: float) -> str:
    for name, upper in SEVERITY:
        if yield_loss < upper:
            return name
    return SEVERITY[-1][0]


def yield_facts(extent: ExtentFacts) -> YieldFacts:
    """Yield, and the yield loss split between the clustered pattern and the background."""
    n = extent.dies
    loss = extent.failing / n if n else 0.0
    return YieldFacts(
        yield_=round(1.0 - loss, 4) if n else 0.0,
        yield_loss=round(loss, 4),
        pattern_yield_loss=round(extent.pattern_dies / n, 4) if n else 0.0,
        background_yield_loss=round(extent.background_dies / n, 4) if n else 0.0,
        severity=severity_of(loss),
    )


def notch_mask(geo: DieGeometry) -> np.ndarray:
    """Dies near the notch: edge zone of the notch sector."""
    in_sector = np.abs(np.nan_to_num(geo.angle, nan=0.0) - 180.0) <= 22.5
    return zone_masks(geo)["edge"] & in_sector


def notch_facts(wmap: WaferMap, geo: DieGeometry) -> NotchFacts:
    near = notch_mask(geo)
    n = int(near.sum())
    k = int((near & (wmap.grid == DieState.FAIL)).sum())
    return NotchFacts(dies=n, failing=k, fail_fraction=round(k / n, 4) if n else 0.0)


def defect_facts(defects: DefectList) -> DefectFacts:
    """Count, size statistics (over the defects with a positive finite size) and class counts of a defect list."""
    size = np.asarray(defects.size, dtype=float)
    size = size[np.isfinite(size) & (size > 0)]
    codes = np.asarray(defects.class_number)
    values, counts = np.unique(codes[codes >= 0], return_counts=True)
    order = np.argsort(-counts, kind="stable")

    def stat(fn: Any) -> float | None:
        return round(float(fn(size)), 3) if size.size else None

    return DefectFacts(
        count=len(defects),
        sized=int(size.size),
        mean_size=stat(np.mean),
        median_size=stat(np.median),
        p90_size=stat(lambda v: np.percentile(v, 90)),
        max_size=stat(np.max),
        classes={str(int(values[i])): int(counts[i]) for i in order},
    )


def wafer_facts(wmap: WaferMap, prediction: Mapping[str, Any] | None = None) -> WaferFacts:
    """Measure everything about one wafer map (``prediction``: one ``predict_details`` record).

    Maps read from KLARF also get their defects clustered in wafer coordinates
    (:func:`cluster_defects`), beside the clusters of failing dies on the grid.
    """
    geo = die_geometry(wmap)
    clustering = cluster_dies(wmap)
    mask = cluster_grid(wmap, clustering) >= 0
    basis = "clusters"
    if not mask.any() or mask.sum() < CLUSTER_BASIS * wmap.n_fail:
        mask, basis = wmap.grid == DieState.FAIL, "all failing dies"
    extent = extent_facts(wmap, geo, clustering)
    defects = None
    if wmap.defects is not None and len(wmap.defects):
        defects = cluster_defects(wmap.defects, die_pitch=wmap.die_pitch)
    return WaferFacts(
        wafer_id=str(wmap.wafer_id),
        lot_id=str(wmap.lot_id),
        pattern=pattern_facts(prediction),
        location=location_facts(wmap, geo, mask, basis),
        extent=extent,
        yield_=yield_facts(extent),
        notch=notch_facts(wmap, geo),
        clustering=clustering,
        defect_clustering=defects,
        defects=None if wmap.defects is None else defect_facts(wmap.defects),
        source=source_of(wmap),
        timestamp=None if wmap.timestamp is None else wmap.timestamp.isoformat(),
    )
