"""Decision thresholds a person can read, check and change.

anomalib 2.x folds its threshold into normalised scores and the exported graph, and its
users cannot find or retune it afterwards (issues #2620, #2933, #3033). Here a threshold
is a plain number on the model's own score scale, stored in the card next to *how* it was
chosen and what that choice means ("1 % of held-out good images would be flagged"), and
every predict call can override it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fabsight.errors import FabsightError


@dataclass
class Threshold:
    """An image is anomalous when its score is ``>= value``; ``method`` says where ``value`` came from."""

    value: float
    method: str
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Threshold:
        return cls(float(d["value"]), str(d["method"]), dict(d.get("details", {})))

    def describe(self) -> str:
        """One sentence for people: the number and what choosing it meant."""
        d = self.details
        if self.method == "good-quantile":
            return (
                f"{self.value:.4g}: flags {d['measured_false_alarm_rate']:.2%} of {d['n_good']} held-out good images "
                f"(target false-alarm rate {d['false_alarm_rate']:.2%})"
            )
        if self.method == "best-f1":
            return f"{self.value:.4g}: best image F1 {d['f1']:.3f} on {d['n_images']} validation images"
        return f"{self.value:.4g}: set by hand"


def threshold_from_good(good_scores: np.ndarray, false_alarm_rate: float = 0.01) -> Threshold:
    """The lowest threshold that flags at most ``false_alarm_rate`` of these good images.

    Use scores of good images the model did *not* learn from: a memory bank scores its own
    training images near zero, which would put the threshold far too low. With ``n`` good
    images no rate below ``1/n`` can be resolved; the details record the rate achieved.
    """
    s = np.sort(np.asarray(good_scores, dtype=np.float64))
    if s.size == 0:
        raise FabsightError(None, "no good images to choose a threshold from")
    if not 0.0 <= false_alarm_rate < 1.0:
        raise FabsightError(None, f"false-alarm rate must be in [0, 1), got {false_alarm_rate}")
    n = s.size
    allowed = int(np.floor(false_alarm_rate * n))  # good images that may score at or above the threshold
    if allowed == 0:
        value = float(np.nextafter(s[-1], np.inf))
    else:
        # Just above the (allowed+1)-th highest score: exactly `allowed` images reach it
        # unless ties push it further up.
        value = float(np.nextafter(s[n - allowed - 1], np.inf))
    measured = float(np.mean(s >= value))
    return Threshold(
        value,
        "good-quantile",
        {
            "false_alarm_rate": false_alarm_rate,
            "measured_false_alarm_rate": measured,
            "n_good": n,
            "good_score_quantiles": {q: float(np.quantile(s, float(q))) for q in ("0.5", "0.9", "0.99", "1.0")},
        },
    )


def threshold_best_f1(labels: np.ndarray, scores: np.ndarray) -> Threshold:
    """The threshold with the best image-level F1 on a validation set that has defects."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.size != s.size:
        raise ValueError(f"{y.size} labels but {s.size} scores")
    if not y.any() or y.all():
        raise FabsightError(None, "a best-F1 threshold needs validation images both with and without defects")
    order = np.argsort(-s, kind="stable")
    s_sorted, y_sorted = s[order], y[order]
    tp = np.cumsum(y_sorted)
    predicted = np.arange(1, s.size + 1)
    f1 = 2 * tp / (predicted + y.sum())
    # A threshold can only sit at the last of a run of tied scores.
    last_of_tie = np.append(s_sorted[1:] != s_sorted[:-1], True)
    f1 = np.where(last_of_tie, f1, -1.0)
    k = int(np.argmax(f1))
    details = {"f1": float(f1[k]), "n_images": int(s.size), "n_anomalous": int(y.sum())}
    return Threshold(float(s_sorted[k]), "best-f1", details)


def manual_threshold(value: float) -> Threshold:
    return Threshold(float(value), "manual", {})
