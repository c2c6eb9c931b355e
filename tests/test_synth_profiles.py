"""Generator profiles (``default`` vs the ``wm811k`` ranges fitted to real maps) and the
realism statistics they were fitted with: known answers on hand-made and generated maps."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from clikit import run_cli
from fabsight.errors import FabsightError
from fabsight.synth import PARAMS, PROFILES, generate_dataset, generate_map
from fabsight.synth.geometry import wafer_mask
from fabsight.synth.patterns import WM811K_CLASS_NOISE, WM811K_NOISE, WM811K_PARAMS, WM811K_SHAPES
from fabsight.synth.realism import STATISTICS, map_statistics, quantile_shapes

COL = {s: j for j, s in enumerate(STATISTICS)}


def _grid(shape: tuple[int, int], fail: np.ndarray | None = None) -> np.ndarray:
    grid = wafer_mask(shape).astype(np.uint8)
    if fail is not None:
        grid[fail & (grid > 0)] = 2
    return grid


def _stats(maps) -> np.ndarray:
    return np.array([map_statistics(m.grid) for m in maps])


# --- realism statistics on maps with known answers -----------------------------------------


def test_statistics_of_a_clean_and_a_fully_failing_wafer() -> None:
    clean = map_statistics(_grid((26, 26)))
    assert clean[COL["side"]] == 26 and clean[COL["fail_share"]] == 0 and clean[COL["background"]] == 0
    assert clean[COL["largest_share"]] == 0 and np.isnan(clean[COL["pattern_radius"]])
    full = map_statistics(_grid((25, 27), np.ones((25, 27), dtype=bool)))
    assert full[COL["side"]] == 26 and full[COL["fail_share"]] == 1 and full[COL["background"]] == 1
    assert full[COL["largest_share"]] == 1


def test_a_straight_line_has_its_length_and_one_die_width() -> None:
    fail = np.zeros((40, 40), dtype=bool)
    fail[20, 10:30] = True  # 20 dies = one wafer radius on a 40-die grid
    s = map_statistics(_grid((40, 40), fail))
    assert s[COL["pattern_length"]] == pytest.approx(1.0, abs=0.02)
    assert s[COL["pattern_thickness"]] == pytest.approx(1.0, abs=0.02)
    assert s[COL["largest_share"]] == pytest.approx(20 / wafer_mask((40, 40)).sum())


def test_an_edge_band_sits_at_the_rim_and_a_centre_blob_at_the_centre() -> None:
    from fabsight.synth import polar_coords

    rho, _ = polar_coords((52, 52))
    ring = map_statistics(_grid((52, 52), rho > 0.9))
    assert 0.9 < ring[COL["pattern_radius"]] < 1.0 and ring[COL["pattern_width"]] < 0.1
    assert ring[COL["fail_share"]] > 0.15 and ring[COL["background"]] < 0.08  # most windows lie off the band
    blob = map_statistics(_grid((52, 52), rho < 0.3))
    assert blob[COL["pattern_radius"]] < 0.25
    assert blob[COL["pattern_length"]] == pytest.approx(0.3 * 3**0.5, abs=0.05)  # a disk: variance R²/4


def test_background_statistic_measures_the_noise_of_generated_none_maps() -> None:
    maps = generate_dataset(60, classes=["none"], shapes=[(26, 26)], profile="wm811k", seed=3)
    truth = np.array([m.extras["noise"] for m in maps])
    measured = _stats(maps)[:, COL["background"]]
    assert np.median(np.abs(measured - truth)) < 0.03
    assert np.corrcoef(measured, truth)[0, 1] > 0.9


def test_quantile_shapes_repeat_common_shapes_in_proportion() -> None:
    shapes = [(25, 27)] * 75 + [(52, 52)] * 20 + [(100, 100)] * 5
    q = quantile_shapes(shapes, k=20)
    assert Counter(q) == {(25, 27): 15, (52, 52): 4, (100, 100): 1}


# --- profiles --------------------------------------------------------------------------------


def test_default_profile_is_the_unfitted_generator() -> None:
    default = PROFILES["default"]
    assert default.params is PARAMS and default.shapes == ((52, 52),) and not default.class_noise
    a = generate_dataset(3, seed=7)
    b = generate_dataset(3, seed=7, profile="default", shapes=[(52, 52)])
    assert all(np.array_equal(x.grid, y.grid) for x, y in zip(a, b, strict=True))


def test_wm811k_ranges_have_the_same_parameters_as_the_default() -> None:
    assert WM811K_PARAMS.keys() == PARAMS.keys()
    for name, ranges in WM811K_PARAMS.items():
        assert list(ranges) == list(PARAMS[name])
        assert all(lo <= hi for lo, hi in ranges.values())
    assert WM811K_PARAMS["Random"]["density"][1] > PARAMS["Random"]["density"][1]  # real Random is denser


def test_wm811k_maps_draw_parameters_background_and_grids_from_the_profile() -> None:
    maps = generate_dataset(160, profile="wm811k", seed=1)
    shapes = Counter(m.grid.shape for m in maps)
    assert set(shapes) <= set(WM811K_SHAPES)
    # 25x27 is 5 of the 16 quantile shapes: ~31 % of the maps
    assert 0.25 < (shapes[(25, 27)] / len(maps)) < 0.38
    for m in maps:
        label = m.labels[0]
        lo, hi = WM811K_CLASS_NOISE.get(label, WM811K_NOISE)
        assert lo <= m.extras["noise"] <= hi
        for name, truth in m.extras["patterns"].items():
            for key, (plo, phi) in WM811K_PARAMS[name].items():
                if key in ("size", "distance", "width", "depth", "span_deg", "length"):
                    continue  # floored / clipped to the grid by the pattern's definition
                assert plo - 1e-4 <= truth[key] <= phi + 1e-4, (name, key)


def test_wm811k_none_and_random_look_like_the_real_ones() -> None:
    """Real WM-811K (train pieces): none fails 6-22 % of its dies (10-90 %), Random 33-63 %."""
    s = {c: _stats(generate_dataset(80, classes=[c], profile="wm811k", seed=2)) for c in ("none", "Random")}
    none, rand = s["none"][:, COL["fail_share"]], s["Random"][:, COL["fail_share"]]
    assert 0.09 < np.median(none) < 0.18 and np.quantile(none, 0.9) < 0.25
    assert 0.35 < np.median(rand) < 0.55 and np.quantile(rand, 0.1) > 0.2
    clean = _stats(generate_dataset(80, classes=["none"], seed=2))[:, COL["fail_share"]]
    assert np.quantile(clean, 0.9) < 0.035  # the default profile stays clean


def test_explicit_noise_and_parameters_override_the_profile() -> None:
    maps = generate_dataset(20, classes=["Edge-Ring"], profile="wm811k", noise=0.0, width=0.1, seed=0)
    assert all(m.extras["noise"] == 0 for m in maps)
    assert all(m.extras["patterns"]["Edge-Ring"]["width"] >= 0.1 - 1e-6 for m in maps)
    mixed = generate_dataset(5, classes=["Center+Scratch"], profile="wm811k", seed=0)
    assert all(WM811K_NOISE[0] <= m.extras["noise"] <= WM811K_NOISE[1] for m in mixed)
    grid = generate_map("Loc", (26, 26), 0, profile="wm811k")
    assert grid.shape == (26, 26) and (grid == 2).any()


def test_unknown_profile_is_a_user_error(tmp_path, capsys) -> None:
    with pytest.raises(FabsightError, match="unknown profile 'real'"):
        generate_dataset(1, profile="real")
    with pytest.raises(FabsightError, match="unknown profile"):
        generate_map("Loc", profile="nope")
    code, _, err = run_cli(
        ["wafer", "train", "--synthetic", 2, "--synthetic-profile", "nope", "--out", tmp_path / "m"], capsys
    )
    assert code == 2 and "unknown profile 'nope'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()


def test_synth_cli_writes_wm811k_profile_maps(tmp_path, capsys) -> None:
    out = tmp_path / "ds"
    code, stdout, _ = run_cli(["synth", "--out", out, "--per-class", 4, "--profile", "wm811k", "--json"], capsys)
    assert code == 0
    report = json.loads(stdout)
    assert report["profile"] == "wm811k" and report["maps"] == 36
    assert {tuple(s) for s in report["shapes"]} == set(WM811K_SHAPES)
    assert {np.load(p).shape for p in out.rglob("*.npy")} <= set(WM811K_SHAPES)
    code, _, err = run_cli(["synth", "--out", tmp_path / "x", "--profile", "fab9"], capsys)
    assert code == 2 and "--profile: 'fab9' is not one of default, wm811k" in err
