"""Sliced-Wasserstein permutation test: exact distance, calibrated null, power on a planted shift."""

from __future__ import annotations

import numpy as np
import ot
import pytest
from scipy.stats import wasserstein_distance

from fabsight.errors import FabsightError
from fabsight.monitor.drift import combined_p, drift_test
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
    with pytest.raises(FabsightError, match="combine must be one of fisher, min-p"):
        drift_test(rng.normal(size=(5, 2)), rng.normal(size=(5, 2)), combine="mean")
    with_emb = FeatureTable(rng.normal(size=(5, 2)), ["a", "b"], embedding=rng.normal(size=(5, 4)))
    with pytest.raises(FabsightError, match="different embeddings"):
        drift_test(with_emb, FeatureTable(rng.normal(size=(5, 2)), ["a", "b"]))


def _table(rng: np.random.Generator, n: int, ring_share: float, emb_shift: float = 0.0) -> FeatureTable:
    """``n`` wafers with identically distributed features; ``ring_share`` of them predicted Edge-Ring,
    embeddings N(emb_shift, 1) in 8 dimensions."""
    predicted = ["Edge-Ring" if u < ring_share else "none" for u in rng.random(n)]
    emb = rng.normal(size=(n, 8)) + emb_shift
    return FeatureTable(rng.normal(size=(n, 3)), ["x", "y", "z"], predicted, ["Edge-Ring", "none"], emb)


def test_pattern_mix_finds_what_the_features_miss() -> None:
    rng = np.random.default_rng(7)
    a, b = _table(rng, 300, 0.10), _table(rng, 300, 0.25)
    res = drift_test(a, b, n_projections=16, n_permutations=499)
    comp = {c.name: c for c in res.components}
    assert list(comp) == ["features", "pattern mix", "embedding"]
    # 10 % vs 25 % Edge-Ring: squared z ≈ 23 expected; the features and embedding do not differ.
    assert comp["pattern mix"].p_value == pytest.approx(1 / 500) and comp["pattern mix"].statistic > 10
    assert comp["features"].p_value > 0.01 and comp["embedding"].p_value > 0.01
    assert res.drift and res.p_value <= 0.01
    assert drift_test(a, b, n_projections=16, n_permutations=499, combine="min-p").p_value <= 0.01


def test_embedding_component_finds_a_shift_without_names() -> None:
    rng = np.random.default_rng(8)
    a, b = _table(rng, 200, 0.1), _table(rng, 200, 0.1, emb_shift=0.4)
    res = drift_test(a, b, n_projections=16, n_permutations=199)
    comp = {c.name: c.p_value for c in res.components}
    assert comp["embedding"] == pytest.approx(1 / 200) and comp["pattern mix"] > 0.01
    # Fisher's combination pays for the two silent components; the smallest-p combination pays at
    # most Bonferroni's factor (3 components) and usually less.
    assert res.drift
    assert drift_test(a, b, n_projections=16, n_permutations=199, combine="min-p").p_value <= 3 / 200


def test_combined_test_keeps_the_false_alarm_rate() -> None:
    rng = np.random.default_rng(9)
    p = {"fisher": [], "min-p": []}
    for s in range(40):
        a, b = _table(rng, 40, 0.2), _table(rng, 40, 0.2)
        for how in p:
            p[how].append(drift_test(a, b, n_projections=8, n_permutations=99, seed=s, combine=how).p_value)
    for values in p.values():
        # 40 trials at α = 0.05: 2 expected; P(≥ 7 | valid test) < 0.5 %; about half below 0.5.
        assert sum(v < 0.05 for v in values) < 7 and 10 <= sum(v < 0.5 for v in values) <= 30


def test_combination_of_one_statistic_is_its_own_p_value() -> None:
    t = np.array([[3.0], [1.0], [3.0], [5.0], [0.0]])  # observed 3: itself, a tie and 5 are ≥ 3
    assert combined_p(t) == combined_p(t, "min-p") == pytest.approx(3 / 5)
    two = np.array([[3.0, 9.0], [1.0, 1.0], [3.0, 2.0], [5.0, 0.0], [0.0, 3.0]])
    # Row p-values: (3/5, 1/5), (4/5, 5/5), (3/5, 3/5), (1/5, 4/5), (5/5, 2/5); min-p: only row 0 and
    # row 3 reach 1/5.
    assert combined_p(two, "min-p") == pytest.approx(2 / 5)
    assert combined_p(two, "fisher") == pytest.approx(1 / 5)
