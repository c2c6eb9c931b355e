"""Post-hoc calibration and the "needs review" decisions, all fitted on held-out data.

Shared by the wafer-map and the die classifiers. A network trained to zero loss is
over-confident, so its softmax is rescaled by one temperature fitted on examples it never
trained on (Guo et al. 2017: one parameter cannot change the ranking, so accuracy is
untouched). For wafer maps, the same held-out maps choose the
confidence below which a wafer goes to a human and, for multi-label models, the
per-label decision thresholds. Out-of-distribution maps (a pattern the model never saw,
a broken map) can still get a confident softmax, so they are caught separately by the
Mahalanobis distance of their embedding to the nearest training class. Self-training
(die and wafer classifiers) keeps an unlabelled example only where its calibrated
confidence is high, class by class (:func:`select_pseudo_labels`).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit, log_softmax, softmax


def _nll(logits: np.ndarray, soft: np.ndarray, multilabel: bool, temperature: float) -> float:
    z = logits / temperature
    if multilabel:
        # binary cross-entropy against soft targets, written stably: log(1+e^z) - t*z
        return float(np.mean(np.logaddexp(0.0, z) - soft * z))
    return float(-np.mean(np.sum(soft * log_softmax(z, axis=1), axis=1)))


def fit_temperature(logits: np.ndarray, targets: np.ndarray, multilabel: bool) -> float:
    """The temperature in [0.05, 20] minimising held-out log-loss.

    The targets are smoothed by Laplace's rule of succession (ε = 1/(n+2)): when all n
    held-out maps are right, the evidence says "accuracy about (n+1)/(n+2)", not 1, and
    plain log-loss would drive the temperature to its lower bound and every probability
    to exactly 0 or 1.
    """
    eps = 1.0 / (len(logits) + 2)
    if multilabel:
        soft = targets * (1 - eps) + eps / 2
    else:
        n_classes = logits.shape[1]
        soft = np.full(logits.shape, eps / n_classes)
        soft[np.arange(len(logits)), targets] += 1 - eps
    res = minimize_scalar(
        lambda log_t: _nll(logits, soft, multilabel, float(np.exp(log_t))),
        bounds=(np.log(0.05), np.log(20.0)),
        method="bounded",
    )
    return float(np.exp(res.x))


def probabilities(logits: np.ndarray, temperature: float, multilabel: bool) -> np.ndarray:
    z = logits / temperature
    return expit(z) if multilabel else softmax(z, axis=1)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, multilabel: bool, n_bins: int = 15) -> float:
    """ECE: |accuracy − confidence| averaged over equal-width confidence bins.

    Single-label: the top-label confidence against whether the top label is right.
    Multi-label: every per-label probability against that label's presence.
    """
    if multilabel:
        conf = probs.ravel()
        correct = targets.ravel().astype(float)
    else:
        conf = probs.max(axis=1)
        correct = (probs.argmax(axis=1) == targets).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def review_threshold(confidence: np.ndarray, correct: np.ndarray, target_precision: float, floor: float) -> float:
    """Lowest confidence at which accepted held-out predictions are ≥ ``target_precision`` right.

    Never below ``floor`` (0.5 for single-label: a prediction more likely wrong than right
    always goes to review). If no threshold reaches the target, the highest held-out
    confidence is used, so only the most certain predictions pass unreviewed.
    """
    order = np.argsort(-confidence)
    conf_sorted = confidence[order]
    precision = np.cumsum(correct[order]) / np.arange(1, len(order) + 1)
    ok = np.nonzero(precision >= target_precision)[0]
    if len(ok) == 0:
        return float(max(floor, conf_sorted[0]))
    return float(max(floor, conf_sorted[ok[-1]]))


def label_thresholds(probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-label decision thresholds maximising held-out F1 (0.5 where a label is absent)."""
    grid = np.linspace(0.05, 0.95, 19)
    out = np.full(probs.shape[1], 0.5)
    for j in range(probs.shape[1]):
        t = targets[:, j].astype(bool)
        if not t.any():
            continue
        pred = probs[:, j][:, None] >= grid[None, :]
        f1 = 2 * (pred & t[:, None]).sum(axis=0) / (pred.sum(axis=0) + t.sum())
        best = grid[np.isclose(f1, f1.max())]
        out[j] = best[np.argmin(np.abs(best - 0.5))]  # among ties, the least surprising threshold
    return out


