"""The DeepPCB evaluation protocol.

A detection is correct when its IoU with a not-yet-matched ground-truth box *of the same
type* exceeds 0.33; each ground-truth box is matched at most once (detections are taken
in decreasing confidence, each one to the best-overlapping free box). From that:

* precision, recall and F-score = 2PR/(P+R) over the detections the model reports
  (those at or above its operating threshold), overall and per type;
* AP per type from all detections ranked by confidence (all-point interpolated area
  under the precision/recall curve, as in PASCAL VOC 2010+), mAP = mean over types;
* counting: the fraction of images whose per-type counts are all exactly right, and the
  mean absolute count error per image (summed over types) and per type.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

IOU_THRESHOLD = 0.33


@dataclass(frozen=True)
class Scored:
    """A detection as the evaluator sees it."""

    box: tuple[float, float, float, float]
    type: str
    confidence: float


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    """Intersection over union of two ``(x1, y1, x2, y2)`` boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def match(
    detections: Sequence[Scored], truths: Sequence[tuple[tuple[float, float, float, float], str]], threshold: float
) -> list[bool]:
    """For each detection (in the given order), whether it is a true positive."""
    order = sorted(range(len(detections)), key=lambda i: -detections[i].confidence)
    used = [False] * len(truths)
    hit = [False] * len(detections)
    for i in order:
        d = detections[i]
        best, best_iou = -1, threshold
        for j, (box, kind) in enumerate(truths):
            if used[j] or kind != d.type:
                continue
            v = iou(d.box, box)
            if v > best_iou:
                best, best_iou = j, v
        if best >= 0:
            used[best] = True
            hit[i] = True
    return hit


def average_precision(confidences: np.ndarray, hits: np.ndarray, n_truth: int) -> float:
    """All-point interpolated AP of confidence-ranked detections against ``n_truth`` boxes."""
    if n_truth == 0:
        return float("nan")
    if len(confidences) == 0:
        return 0.0
    order = np.argsort(-confidences, kind="stable")
    tp = np.cumsum(hits[order])
    fp = np.cumsum(~hits[order])
    recall = tp / n_truth
    precision = tp / np.maximum(tp + fp, 1)
    # Precision envelope (monotone from the right), then area under the step curve.
    mrec = np.concatenate([[0.0], recall, [1.0]])
    mpre = np.concatenate([[0.0], precision, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _prf(tp: int, n_det: int, n_truth: int) -> dict[str, float]:
    p = tp / n_det if n_det else (1.0 if n_truth == 0 else 0.0)
    r = tp / n_truth if n_truth else 1.0
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return {"precision": round(p, 4), "recall": round(r, 4), "f_score": round(f, 4)}


def evaluate(
    detections: Sequence[Sequence[Scored]],
    truths: Sequence[Sequence[tuple[tuple[float, float, float, float], str]]],
    types: Sequence[str],
    *,
    operating_threshold: float = 0.0,
    iou_threshold: float = IOU_THRESHOLD,
) -> dict[str, Any]:
    """Score per-image detections against per-image ground truth (same order).

    ``detections`` may include low-confidence ones: all of them feed AP, only those with
    ``confidence >= operating_threshold`` count for precision/recall/F-score and counting.
    """
    if len(detections) != len(truths):
        raise ValueError(f"{len(detections)} detection lists for {len(truths)} images")
    per_type: dict[str, dict[str, Any]] = {}
    conf: dict[str, list[float]] = {t: [] for t in types}
    hits_all: dict[str, list[bool]] = {t: [] for t in types}
    tp_op: Counter[str] = Counter()
    det_op: Counter[str] = Counter()
    n_truth: Counter[str] = Counter()
    exact = 0
    abs_err_total = 0
    abs_err_type: Counter[str] = Counter()
    for dets, gts in zip(detections, truths, strict=True):
        hits = match(dets, gts, iou_threshold)
        for d, h in zip(dets, hits, strict=True):
            conf.setdefault(d.type, []).append(d.confidence)
            hits_all.setdefault(d.type, []).append(h)
        # The operating point is matched on its own: dropping low-confidence detections
        # can only free ground truth, never change which confident detection hits.
        kept = [d for d in dets if d.confidence >= operating_threshold]
        for d, h in zip(kept, match(kept, gts, iou_threshold), strict=True):
            det_op[d.type] += 1
            tp_op[d.type] += int(h)
        pred_counts = Counter(d.type for d in kept)
        true_counts = Counter(kind for _, kind in gts)
        n_truth.update(true_counts)
        errs = {t: abs(pred_counts.get(t, 0) - true_counts.get(t, 0)) for t in set(types) | set(pred_counts)}
        abs_err_type.update(errs)
        abs_err_total += sum(errs.values())
        exact += int(sum(errs.values()) == 0)
    aps = []
    for t in types:
        ap = average_precision(np.array(conf[t], dtype=float), np.array(hits_all[t], dtype=bool), n_truth[t])
        if not np.isnan(ap):
            aps.append(ap)
        per_type[t] = {
            **_prf(tp_op[t], det_op[t], n_truth[t]),
            "ap": None if np.isnan(ap) else round(ap, 4),
            "truth": n_truth[t],
            "detected": det_op[t],
            "true_positives": tp_op[t],
            "count_mae": round(abs_err_type[t] / max(1, len(truths)), 4),
        }
    n_img = len(truths)
    return {
        "images": n_img,
        "iou_threshold": iou_threshold,
        "operating_threshold": operating_threshold,
        **_prf(sum(tp_op.values()), sum(det_op.values()), sum(n_truth.values())),
        "map": round(float(np.mean(aps)), 4) if aps else None,
        "truth": sum(n_truth.values()),
        "detected": sum(det_op.values()),
        "true_positives": sum(tp_op.values()),
        "count_accuracy": round(exact / n_img, 4) if n_img else None,
        "count_mae": round(abs_err_total / n_img, 4) if n_img else None,
        "per_type": per_type,
    }
