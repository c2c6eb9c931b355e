"""Stacked maps, repeaters (planted with known truth, and on real KLARFs) and the pictures they draw."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from PIL import Image

from clikit import run_cli
from fabsight.analytics.repeaters import DEFAULT_TOLERANCE_UM, find_repeaters, repeating
from fabsight.analytics.stack import stack_by_bin, stack_maps
from fabsight.errors import FabsightError
from fabsight.io import read_maps
from fabsight.report.render import FAIL_BIN_COLOURS, count_ticks, render_figure, render_map
from fabsight.synth.defects import SYNTH_CLASSES, generate_defect_lot
from fabsight.types import DefectList, WaferMap

# ----------------------------------------------------------------------------- stacks


def test_stack_counts_how_often_each_position_fails() -> None:
    base = np.ones((4, 5), np.uint8)
    base[0, 0] = 0
    maps = []
    for k in range(4):
        grid = base.copy()
        grid[1, 1] = 2 if k < 3 else 1  # fails on 3 of 4 wafers
        grid[2, 3] = 2 if k == 0 else 1  # once
        maps.append(WaferMap(grid, lot_id="L1", wafer_id=str(k)))
    stack = stack_maps(maps)
    assert stack.frequency[1, 1] == 0.75 and stack.frequency[2, 3] == 0.25 and stack.frequency[3, 4] == 0
    assert np.isnan(stack.frequency[0, 0]) and stack.n_wafers == 4
    summary = stack.to_json()
    assert summary["worst"][0] == {"x": 1, "y": 1, "frequency": 0.75} and summary["always_failing"] == 0


def test_stack_refuses_other_die_grids_naming_the_file(shared, capsys, tmp_path) -> None:
    quu = read_maps(shared / "fixtures/klarf/QUU_NUU.000")
    (laa,) = read_maps(shared / "fixtures/klarf/LAA_FAA_LAA-01.000")
    with pytest.raises(FabsightError, match="a stack needs wafers of one die grid") as err:
        stack_maps([*quu, laa])
    assert str(laa.source) in str(err.value)
    files = shared / "fixtures/klarf"
    code, _, err_text = run_cli(
        ["render", files / "QUU_NUU.000", files / "LAA_FAA_LAA-01.000", "--stack", "--out", tmp_path / "s.png"], capsys
    )
    assert code == 2 and err_text.startswith(f"error: {files / 'LAA_FAA_LAA-01.000'}: wafer 01 has die grid 45×48")
    code, out, _ = run_cli(["render", files / "QUU_NUU.000", "--stack", "--json", "--out", tmp_path / "q.png"], capsys)
    report = json.loads(out)
    assert code == 0 and report["stacks"][0]["wafers"] == 3 and (tmp_path / "q.png").is_file()
    union = np.zeros(quu[0].shape, bool)
    for m in quu:
        union |= m.grid == 2
    assert report["stacks"][0]["max_frequency"] == pytest.approx(stack_maps(quu).frequency[union].max())


def test_sort_data_stacks_per_bin(shared) -> None:
    (stdf,) = read_maps(shared / "fixtures/stdf/lot2.stdf")
    stacks = stack_by_bin([stdf, stdf])
    assert stacks[0].what == "failing dies" and [s.what for s in stacks[1:3]] == ["bin 8", "bin 2"]
    np.testing.assert_array_equal(stacks[1].frequency[stdf.grid > 0], (stdf.bins == 8)[stdf.grid > 0].astype(float))


# ----------------------------------------------------------------------------- repeaters


def _scores(lot, result) -> tuple[float, float]:
    flags = np.concatenate([w.flags for w in result.wafers])
    truth = np.concatenate(lot.planted)
    hit = int((flags & truth).sum())
    return hit / truth.sum(), hit / max(int(flags.sum()), 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_planted_repeaters_are_recovered_at_the_default_tolerance(seed) -> None:
    lot = generate_defect_lot(8, random_defects=400, wafer_repeaters=3, lot_repeaters=2, lot_wafers=4, seed=seed)
    result = find_repeaters(lot.maps)
    recall, precision = _scores(lot, result)
    assert recall >= 0.95 and precision >= 0.95
    assert result.tolerance_um == DEFAULT_TOLERANCE_UM
    assert all(w.expected_by_chance < 0.5 for w in result.wafers)  # a clean lot: chance explains none


def test_lot_repeaters_need_other_wafers_and_die_repeaters_other_dies() -> None:
    lot = generate_defect_lot(6, random_defects=50, wafer_repeaters=0, lot_repeaters=1, lot_wafers=3, seed=7)
    result = find_repeaters(lot.maps)
    assert sum(int(w.in_lot.sum()) for w in result.wafers) == 3 and not any(w.in_wafer.any() for w in result.wafers)
    alone = find_repeaters(lot.maps[:1])  # one wafer: the same defects repeat nowhere
    assert alone.total == 0


def test_reticle_relative_search_matches_shots_not_dies() -> None:
    pitch = (1000.0, 1000.0)
    xi = np.array([0, 2, 4, 1, 3])  # dies 0, 2, 4: the left die of shots 0, 1, 2 of a 2x1 reticle
    yi = np.zeros(5, dtype=int)
    xrel = np.array([100.0, 101.0, 99.5, 100.0, 100.0])  # dies 1 and 3 are right dies: other reticle place
    defects = DefectList(np.arange(5), xrel, xrel, xrel, xrel, xi, yi, np.ones(5), np.ones(5, int))
    grid = np.full((1, 6), 2, np.uint8)
    wmap = WaferMap(
        grid, lot_id="R", wafer_id="1", die_pitch=pitch, x_index=np.arange(6), y_index=np.zeros(1, int), defects=defects
    )
    by_die = find_repeaters([wmap]).wafers[0]
    assert by_die.in_wafer.all() and by_die.sites == 1
    by_reticle = find_repeaters([wmap], reticle=(2, 1)).wafers[0]
    assert by_reticle.in_wafer.tolist() == [True, True, True, False, False] and by_reticle.dies == 3
    with pytest.raises(FabsightError, match="COLSxROWS"):
        from fabsight.cli.pareto import parse_reticle

        parse_reticle("2x0")


def test_repeater_flags_on_a_real_klarf_match_a_brute_force_count(shared) -> None:
    (laa,) = read_maps(shared / "fixtures/klarf/LAA_FAA_LAA-01.000")
    result = find_repeaters([laa]).wafers[0]
    d = laa.defects
    points = np.column_stack([d.xrel, d.yrel])
    die = d.xindex * 1000 + d.yindex
    rng = np.random.default_rng(0)
    picks = np.concatenate([np.flatnonzero(result.in_wafer)[:150], rng.choice(len(d), 150, replace=False)])
    for i in picks:
        near = np.hypot(*(points - points[i]).T) <= DEFAULT_TOLERANCE_UM
        assert result.in_wafer[i] == (np.unique(die[near]).size >= result.dies_needed)
    fixed = repeating(points, die, DEFAULT_TOLERANCE_UM, 3, area=np.prod(laa.die_pitch), max_chance=None)
    assert fixed.need == 3 and fixed.expected_by_chance > 0.5  # a dense wafer: 3 dies happen by chance
    assert result.dies_needed > 3 and result.expected_by_chance < 0.5
    assert fixed.flags.sum() > result.in_wafer.sum() and not (result.in_wafer & ~fixed.flags).any()


def test_repeaters_cli_reports_per_wafer_and_draws_the_marks(tmp_path, capsys) -> None:
    lot = generate_defect_lot(4, random_defects=100, lot_repeaters=0, seed=3)
    from fabsight.io import write_klarf

    path = write_klarf(lot.maps, tmp_path / "lot.000")
    code, out, _ = run_cli(["repeaters", path, "--json", "--out", tmp_path / "r.png"], capsys)
    report = json.loads(out)
    assert code == 0 and [w["repeaters"] for w in report["wafers"]] == [int(p.sum()) for p in lot.planted]
    assert (tmp_path / "r.png").is_file()
    code, _, err = run_cli(["repeaters", path, "--tolerance", "-1"], capsys)
    assert code == 2 and err.strip() == "error: --tolerance: -1.0 must be a positive distance in µm"


# ----------------------------------------------------------------------------- pictures


def _inside(fig, artist) -> bool:
    fig.canvas.draw()
    box = artist.get_tightbbox(fig.canvas.get_renderer())  # with tick labels and the bar's label
    return box.x0 >= 0 and box.y0 >= 0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height


def test_klarf_renders_by_class_with_lookup_names_and_repeater_marks() -> None:
    lot = generate_defect_lot(1, random_defects=300, seed=5)
    wmap = lot.maps[0]
    flags = find_repeaters([wmap]).wafers[0].flags
    fig = render_figure(wmap, color_by="class", marks=[flags])
    ax = fig.axes[0]
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    codes = wmap.defects.class_number
    assert f"1 {SYNTH_CLASSES[1]} ({int((codes == 1).sum())})" in texts
    assert f"repeater ({int(flags.sum())})" in texts
    assert _inside(fig, ax.get_legend())
    with pytest.raises(FabsightError, match="no KLARF defects"):
        render_map(WaferMap(np.ones((3, 3), np.uint8)), color_by="class")


def test_stdf_fail_bins_are_warm_and_the_legend_fits(shared) -> None:
    (stdf,) = read_maps(shared / "fixtures/stdf/lot2.stdf")
    fig = render_figure(stdf)
    assert _inside(fig, fig.axes[0].get_legend())
    rgb = np.asarray(fig.axes[0].images[0].get_array())
    failing = rgb[stdf.grid == 2].astype(int)
    assert failing.size and (failing[:, 0] >= failing[:, 1:].max(axis=1)).all()  # red dominant: drawn as fails
    assert all(r >= max(g, b) for r, g, b in map(to_rgb, FAIL_BIN_COLOURS))


def test_colour_bars_have_tick_values_inside_the_picture(shared, tmp_path) -> None:
    (laa,) = read_maps(shared / "fixtures/klarf/LAA_FAA_LAA-01.000")
    fig = render_figure(laa, color_by="counts")
    (bar,) = fig.axes[0].child_axes  # the colour bar lies under the map, in the map's share of the picture
    labels = [t.get_text() for t in bar.get_xticklabels() if t.get_text()]
    assert labels[0] == "1" and labels[-1] == f"{int(laa.counts.max()):,}" and len(labels) >= 3
    assert _inside(fig, bar)
    assert count_ticks(3) == [1, 2, 3] and count_ticks(150) == [1, 10, 100]
    from fabsight.report.render import render_stack_png

    with Image.open(
        render_stack_png([stack_maps(read_maps(shared / "fixtures/klarf/QUU_NUU.000"))], tmp_path / "s.png")
    ) as im:
        assert im.size == (500, 550)


def test_titles_name_the_lot_not_the_path(tmp_path) -> None:
    wmap = WaferMap(np.ones((5, 5), np.uint8), wafer_id="4", source=str(tmp_path / "deep" / "LOT77.npy"))
    ax = render_map(wmap)
    assert ax.get_title().startswith("LOT77 · #4") and str(tmp_path) not in ax.get_title()


def test_defects_without_in_die_positions_are_refused_not_all_called_repeaters() -> None:
    """A KLARF written with every defect at its die's centre (the demo lot) has no positions to repeat."""
    import fabsight

    demo = Path(fabsight.__file__).parent / "examples" / "demo_lot" / "LOT-A103.klarf"
    maps = read_maps(demo)
    assert sum(len(m.defects) for m in maps) > 100
    with pytest.raises(FabsightError, match="no in-die positions"):
        find_repeaters(maps)
