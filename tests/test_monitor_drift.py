"""Sliced-Wasserstein permutation test: exact distance, calibrated null, power on a planted shift."""

from __future__ import annotations

import numpy as np
import ot
import pytest
from scipy.stats import wasserstein_distance

from fabsight.errors import FabsightError
from fabsight.monitor.drift import drift_test
from fabsight.monitor.features import GEOMETRIC_FEATURES, FeatureTable, geometric_features

N = 31
_r, _c = np.mgrid[:N, :N]
RHO = np.hypot((_r - N // 2) / (N / 2), (_c - N // 2) / (N / 2))


def _wafers(rng: np.random.Generator, n: int, ring_fraction: float) -> np.ndarray:
    """Features of ``n`` wafers with 5 % random fails; ``ring_fraction`` of them gain an edge ring."""
    out = []
    for _ in range(n):
        g = np.where(RHO <= 1, 1, 0).astype(np.uint8)
        g[(RHO <= 1) & (rng.random(RHO.shape) < 0.05)] = 2
        if rng.random() < ring_fraction:
            g[(RHO <= 1) & (RHO > 0.85) & (rng.random(RHO.shape) < 0.8)] = 2
        out.append(geometric_features(g))
    return np.array(out)


def test_distance_equals_pot_and_scipy() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 5)), rng.normal(size=(47, 5)) + 0.3
    res = drift_test(a, b, n_projections=40, n_permutations=20, seed=3)
    pooled = np.vstack([a, b])
    z = (pooled - pooled.mean(0)) / pooled.std(0)
    theta = np.random.default_rng(3).standard_normal((5, 40))
    theta /= np.linalg.norm(theta, axis=0)
    assert res.distance == pytest.approx(ot.sliced_wasserstein_distance(z[:30], z[30:], projections=theta, p=2))
    w1 = drift_test(a, b, n_projections=4, n_permutations=5, p=1)
    by_name = {s.name: s.distance for s in w1.per_feature}
    assert by_name["x0"] == pytest.approx(wasserstein_distance(z[:30, 0], z[30:, 0]))


def test_seeded_and_reproducible() -> None:
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(20, 3)), rng.normal(size=(20, 3))
    r1 = drift_test(a, b, n_permutations=99, seed=7)
    r2 = drift_test(a, b, n_permutations=99, seed=7)
    assert r1.to_dict() == r2.to_dict()
    # p is a multiple of 1/(n_permutations + 1) and never 0.
    assert (r1.p_value * 100) == pytest.approx(round(r1.p_value * 100)) and r1.p_value >= 0.01


def test_null_keeps_nominal_false_alarm_rate() -> None:
    rng = np.random.default_rng(3)
    p = [
        drift_test(
            rng.normal(size=(25, 4)), rng.normal(size=(25, 4)), n_projections=16, n_permutations=99, seed=s
        ).p_value
        for s in range(40)
    ]
    # 40 trials at α = 0.05: 2 expected; P(≥ 7 | valid test) < 0.5 %.
    assert sum(v < 0.05 for v in p) < 7
    # A valid permutation p-value is roughly uniform: about half fall below 0.5.
    assert 10 <= sum(v < 0.5 for v in p) <= 30


def test_planted_edge_ring_is_found_and_named() -> None:
    rng = np.random.default_rng(4)
    base = FeatureTable(_wafers(rng, 60, 0.0), list(GEOMETRIC_FEATURES))
    shifted = FeatureTable(_wafers(rng, 60, 0.2), list(GEOMETRIC_FEATURES))
    res = drift_test(base, shifted, n_permutations=999, seed=0)
    assert res.drift and res.p_value == pytest.approx(1 / 1000)
    top = [s.name for s in res.per_feature[:3]]
    assert {"fail_rate_ring4", "fail_rate_edge_band"} & set(top)
    assert res.per_feature[0].smd > 0 and res.per_feature[0].p_holm < 0.05
    same = drift_test(base, FeatureTable(_wafers(rng, 60, 0.0), list(GEOMETRIC_FEATURES)), n_permutations=199)
    assert not same.drift


def test_pattern_changes_with_predictions() -> None:
    names = ["x"]
    a = FeatureTable(np.zeros((20, 1)), names, ["none"] * 20, ["Edge-Ring", "none"])
    b = FeatureTable(np.ones((20, 1)), names, ["Edge-Ring"] * 10 + ["none"] * 10, ["Edge-Ring", "none"])
    res = drift_test(a, b, n_permutations=50)
    ring = res.pattern_changes[0]
    assert (ring.pattern, ring.count_a, ring.count_b, ring.change) == ("Edge-Ring", 0, 10, 0.5)
    assert ring.p_value < 0.001


def test_user_mistakes() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(FabsightError, match="different features"):
        drift_test(rng.normal(size=(5, 2)), rng.normal(size=(5, 3)))
    with pytest.raises(FabsightError, match="at least 2 wafers"):
        drift_test(rng.normal(size=(1, 2)), rng.normal(size=(5, 2)))
    with pytest.raises(FabsightError, match="NaN"):
        drift_test(np.full((3, 2), np.nan), rng.normal(size=(5, 2)))
