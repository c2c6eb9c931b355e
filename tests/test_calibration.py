"""Calibration pieces with known answers: temperature, ECE, review and label thresholds, OOD."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax

from fabsight import calibration as cal


def _overconfident(n: int, seed: int = 0, true_t: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from softmax(z); the model reports z * true_t (too sharp by true_t)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 4))
    p = softmax(z, axis=1)
    y = np.array([rng.choice(4, p=row) for row in p])
    return z * true_t, y


def test_temperature_recovers_the_sharpening_and_lowers_ece() -> None:
    logits, y = _overconfident(4000)
    t = cal.fit_temperature(logits, y, multilabel=False)
    assert t == pytest.approx(3.0, rel=0.1)
    before = cal.expected_calibration_error(cal.probabilities(logits, 1.0, False), y, False)
    after = cal.expected_calibration_error(cal.probabilities(logits, t, False), y, False)
    assert before > 0.1 and after < 0.03


def test_temperature_multilabel() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, size=(3000, 3))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(np.float32)
    assert cal.fit_temperature(z * 0.5, y, multilabel=True) == pytest.approx(0.5, rel=0.1)


def test_perfect_small_validation_set_does_not_drive_probabilities_to_one() -> None:
    logits = np.array([[8.0, 0.0], [0.0, 8.0]] * 5)
    y = np.array([0, 1] * 5)
    t = cal.fit_temperature(logits, y, multilabel=False)
    top = cal.probabilities(logits, t, False).max(axis=1)
    # Laplace: 10 right out of 10 supports about 11/12, not certainty.
    assert top.max() < 0.99 and top.min() > 0.85


def test_ece_known_value() -> None:
    probs = np.array([[0.8, 0.2]] * 10)
    y = np.array([0] * 6 + [1] * 4)  # confidence 0.8, accuracy 0.6
    assert cal.expected_calibration_error(probs, y, False) == pytest.approx(0.2)


def test_review_threshold_picks_lowest_confidence_meeting_precision() -> None:
    conf = np.array([0.99, 0.95, 0.9, 0.8, 0.7, 0.6])
    correct = np.array([1, 1, 1, 1, 0, 0], dtype=bool)
    assert cal.review_threshold(conf, correct, 0.98, floor=0.5) == 0.8
    assert cal.review_threshold(conf, np.ones(6, bool), 0.98, floor=0.5) == 0.6
    assert cal.review_threshold(conf - 0.3, np.ones(6, bool), 0.98, floor=0.5) == 0.5  # the floor
    assert cal.review_threshold(conf, np.zeros(6, bool), 0.98, floor=0.5) == 0.99  # never precise enough


def test_label_thresholds_separate_each_label() -> None:
    probs = np.array([[0.9, 0.2], [0.35, 0.1], [0.2, 0.3], [0.1, 0.05]])
    targets = np.array([[1, 0], [1, 0], [0, 1], [0, 0]])
    thr = cal.label_thresholds(probs, targets)
    assert 0.2 < thr[0] <= 0.35  # label 0 needs a low threshold to catch 0.35
    assert 0.2 < thr[1] <= 0.3
    assert list(cal.label_thresholds(probs, np.zeros((4, 2)))) == [0.5, 0.5]


def test_mahalanobis_flags_points_away_from_every_class() -> None:
    rng = np.random.default_rng(0)
    emb = np.concatenate([rng.normal(0, 1, (200, 5)), rng.normal(6, 1, (200, 5))])
    groups = np.array(["a"] * 200 + ["b"] * 200)
    ood = cal.MahalanobisOOD.fit(emb, groups)
    ood.set_threshold(ood.score(rng.normal(0, 1, (500, 5))), 0.99)
    inside = ood.score(np.concatenate([rng.normal(0, 1, (100, 5)), rng.normal(6, 1, (100, 5))]))
    far = ood.score(rng.normal(-8, 1, (100, 5)))
    assert np.mean(inside > ood.threshold) < 0.05
    assert np.all(far > ood.threshold)


def test_most_likely_combination_picks_the_likeliest_known_set() -> None:
    known = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1]])
    probs = np.array(
        [
            [0.9, 0.2, 0.1],  # per label: {0} — known
            [0.6, 0.45, 0.1],  # per label: {0}; {0,1} costs log(.55/.45) more → {0}
            [0.9, 0.9, 0.9],  # per label: {0,1,2} — never seen; likeliest known: {0,1}
            [0.1, 0.1, 0.4],  # per label: none; {2} loses to none (0.4 < 0.5)
            [0.3, 0.1, 0.7],  # per label: {2}
        ]
    )
    got = cal.most_likely_combination(probs, known)
    assert got.tolist() == [[1, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 0, 1]]


def test_most_likely_combination_equals_thresholding_when_every_set_is_known() -> None:
    rng = np.random.default_rng(3)
    probs = rng.uniform(0.01, 0.99, size=(200, 4))
    every = np.array([[(k >> j) & 1 for j in range(4)] for k in range(16)])
    assert np.array_equal(cal.most_likely_combination(probs, every), (probs >= 0.5).astype(int))
