"""Classification metrics in one JSON-able dict (shared by ``die eval``, training cards and benchmarks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """accuracy, balanced_accuracy, macro_f1, per_class {precision, recall, f1, support}, confusion.

    ``classes`` fixes the order of ``per_class`` and of the confusion matrix rows (truth)
    and columns (prediction); classes absent from ``y_true`` get support 0.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    yt = np.asarray(y_true).astype(str)
    yp = np.asarray(y_pred).astype(str)
    labels = [str(c) for c in classes]
    present = [c for c in labels if (yt == c).any()]
    p, r, f, s = precision_recall_fscore_support(yt, yp, labels=labels, zero_division=0)
    recall_present = [r[labels.index(c)] for c in present]
    return {
        "n": len(yt),
        "accuracy": float(accuracy_score(yt, yp)),
        "balanced_accuracy": float(np.mean(recall_present)) if present else 0.0,
        "macro_f1": float(np.mean([f[labels.index(c)] for c in present])) if present else 0.0,
        "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
                      for i, c in enumerate(labels)},
        "confusion": {"labels": labels, "matrix": confusion_matrix(yt, yp, labels=labels).tolist()},
    }


def bootstrap_interval(y_true: Sequence[str], y_pred: Sequence[str], *, n_boot: int = 1000, level: float = 0.95,
                       seed: int = 0) -> dict[str, Any]:
    """Percentile bootstrap interval of accuracy and balanced accuracy over the test images.

    Why: a test set of a few hundred images moves accuracy by points from one draw to the next;
    the interval says how far the figure can be trusted (images resampled with replacement).
    """
    yt = np.asarray(y_true).astype(str)
    yp = np.asarray(y_pred).astype(str)
    classes, ti = np.unique(yt, return_inverse=True)
    hit = yt == yp
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(yt), size=(n_boot, len(yt)))
    acc = hit[idx].mean(axis=1)
    bal = []
    for row in idx:
        counts = np.bincount(ti[row], minlength=len(classes))
        hits = np.bincount(ti[row], weights=hit[row], minlength=len(classes))
        bal.append(float(np.mean(hits[counts > 0] / counts[counts > 0])))
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    return {"level": level, "n_boot": n_boot, "method": "percentile bootstrap over test images",
            "accuracy": [float(np.quantile(acc, lo)), float(np.quantile(acc, hi))],
            "balanced_accuracy": [float(np.quantile(bal, lo)), float(np.quantile(bal, hi))]}
