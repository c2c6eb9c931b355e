"""Scoring a wafer model on labelled maps (what ``fabsight wafer eval`` prints)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fabsight.errors import FabsightError
from fabsight.types import WaferMap
from fabsight.wafer.classifier import WaferClassifier, label_tuple


def _check_known(clf: WaferClassifier, maps: Sequence[WaferMap], labels: list[tuple[str, ...]]) -> None:
    """A label the model cannot output would silently count as an error: refuse it instead."""
    known = set(clf.classes_) | ({"none"} if clf.multilabel else set())
    for m, t in zip(maps, labels, strict=True):
        for name in t:
            if name not in known:
                raise FabsightError(m.source or None, f"label {name!r} is not a class of the model: {clf.classes_}")


def evaluate(clf: WaferClassifier, maps: Sequence[WaferMap]) -> dict[str, Any]:
    """Metrics of ``clf`` on labelled ``maps`` (their ``labels``).

    Single-label: accuracy, balanced accuracy, macro-F1, per-class precision/recall/F1/support
    and the confusion matrix. Multi-label: exact-match accuracy, per-label scores, macro-F1.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        f1_score,
        precision_recall_fscore_support,
    )

    if len(maps) == 0:
        raise FabsightError(None, "no labelled maps to evaluate on")
    labels = [label_tuple(m.labels) if clf.multilabel else tuple(m.labels) for m in maps]
    if not clf.multilabel:
        for m, t in zip(maps, labels, strict=True):
            if len(t) != 1:
                raise FabsightError(m.source or None, f"has labels {t}: a single-label model needs exactly one")
    _check_known(clf, maps, labels)
    pred = clf.predict(maps)
    classes = list(clf.classes_)
    if clf.multilabel:
        index = {c: j for j, c in enumerate(classes)}

        def hot(sets: Sequence[tuple[str, ...]]) -> np.ndarray:
            out = np.zeros((len(sets), len(classes)), dtype=int)
            for i, s in enumerate(sets):
                for n in s:
                    if n != "none":
                        out[i, index[n]] = 1
            return out

        truth, guess = hot(labels), hot(pred)
        p, r, f, s = precision_recall_fscore_support(truth, guess, zero_division=0)
        return {
            "n": len(maps),
            "exact_match_accuracy": float((truth == guess).all(axis=1).mean()),
            "macro_f1": float(f1_score(truth, guess, average="macro", zero_division=0)),
            "per_label": {
                c: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]), "support": int(s[j])}
                for j, c in enumerate(classes)
            },
        }
    truth_s = [t[0] for t in labels]
    p, r, f, s = precision_recall_fscore_support(truth_s, pred, labels=classes, zero_division=0)
    present = [c for c in classes if c in set(truth_s)]
    return {
        "n": len(maps),
        "accuracy": float(accuracy_score(truth_s, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(truth_s, pred)),
        # macro-F1 over the classes present in the data, so a subset eval is not penalised
        "macro_f1": float(f1_score(truth_s, pred, labels=present, average="macro", zero_division=0)),
        "per_class": {
            c: {"precision": float(p[j]), "recall": float(r[j]), "f1": float(f[j]), "support": int(s[j])}
            for j, c in enumerate(classes)
        },
        "confusion": {"labels": classes, "matrix": confusion_matrix(truth_s, pred, labels=classes).tolist()},
    }