def most_likely_combination(probs: np.ndarray, combinations: np.ndarray) -> np.ndarray:
    """Per map, the row of ``combinations`` (K×C, 0/1) most probable under independent labels.

    Exact-match decoding for multi-label models: where only some label sets occur (mixed
    patterns in a fab's data), the best whole answer is the likeliest known set, not each
    label cut at its own threshold, which can yield a set that was never seen. The log-
    likelihood of a set is ``Σ t log p + (1 - t) log(1 - p)``; ties go to the first row.
    """
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-12, 1 - 1e-12)
    t = np.asarray(combinations, dtype=np.float64)
    loglik = (np.log(p) - np.log1p(-p)) @ t.T  # + Σ log(1 - p), the same for every row
    return np.asarray(combinations)[loglik.argmax(axis=1)]


class MahalanobisOOD:
    """Distance of an embedding to the nearest group mean under a shared covariance.

    Groups are classes (or label combinations for multi-label models). The covariance is
    Ledoit–Wolf shrunk, so a few-shot model with fewer maps than embedding dimensions
    still gets an invertible matrix.
    """

    def __init__(self, means: np.ndarray, precision: np.ndarray, threshold: float) -> None:
        self.means = means
        self.precision = precision
        self.threshold = threshold

    @classmethod
    def fit(cls, embeddings: np.ndarray, groups: np.ndarray) -> MahalanobisOOD:
        from sklearn.covariance import LedoitWolf

        keys = np.unique(groups)
        means = np.stack([embeddings[groups == k].mean(axis=0) for k in keys])
        centred = embeddings - means[np.searchsorted(keys, groups)]
        precision = LedoitWolf(assume_centered=True).fit(centred).precision_
        return cls(means.astype(np.float32), precision.astype(np.float32), float("inf"))

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        diff = embeddings[:, None, :] - self.means[None, :, :]
        d2 = np.einsum("ncd,ncd->nc", diff @ self.precision, diff)  # one BLAS product: 16x a 3-operand einsum
        return np.sqrt(np.clip(d2.min(axis=1), 0.0, None))

    def set_threshold(self, in_distribution_scores: np.ndarray, quantile: float) -> None:
        self.threshold = float(np.quantile(in_distribution_scores, quantile))


def select_pseudo_labels(proba: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``proba`` (calibrated class probabilities) worth a pseudo-label.

    A row qualifies when its top probability reaches ``threshold``. Classes are then balanced
    by *share*, not by count: each class keeps at most the median class's share of the rows
    predicted as it (its most confident ones). A class the teacher is rarely sure of thus
    cannot be drowned by the easy ones, while a common defect type keeps its weight in the
    pool; a cap at the median class's *count* would throw away most of the majority class
    of a real, imbalanced lot (the loss is class-balanced anyway). Returns the kept row
    indices (sorted), the qualifying count per class and the cap per class.
    """
    conf, label = proba.max(axis=1), proba.argmax(axis=1)
    predicted = np.bincount(label, minlength=proba.shape[1])
    confident = np.flatnonzero(conf >= threshold)
    counts = np.bincount(label[confident], minlength=proba.shape[1])
    seen = predicted > 0
    share = float(np.median(counts[seen] / predicted[seen])) if seen.any() else 0.0
    caps = np.rint(share * predicted).astype(int)
    by_class = [confident[label[confident] == c] for c in range(proba.shape[1])]
    keep = [idx[np.argsort(-conf[idx], kind="stable")[:cap]] for idx, cap in zip(by_class, caps, strict=True)]
    return np.sort(np.concatenate(keep)), counts, caps
