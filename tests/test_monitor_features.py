"""Geometric wafer features on hand-drawn grids whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest

from fabsight.monitor.features import GEOMETRIC_FEATURES, extract_features, geometric_features
from fabsight.types import WaferMap

N = 31
_r, _c = np.mgrid[:N, :N]
RHO = np.hypot((_r - N // 2) / (N / 2), (_c - N // 2) / (N / 2))


def _wafer() -> np.ndarray:
    return np.where(RHO <= 1, 1, 0).astype(np.uint8)


def _f(grid: np.ndarray) -> dict[str, float]:
    return dict(zip(GEOMETRIC_FEATURES, geometric_features(grid), strict=True))


def test_clean_wafer_is_all_zero() -> None:
    assert not geometric_features(_wafer()).any()
    assert not geometric_features(np.zeros((10, 10), np.uint8)).any()  # no dies at all


def test_edge_ring() -> None:
    g = _wafer()
    g[(RHO <= 1) & (RHO > 0.75)] = 2
    f = _f(g)
    assert f["fail_rate_ring4"] > 0.7 and f["fail_rate_ring0"] == 0
    assert f["fail_rate_edge_band"] > 0.95
    assert f["centre_fail_share"] == 0
    assert f["largest_cluster_fraction"] == pytest.approx(f["fail_fraction"])  # one connected ring
    assert f["cluster_count"] == 1
    # Every sector holds part of the ring.
    assert min(f[f"fail_rate_sector_{s}"] for s in ("E", "N", "W", "S")) > 0.2


def test_centre_blob_and_scratch() -> None:
    g = _wafer()
    g[(RHO < 0.2)] = 2
    f = _f(g)
    assert f["centre_fail_share"] == 1.0 and f["fail_rate_ring0"] == 1.0 and f["fail_rate_ring4"] == 0
    assert f["line_likeness"] < 0.1  # round

    g = _wafer()
    g[5:26, 8] = 2  # a vertical scratch, 21 dies
    f = _f(g)
    assert f["line_likeness"] == pytest.approx(1.0)
    assert f["cluster_count"] == 1
    assert f["fail_fraction"] == pytest.approx(21 / np.count_nonzero(RHO <= 1))


def test_sector_and_cluster_count() -> None:
    g = _wafer()
    g[1:5, 13:18] = 2  # a patch at the top (north) of the map
    g[26:28, 14:16] = 2  # a second small cluster at the bottom (4 dies)
    g[15, 3] = 2  # an isolated die: not a cluster
    f = _f(g)
    sectors = {s: f[f"fail_rate_sector_{s}"] for s in ("E", "NE", "N", "NW", "W", "SW", "S", "SE")}
    assert max(sectors, key=sectors.get) == "N"
    assert sectors["S"] > 0 and sectors["E"] == 0 and sectors["W"] > 0
    assert f["cluster_count"] == 2


class _FakeModel:
    """Classifier stand-in with the wafer model's interface: fail fraction decides the class."""

    classes_ = np.array(["none", "Near-full"])

    def predict_proba(self, maps):
        ff = np.array([m.n_fail / m.n_dies for m in maps])
        return np.stack([1 - ff, ff], axis=1)

    def embed(self, maps):
        return np.array([[m.n_fail, m.n_good, 1.0] for m in maps])


def test_model_columns_and_predictions() -> None:
    full = _wafer()
    full[RHO <= 1] = 2
    t = extract_features([WaferMap(_wafer()), WaferMap(full)], model=_FakeModel())
    assert t.names[len(GEOMETRIC_FEATURES) :] == ["p[none]", "p[Near-full]"]
    assert t.predicted == ["none", "Near-full"]
    assert t.values.shape == (2, len(GEOMETRIC_FEATURES) + 2)
    assert t.embedding is not None and t.embedding[1, 0] == full[RHO <= 1].size  # n_fail of the full wafer
    assert t.subset([1]).predicted == ["Near-full"] and t.subset([1]).embedding.tolist() == t.embedding[1:].tolist()
    assert extract_features([WaferMap(full)], model=_FakeModel(), embeddings=False).embedding is None
    plain = extract_features([WaferMap(_wafer())])
    assert plain.names == list(GEOMETRIC_FEATURES) and plain.predicted is None
