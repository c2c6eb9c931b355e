"""Anomaly-detection metrics: image AUROC, pixel AUROC, AUPRO and F1.

Pixel metrics run over every pixel of the test set (tens of millions on a real set), so
they are computed from per-threshold counts (one ``searchsorted`` + ``bincount`` pass)
instead of a full sort: exact when the scores take at most ``max_thresholds`` distinct
values, and otherwise evaluated at that many score quantiles (an AUROC error below 1e-3).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from fabsight.anomaly.regions import STRUCTURE


def image_auroc(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray) -> float:
    """Area under the ROC curve of image scores; NaN unless both classes are present."""
    y = np.asarray(labels).astype(bool)
    if y.all() or not y.any():
        return float("nan")
    return float(roc_auc_score(y, np.asarray(scores, dtype=np.float64)))


def f1_at(labels: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float) -> float:
    """F1 of "anomalous" when an image is called anomalous at ``score >= threshold``."""
    y = np.asarray(labels).astype(bool)
    pred = np.asarray(scores, dtype=np.float64) >= threshold
    tp = int(np.count_nonzero(pred & y))
    denom = int(np.count_nonzero(pred)) + int(np.count_nonzero(y))
    return 2.0 * tp / denom if denom else float("nan")


def _thresholds(scores: np.ndarray, max_thresholds: int, seed: int = 0) -> np.ndarray:
    """Ascending candidate thresholds, always including the lowest score.

    Small inputs use every distinct score (exact curves); large ones use quantiles of a
    random sample, taken as actual score values so few-valued maps stay exact too.
    """
    if scores.size <= 4 * max_thresholds:
        uniq = np.unique(scores)
        if uniq.size <= max_thresholds:
            return uniq
    rng = np.random.default_rng(seed)
    sample = scores[rng.integers(0, scores.size, size=min(scores.size, 50 * max_thresholds))]
    q = np.quantile(sample, np.linspace(0.0, 1.0, max_thresholds), method="inverted_cdf")
    return np.unique(np.concatenate([[scores.min()], q]))


def _bin_index(scores: np.ndarray, thr: np.ndarray) -> np.ndarray:
    """Index of the highest threshold ``<= score`` for each score (every score ≥ thr[0])."""
    return np.clip(np.searchsorted(thr, scores, side="right") - 1, 0, thr.size - 1)


def _above(weights: np.ndarray) -> np.ndarray:
    """Total weight at ``score >= threshold``, from the highest threshold down, starting at 0."""
    return np.concatenate([[0.0], np.cumsum(weights[::-1])])


def _flatten(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    if len(maps) != len(masks):
        raise ValueError(f"{len(maps)} anomaly maps but {len(masks)} masks")
    for a, m in zip(maps, masks, strict=True):
        if a.shape != m.shape:
            raise ValueError(f"anomaly map {a.shape} and mask {m.shape} differ in shape")
    s = np.concatenate([np.asarray(a, dtype=np.float32).ravel() for a in maps])
    y = np.concatenate([np.asarray(m).astype(bool).ravel() for m in masks])
    return s, y


def pixel_auroc(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], max_thresholds: int = 20_000) -> float:
    """Pixel-level AUROC over all pixels of all images (NaN without defect or normal pixels)."""
    s, y = _flatten(maps, masks)
    if y.all() or not y.any():
        return float("nan")
    thr = _thresholds(s, max_thresholds)
    idx = _bin_index(s, thr)
    pos = np.bincount(idx[y], minlength=thr.size).astype(np.float64)
    neg = np.bincount(idx[~y], minlength=thr.size).astype(np.float64)
    tpr, fpr = _above(pos) / pos.sum(), _above(neg) / neg.sum()
    return float(np.trapezoid(tpr, fpr))


def aupro(
    maps: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    fpr_limit: float = 0.3,
    max_thresholds: int = 20_000,
) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, divided by ``fpr_limit``.

    Every connected defect region counts equally, however small (Bergmann et al., MVTec AD,
    IJCV 2021): at each threshold PRO is the mean, over all ground-truth regions of all
    images, of the fraction of the region above the threshold, and FPR is the fraction of
    all normal pixels above it. A perfect localiser scores 1; random maps ≈ ``fpr_limit``/2.
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    s, y = _flatten(maps, masks)
    # Region id (1-based, unique over all images) of every defect pixel, in pixel order.
    region_of_defect = []
    n_regions = 0
    for m in masks:
        lab, n = ndimage.label(np.asarray(m).astype(bool), structure=STRUCTURE)
        region_of_defect.append(lab[lab > 0].astype(np.int32) + n_regions)
        n_regions += n
    if n_regions == 0 or y.all():
        return float("nan")
    regions = np.concatenate(region_of_defect)
    sizes = np.bincount(regions, minlength=n_regions + 1).astype(np.float64)
    # Each defect pixel weighs 1 / (its region's size × number of regions), so a fully
    # detected set of regions sums to 1 whatever their sizes.
    weight = 1.0 / (sizes[regions] * n_regions)
    thr = _thresholds(s, max_thresholds)
    idx = _bin_index(s, thr)
    pro_w = np.bincount(idx[y], weights=weight, minlength=thr.size)
    neg = np.bincount(idx[~y], minlength=thr.size).astype(np.float64)
    pro, fpr = _above(pro_w), _above(neg) / neg.sum()
    # Cut the curve at fpr_limit, interpolating the last point.
    keep = fpr <= fpr_limit
    f, p = fpr[keep], pro[keep]
    if f[-1] < fpr_limit:
        j = int(np.searchsorted(fpr, fpr_limit, side="left"))
        p_end = np.interp(fpr_limit, fpr[j - 1 : j + 1], pro[j - 1 : j + 1])
        f, p = np.append(f, fpr_limit), np.append(p, p_end)
    return float(np.trapezoid(p, f) / fpr_limit)


def region_recall(maps: Sequence[np.ndarray], masks: Sequence[np.ndarray], threshold: float) -> float:
    """Share of ground-truth defect regions that the threshold finds (their map maximum reaches it).

    The question an inspector asks ("how many of the defects did it flag?"), counting a
    5-pixel pin-hole the same as a large stain; AUPRO answers it over all thresholds,
    this at the chosen one. NaN when no mask has a defect region.
    """
    found = total = 0
    for amap, m in zip(maps, masks, strict=True):
        lab, n = ndimage.label(np.asarray(m).astype(bool), structure=STRUCTURE)
        if n == 0:
            continue
        peaks = ndimage.maximum(np.asarray(amap), labels=lab, index=np.arange(1, n + 1))
        found += int(np.count_nonzero(np.asarray(peaks) >= threshold))
        total += n
    return found / total if total else float("nan")
