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
