"""The default drift test on real WM-811K maps, with the shipped model (validation piece: never trained on)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.deploy import load_predictor
from fabsight.io import read_maps, write_folder
from fabsight.monitor import drift_test, extract_features
from fabsight.monitor.features import FeatureTable
from fabsight.synth import generate_dataset
from fabsight.wafer.pretrained import PRETRAINED_DIR, pretrained_dir

WINDOW = 300
REFERENCE = 1200  # baseline wafers a window is compared with, as in `fabsight monitor` (4 lots of 300)
POOL = REFERENCE + WINDOW  # random maps classified once; windows are drawn from them
SETTINGS = {"n_projections": 16, "n_permutations": 299}


@pytest.fixture(scope="module")
def real(shared) -> FeatureTable:
    """Features (shipped model) of POOL random maps of the validation piece, then WINDOW // 10 more
    Edge-Ring maps."""
    maps = read_maps(shared / "data" / "wm811k" / "LSWMD_val.pkl")
    truth = np.array([m.labels[0] for m in maps])
    rng = np.random.default_rng(0)
    ring = rng.choice(np.flatnonzero(truth == "Edge-Ring"), size=WINDOW // 10, replace=False)
    rest = rng.choice(np.setdiff1d(np.arange(len(maps)), ring), size=POOL, replace=False)
    model = load_predictor(pretrained_dir(), n_threads=1)
    return extract_features([maps[i] for i in np.concatenate([rest, ring])], model=model)


def test_same_distribution_windows_do_not_alarm(real) -> None:
    rng = np.random.default_rng(1)
    results = []
    for s in range(6):
        idx = rng.permutation(POOL)
        results.append(drift_test(real.subset(idx[:WINDOW]), real.subset(idx[WINDOW : 2 * WINDOW]), seed=s, **SETTINGS))
    assert all([c.name for c in r.components] == ["features", "pattern mix", "embedding"] for r in results)
    # 6 draws at α = 0.05: 0.3 alarms expected; P(≥ 2 | valid test) < 3.3 %.
    assert sum(r.drift for r in results) <= 1


def test_ten_percent_edge_ring_is_found(real) -> None:
    """A window of 300 in which 30 wafers are Edge-Ring wafers beyond the usual mix, against 1,200
    reference wafers: the features-only test misses it, the default test finds it."""
    extra = np.arange(POOL, POOL + WINDOW // 10)
    rng = np.random.default_rng(2)
    p, p_features = [], []
    for s in range(3):
        idx = rng.permutation(POOL)
        a, b = idx[:REFERENCE], np.concatenate([idx[REFERENCE : REFERENCE + WINDOW - len(extra)], extra])
        res = drift_test(real.subset(a), real.subset(b), seed=s, **SETTINGS)
        assert {c.pattern: c.change for c in res.pattern_changes}["Edge-Ring"] > 0.05  # the model sees them
        p.append(res.p_value)
        p_features.append(res.components[0].p_value)
    assert np.median(p) <= 0.01 and max(p) < 0.05, p
    assert np.median(p_features) > np.median(p), (p_features, p)


def test_drift_cli_uses_the_shipped_model_by_default(tmp_path) -> None:
    assert (PRETRAINED_DIR / "card.json").is_file()
    a = generate_dataset(6, classes=("none",), shapes=((26, 26),), seed=1)
    b = generate_dataset(6, classes=("Edge-Ring",), shapes=((26, 26),), seed=2)
    write_folder(a, tmp_path / "a")
    write_folder(b, tmp_path / "b")
    args = ["drift", str(tmp_path / "a"), str(tmp_path / "b"), "--permutations", "99", "--projections", "8"]
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["model"] == {"path": str(PRETRAINED_DIR), "shipped": True}
    assert [c["name"] for c in res["components"]] == ["features", "pattern mix", "embedding"]
    assert res["drift"]
    plain = CliRunner().invoke(app, args)
    assert plain.exit_code == 0 and "model: the shipped WM-811K model" in plain.stdout
    r = CliRunner().invoke(
        app, ["monitor", str(tmp_path / "a"), str(tmp_path / "b"), "--baseline", "1", "--chart", "p", "--json"]
    )
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["model"]["shipped"] is True
