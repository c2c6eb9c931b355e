"""Synthetic wafer maps: geometry, per-pattern properties with known answers, mixed maps, truth, CLI."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from scipy import ndimage
from skimage import measure
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.errors import FabsightError
from fabsight.synth import (
    MIXED_COMBINATIONS,
    generate_dataset,
    generate_map,
    polar_coords,
    rim_mask,
    wafer_mask,
)
from fabsight.synth.generator import COVERED, MIN_VISIBLE_DIES, VISIBLE_SHARE, _visible_dies
from fabsight.synth.geometry import geometry
from fabsight.synth.patterns import Field
from fabsight.types import MIXEDWM38_LABELS, WM811K_CLASSES

SHAPES = [(15, 15), (26, 26), (52, 52), (25, 27), (40, 64), (300, 300)]


def _fails(grid: np.ndarray) -> np.ndarray:
    return grid == 2


def _density(grid: np.ndarray, where: np.ndarray) -> float:
    where = where & (grid > 0)
    return float(_fails(grid)[where].mean()) if where.any() else float("nan")


def _maps(pattern: str, n: int = 12, shape=(52, 52), **kw) -> list[np.ndarray]:
    return [generate_map(pattern, shape, seed, noise=0.0, **kw) for seed in range(n)]


# --- geometry -------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [*SHAPES, (15, 300)])
def test_wafer_mask_is_a_centred_disk_touching_each_side(shape) -> None:
    h, w = shape
    m = wafer_mask(shape)
    assert m.shape == shape and m.dtype == bool
    assert not m[0, 0] and not m[0, -1] and not m[-1, 0] and not m[-1, -1]
    assert m[h // 2, :].all() and m[:, w // 2].all()  # the wafer spans the whole grid through its centre
    np.testing.assert_array_equal(m, m[::-1, :])
    np.testing.assert_array_equal(m, m[:, ::-1])
    assert m.mean() == pytest.approx(np.pi / 4, abs=0.05)


def test_polar_coords_and_rim() -> None:
    rho, theta = polar_coords((52, 52))
    assert rho[26, 51] == pytest.approx(np.hypot(25.5, 0.5) / 26, abs=1e-6)  # die centres, in wafer radii
    assert theta[26, 51] == pytest.approx(0, abs=0.05)  # 3 o'clock
    assert theta[0, 26] == pytest.approx(np.pi / 2, abs=0.05)  # row 0 is the top: 12 o'clock
    rim = rim_mask((52, 52))
    assert rim.any() and (rho[rim] > 0.9).all()
    assert not rim[wafer_mask((52, 52)) & (rho < 0.9)].any()


def test_bad_shape_is_a_user_error() -> None:
    with pytest.raises(FabsightError, match="outside"):
        wafer_mask((4, 52))
    with pytest.raises(FabsightError, match="two integers"):
        generate_map("Center", shape=("a", 3))


# --- every class, every size ----------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_every_class_gives_a_valid_grid(shape) -> None:
    mask = wafer_mask(shape)
    for k, cls in enumerate(WM811K_CLASSES):
        g = generate_map(cls, shape, k)
        assert g.shape == shape and g.dtype == np.uint8
        np.testing.assert_array_equal(g == 0, ~mask)  # off-wafer exactly where the mask says
        assert set(np.unique(g)) <= {0, 1, 2}


def test_same_seed_same_map_other_seed_other_map() -> None:
    for cls in WM811K_CLASSES:
        a, b = generate_map(cls, rng=7), generate_map(cls, rng=7)
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(generate_map("Loc", rng=1), generate_map("Loc", rng=2))
    one, two = generate_dataset(3, seed=5), generate_dataset(3, seed=5)
    assert all(np.array_equal(x.grid, y.grid) and x.extras == y.extras for x, y in zip(one, two, strict=True))
    assert not all(np.array_equal(x.grid, y.grid) for x, y in zip(one, generate_dataset(3, seed=6), strict=True))


# --- per-pattern properties -----------------------------------------------------------------


def test_center_density_falls_with_radius() -> None:
    rho, _ = polar_coords((52, 52))
    for g in _maps("Center"):
        inner, middle, outer = (_density(g, (rho >= a) & (rho < b)) for a, b in ((0, 0.1), (0.45, 0.6), (0.8, 1.01)))
        assert inner > 0.4
        assert inner > middle >= outer
        assert outer == 0.0


def test_donut_has_an_empty_centre_and_a_dense_ring() -> None:
    rho, _ = polar_coords((52, 52))
    maps = generate_dataset(12, classes=["Donut"], noise=0.0, seed=3)
    for m in maps:
        t = m.extras["patterns"]["Donut"]
        ring = np.abs(rho - t["ring_radius"]) < t["width"] / 4
        centre = _density(m.grid, rho < 0.1)
        assert _density(m.grid, ring) > 0.25
        assert centre < 0.25 * _density(m.grid, ring)


def test_edge_ring_covers_the_whole_rim() -> None:
    rho, theta = polar_coords((52, 52))
    rim = rim_mask((52, 52))
    for g in _maps("Edge-Ring"):
        assert _density(g, rho > 0.93) > 5 * max(_density(g, rho < 0.7), 0.01)
        sectors = np.floor((theta + np.pi) / (np.pi / 4)).astype(int) % 8
        assert all(_fails(g)[rim & (sectors == s)].any() for s in range(8))


def test_edge_loc_always_touches_the_rim_within_its_arc() -> None:
    _, theta = polar_coords((52, 52))
    rim = rim_mask((52, 52))
    for shape in [(15, 15), (52, 52), (30, 45)]:
        for m in generate_dataset(15, classes=["Edge-Loc"], shapes=[shape], noise=0.0, seed=1):
            assert _fails(m.grid)[rim_mask(shape)].any()
    for m in generate_dataset(15, classes=["Edge-Loc"], noise=0.0, seed=2):
        t = m.extras["patterns"]["Edge-Loc"]
        off = np.abs((np.degrees(theta) - t["angle"] + 180) % 360 - 180)
        assert not _fails(m.grid)[off > t["span_deg"] / 2 + 8].any()  # nothing outside its arc
        assert _fails(m.grid)[rim].mean() < 0.4  # a part of the rim, not a ring


def _centroid_rho(shape: tuple[int, int], centre: list[float]) -> float:
    h, w = shape
    return float(np.hypot((centre[0] + 0.5 - h / 2) / (h / 2), (centre[1] + 0.5 - w / 2) / (w / 2)))


def test_loc_never_touches_the_rim_and_is_off_centre_unlike_center() -> None:
    for shape in [(15, 15), (26, 26), (52, 52), (25, 27)]:
        rim = rim_mask(shape)
        for m in generate_dataset(30, classes=["Loc"], shapes=[shape], noise=0.0, seed=4):
            assert m.n_fail > 0
            assert not _fails(m.grid)[rim].any()
            assert _centroid_rho(shape, m.extras["patterns"]["Loc"]["centre"]) > 0.25
    for m in generate_dataset(30, classes=["Center"], noise=0.0, seed=4):
        assert _centroid_rho(m.shape, m.extras["patterns"]["Center"]["centre"]) < 0.2


def test_scratch_is_a_thin_elongated_line() -> None:
    for shape in [(15, 15), (52, 52), (100, 100)]:
        maps = generate_dataset(20, classes=["Scratch"], shapes=[shape], noise=0.0, seed=5)
        for m in maps:
            fails = _fails(m.grid)
            assert not ndimage.binary_erosion(fails, np.ones((3, 3))).any()  # no 3×3 block: at most 2 wide
            props = measure.regionprops(fails.astype(np.uint8))[0]
            assert props.eccentricity > 0.9
            assert props.axis_major_length > 0.25 * shape[0]


def test_random_is_dense_and_even_none_is_clean() -> None:
    _, theta = polar_coords((52, 52))
    quadrant = np.floor((theta + np.pi) / (np.pi / 2)).astype(int) % 4
    for g in _maps("Random"):
        assert 0.08 < _fails(g)[g > 0].mean() < 0.55
        per_quadrant = [_density(g, quadrant == q) for q in range(4)]
        assert max(per_quadrant) < 2.5 * min(per_quadrant)
    for shape in SHAPES:
        for m in generate_dataset(10, classes=["none"], shapes=[shape], seed=6):
            assert m.yield_ > 0.9
            assert m.extras["patterns"] == {}


def test_near_full_fails_most_dies() -> None:
    for g in _maps("Near-full"):
        assert _fails(g)[g > 0].mean() > 0.65


def test_background_noise_level_is_respected() -> None:
    rates = [_fails(generate_map("none", (200, 200), s, noise=0.05))[wafer_mask((200, 200))].mean() for s in range(3)]
    assert np.mean(rates) == pytest.approx(0.05, abs=0.006)
    assert (generate_map("none", noise=0.0) != 2).all()


def test_parameters_can_be_fixed_or_narrowed() -> None:
    maps = generate_dataset(6, classes=["Center"], size=0.3, density=(0.8, 0.9), seed=0)
    for m in maps:
        t = m.extras["patterns"]["Center"]
        assert t["size"] == 0.3 and 0.8 <= t["density"] <= 0.9
    sparse = np.mean([_fails(g)[g > 0].mean() for g in _maps("Near-full", 4, density=0.75)])
    dense = np.mean([_fails(g)[g > 0].mean() for g in _maps("Near-full", 4, density=0.95)])
    assert dense > sparse + 0.1
    with pytest.raises(FabsightError, match="unknown parameter 'span_deg'"):
        generate_map("Center", span_deg=30)
    with pytest.raises(FabsightError, match="low, high"):
        generate_map("Center", size=(0.4, 0.2))


# --- mixed maps and datasets ----------------------------------------------------------------


def test_mixed_combinations_are_the_38_mixedwm38_classes() -> None:
    assert len(MIXED_COMBINATIONS) == 38 == len(set(MIXED_COMBINATIONS))
    sizes = [len(c) for c in MIXED_COMBINATIONS[1:]]
    assert (sizes.count(1), sizes.count(2), sizes.count(3), sizes.count(4)) == (8, 13, 12, 4)
    assert MIXED_COMBINATIONS[0] == ("none",)
    for combo in MIXED_COMBINATIONS:
        if len(combo) > 1:
            assert not {"Near-full", "Random"} & set(combo)
            assert not {"Center", "Donut"} <= set(combo) and not {"Edge-Loc", "Edge-Ring"} <= set(combo)
    assert ("Center", "Edge-Loc", "Loc", "Scratch") in MIXED_COMBINATIONS


def _shows(name: str, grid: np.ndarray, t: dict) -> bool:
    """Whether a map visibly holds pattern ``name`` where its truth says it is."""
    rho, theta = polar_coords(grid.shape)
    rows, cols = np.indices(grid.shape)

    def near(rc: list[float], r: float) -> np.ndarray:
        return (rows - rc[0]) ** 2 + (cols - rc[1]) ** 2 <= r**2

    if name == "Center":
        return _density(grid, rho < 0.5 * t["size"]) > 0.4
    if name == "Donut":
        return _density(grid, np.abs(rho - t["ring_radius"]) < t["width"] / 4) > 0.25
    if name == "Edge-Ring":
        return _density(grid, rim_mask(grid.shape)) > 0.25
    if name == "Edge-Loc":
        off = np.abs((np.degrees(theta) - t["angle"] + 180) % 360 - 180)
        return _density(grid, rim_mask(grid.shape) & (off < t["span_deg"] / 4)) > 0.3
    if name == "Loc":
        return _density(grid, near(t["centre"], 1.5)) > 0.4
    if name == "Scratch":
        return t["broken"] or _fails(grid)[near(t["midpoint"], 1.5)].any()
    raise AssertionError(name)


def test_mixed_maps_contain_each_constituent() -> None:
    maps = generate_dataset(4, mixed=True, noise=0.0, seed=8)
    assert len(maps) == 38 * 4
    for m in maps:
        names = [n for n in m.labels if n != "none"]
        assert sorted(m.extras["patterns"]) == sorted(names)
        if len(names) > 1:
            for name in names:
                assert _shows(name, m.grid, m.extras["patterns"][name]), (m.labels, name)


def test_visible_dies_counts_what_no_other_pattern_fails() -> None:
    g = geometry((20, 20))
    big = np.zeros((1, 20, 20), np.float32)
    big[0, 4:16, 4:16] = 1.0  # 144 dies, all on the wafer
    small = np.zeros((1, 20, 20), np.float32)
    small[0, 8:11, 14:18] = 0.9  # 12 dies: columns 14-15 inside the big square, 16-17 outside
    one = {"density": np.array([1.0])}
    counts = _visible_dies({"A": Field(big, one), "B": Field(small, {"density": np.array([0.9])})}, g)
    assert [int(v[0]) for v in counts["B"]] == [6, 12] and [int(v[0]) for v in counts["A"]] == [138, 144]
    # a covering pattern that fails its dies with probability below COVERED hides nothing
    faint = Field(big * (COVERED / 2), {"density": np.array([COVERED / 2])})
    counts = _visible_dies({"A": faint, "B": Field(small, {"density": np.array([0.9])})}, g)
    assert int(counts["B"][0][0]) == 12


def test_every_pattern_of_a_mixed_map_shows_itself() -> None:
    """A Loc blob or Scratch on top of a Center, Donut ring or Edge-Ring band would fail dies
    that fail anyway: the generator redraws it, so every label of a mixed map is visible."""
    maps = generate_dataset(3, mixed=True, shapes=((20, 20), (26, 26), (52, 52), (40, 64)), seed=5)
    checked = 0
    for m in maps:
        patterns = m.extras["patterns"]
        if len(patterns) < 2:
            assert not any("visible_dies" in t for t in patterns.values())
            continue
        on_wafer = np.count_nonzero(m.grid)
        for name, t in patterns.items():
            assert t["visible_dies"] >= MIN_VISIBLE_DIES, (m.labels, name, t["visible_dies"])
            # extent is the footprint's share of the wafer, rounded to 4 decimals
            assert t["visible_dies"] >= VISIBLE_SHARE * t["extent"] * on_wafer - 1, (m.labels, name)
            checked += 1
    assert checked == 3 * sum(len(c) for c in MIXED_COMBINATIONS if len(c) > 1)


def test_mixed_dataset_stays_balanced_and_reproducible() -> None:
    a = generate_dataset(4, mixed=True, seed=3)
    b = generate_dataset(4, mixed=True, seed=3)
    assert Counter(m.labels for m in a) == dict.fromkeys(MIXED_COMBINATIONS, 4)
    assert all(np.array_equal(x.grid, y.grid) and x.extras == y.extras for x, y in zip(a, b, strict=True))


def test_single_type_maps_are_unchanged_by_the_visibility_redraws() -> None:
    """Only mixed maps are redrawn: single-type datasets (and the models trained on them)
    stay bit-identical to the generator before the redraws (digest taken from it)."""
    h = hashlib.sha256()
    for m in generate_dataset(4, shapes=((26, 26), (52, 52), (45, 60)), seed=11):
        h.update(m.grid.tobytes())
        h.update(json.dumps(m.extras, sort_keys=True).encode())
    assert h.hexdigest() == "105e107c90d2a19c951c1c2ac203e2c9e2b91bef6d2e81afb535f8191f1925c2"


def test_mixed_requests_are_checked() -> None:
    assert generate_map(["Edge-Ring", "Center"], rng=0).shape == (52, 52)
    np.testing.assert_array_equal(generate_map("Center+Edge-Ring", rng=0), generate_map(["Edge-Ring", "Center"], rng=0))
    with pytest.raises(FabsightError, match="never combine"):
        generate_map(["Random", "Center"])
    with pytest.raises(FabsightError, match="unknown pattern 'Ring'"):
        generate_map("Ring")
    with pytest.raises(FabsightError, match="repeats"):
        generate_map(["Loc", "Loc"])


def test_dataset_labels_shapes_and_truth() -> None:
    shapes = [(26, 26), (40, 30)]
    maps = generate_dataset(10, shapes=shapes, seed=1)
    assert len(maps) == 10 * len(WM811K_CLASSES)
    assert [m.label for m in maps[::10]] == list(WM811K_CLASSES)
    assert {m.shape for m in maps} == set(shapes)
    assert len({m.wafer_id for m in maps}) == len(maps)
    for m in maps:
        for name, t in m.extras["patterns"].items():
            assert {"centre", "radius", "angle", "extent", "density"} <= set(t)
            assert 0 <= t["extent"] <= 1 and 0 <= t["radius"] <= 1
            assert (t["angle"] is None) == (name in {"Center", "Donut", "Edge-Ring", "Near-full", "Random"})
    with pytest.raises(FabsightError, match="per_class"):
        generate_dataset(-1)


# --- CLI --------------------------------------------------------------------------------------


def test_synth_cli_writes_class_folders(tmp_path) -> None:
    out = tmp_path / "ds"
    res = CliRunner().invoke(app, ["synth", "--out", str(out), "--per-class", "3", "--size", "30x40", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["maps"] == 27 and report["classes"] == dict.fromkeys(WM811K_CLASSES, 3)
    assert sorted(p.name for p in out.iterdir()) == sorted(WM811K_CLASSES)
    for cls in WM811K_CLASSES:
        files = sorted((out / cls).glob("*.npy"))
        assert len(files) == 3
        grid = np.load(files[0])
        assert grid.shape == (30, 40)
        np.testing.assert_array_equal(grid == 0, ~wafer_mask((30, 40)))
    before = {p.relative_to(out): np.load(p) for p in out.rglob("*.npy")}
    with pytest.raises(FabsightError, match="--overwrite"):  # never wipes an existing folder unasked
        CliRunner().invoke(app, ["synth", "--out", str(out), "--per-class", "1"], catch_exceptions=False)
    res = CliRunner().invoke(app, ["synth", "--out", str(out), "--per-class", "3", "--size", "30x40", "--overwrite"])
    assert res.exit_code == 0, res.output
    after = {p.relative_to(out): np.load(p) for p in out.rglob("*.npy")}
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # same seed, same files


def test_synth_cli_mixed_png_and_npz(tmp_path) -> None:
    out, npz = tmp_path / "mixed", tmp_path / "mixed.npz"
    args = ["synth", "--out", str(out), "--per-class", "2", "--mixed", "--format", "png", "--npz", str(npz)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert len(list(out.iterdir())) == 38
    assert (out / "Center+Edge-Ring").is_dir() and (out / "Donut+Edge-Loc+Loc+Scratch").is_dir()
    png = next((out / "Center+Edge-Ring").glob("*.png"))
    assert set(np.unique(np.asarray(Image.open(png)))) <= {0, 1, 2}
    with np.load(npz) as z:
        grids, labels = z["arr_0"], z["arr_1"]
    assert grids.shape == (76, 52, 52) and labels.shape == (76, 8)
    names = ["+".join(n for n, on in zip(MIXEDWM38_LABELS, row, strict=True) if on) or "none" for row in labels]
    assert sorted(set(names)) == sorted("+".join(c) for c in MIXED_COMBINATIONS)


def test_synth_cli_rejects_bad_options(tmp_path) -> None:
    with pytest.raises(FabsightError, match="--size: '52y' is not a grid size"):
        CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--size", "52y"], catch_exceptions=False)
    with pytest.raises(FabsightError, match="--size: wafer grid 4x4 is outside"):
        CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--size", "4"], catch_exceptions=False)
    with pytest.raises(FabsightError, match="one grid size"):
        args = ["synth", "--out", str(tmp_path / "x"), "--size", "26", "--size", "52", "--npz", str(tmp_path / "a.npz")]
        CliRunner().invoke(app, args, catch_exceptions=False)
    assert not (tmp_path / "x").exists()


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(8, 160),
    cols=st.integers(8, 160),
    pattern=st.sampled_from([*WM811K_CLASSES, *("+".join(c) for c in MIXED_COMBINATIONS if len(c) > 1)]),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_grid_any_pattern_keeps_the_definitions(rows, cols, pattern, seed) -> None:
    shape = (rows, cols)
    grid = generate_map(pattern, shape, seed, noise=0.0)
    assert grid.shape == shape and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid == 0, ~wafer_mask(shape))
    on_rim = _fails(grid)[rim_mask(shape)].any()
    if pattern in ("Loc", "Center", "Center+Loc"):
        assert not on_rim  # neither reaches the edge, on any grid
    if "Edge-Loc" in pattern:
        assert on_rim  # always does
    if pattern == "none":
        assert not _fails(grid).any()
