"""Wafer-map pictures: exact thumbnail colours, PNG sizes, atomic writes, bins/counts/notch/clusters, CLI."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.patches import Polygon
from PIL import Image
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.errors import FabsightError
from fabsight.report.render import STATE_RGB, map_to_rgb, render_map, render_png
from fabsight.synth import generate_dataset, generate_map
from fabsight.types import BinDefinition, WaferMap


def test_map_to_rgb_scales_with_exact_palette_colours() -> None:
    grid = np.array([[0, 1, 2], [2, 1, 0], [1, 1, 1]], dtype=np.uint8)
    rgb = map_to_rgb(grid, 6)
    assert rgb.shape == (6, 6, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[::2, ::2], STATE_RGB[grid])  # every die is a 2×2 block
    np.testing.assert_array_equal(rgb[1::2, 1::2], STATE_RGB[grid])
    wide = map_to_rgb(np.array([[1, 2, 2, 1]]), (2, 8))  # non-square grid stretched to the asked size
    np.testing.assert_array_equal(wide[0, :, 0], STATE_RGB[[1, 1, 2, 2, 2, 2, 1, 1], 0])
    with pytest.raises(ValueError, match="0 \\(off\\)"):
        map_to_rgb(np.array([[3]]), 4)


def test_single_map_png_has_the_expected_size(tmp_path) -> None:
    out = render_png(WaferMap(generate_map("Center", rng=0), lot_id="L1", wafer_id="7"), tmp_path / "one.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (500, 550)
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    assert (pixels == STATE_RGB[2]).all(axis=1).any()  # failing dies are drawn in the fail colour


def test_contact_sheet_layout_sets_the_picture_size(tmp_path) -> None:
    maps = generate_dataset(1, seed=0)  # 9 maps, one per class
    with Image.open(render_png(maps, tmp_path / "sheet.png")) as im:
        assert im.size == (3 * 240, 3 * 264)  # 3×3 cells of 2.4 in at 100 dpi
    with Image.open(render_png(maps, tmp_path / "row.png", cols=9)) as im:
        assert im.size == (9 * 240, 264)


def test_failed_render_leaves_no_partial_file(tmp_path, monkeypatch) -> None:
    target = tmp_path / "map.png"
    target.write_bytes(b"old picture")

    def broken_savefig(self, fname, **kwargs) -> None:
        with open(fname, "wb") as fh:
            fh.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        render_png(WaferMap(generate_map("Loc", rng=1)), target)
    assert target.read_bytes() == b"old picture"
    assert [p.name for p in tmp_path.iterdir()] == ["map.png"]


def test_user_mistakes_are_one_line_errors(tmp_path) -> None:
    with pytest.raises(FabsightError, match=r"\.png"):
        render_png(WaferMap(generate_map("none", rng=0)), tmp_path / "map.jpg")
    with pytest.raises(FabsightError, match="no wafer maps"):
        render_png([], tmp_path / "empty.png")
    with pytest.raises(FabsightError, match="defect counts"):
        render_map(WaferMap(generate_map("none", rng=0)), color_by="counts")


def _bin_map() -> WaferMap:
    grid = generate_map("Edge-Loc", (20, 20), 3)
    bins = np.where(grid == 0, -1, np.where(grid == 2, 8, 1))
    bins[(grid == 2) & (np.arange(20)[None, :] < 10)] = 5
    defs = {1: BinDefinition(1, True, "Pass"), 5: BinDefinition(5, False, "Open"), 8: BinDefinition(8, False, "Leak")}
    return WaferMap(grid, lot_id="LOT9", wafer_id="3", bins=bins, bin_definitions=defs)


def test_bins_get_a_legend_with_names_status_and_counts() -> None:
    wmap = _bin_map()
    ax = render_map(wmap)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    counts = {code: int((wmap.bins == code).sum()) for code in (1, 5, 8)}
    assert texts == [
        f"bin 1 Pass (pass, {counts[1]})",
        f"bin 5 Open (fail, {counts[5]})",
        f"bin 8 Leak (fail, {counts[8]})",
    ]
    assert ax.get_title() == f"LOT9 · #3 · yield {100 * wmap.yield_:.1f}%"


def test_counts_shade_dies_by_defect_count() -> None:
    grid = generate_map("Loc", rng=2)
    counts = np.where(grid == 2, np.arange(grid.size).reshape(grid.shape) % 5 + 1, 0)
    ax = render_map(WaferMap(grid, counts=counts), color_by="counts")
    shade = ax.images[1]
    data = shade.get_array()
    assert data.count() == int((grid == 2).sum())  # only dies with defects are shaded
    assert shade.norm.vmax == counts.max()


@pytest.mark.parametrize(("notch", "axis", "sign"), [("down", 1, 1), ("up", 1, -1), ("left", 0, -1), ("right", 0, 1)])
def test_notch_is_drawn_where_the_map_says(notch, axis, sign) -> None:
    grid = generate_map("none", (30, 40), 0)
    ax = render_map(WaferMap(grid, notch=notch))
    (tri,) = [p for p in ax.patches if isinstance(p, Polygon)]
    centre = (20.0, 15.0)  # (x, y) of the grid's middle
    offset = tri.get_xy()[:3].mean(axis=0) - centre
    assert np.sign(offset[axis]) == sign and abs(offset[axis]) > 5 * abs(offset[1 - axis])


def test_cluster_overlay_numbers_each_cluster() -> None:
    grid = generate_map("none", (20, 20), 0, noise=0.0)
    clusters = np.full(grid.shape, -1)
    clusters[5:8, 5:8] = 0
    clusters[12:14, 10:16] = 1
    ax = render_map(WaferMap(grid), clusters=clusters)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "cluster 0 (9 dies)" in texts and "cluster 1 (12 dies)" in texts
    assert sorted(t.get_text() for t in ax.texts) == ["0", "1"]
    with pytest.raises(ValueError, match="shape"):
        render_map(WaferMap(grid), clusters=clusters[:5])


def test_render_cli_reads_files_and_reports_json(tmp_path) -> None:
    maps = generate_dataset(1, classes=["Center", "Scratch"], seed=0)
    for m in maps:
        np.save(tmp_path / f"{m.label}.npy", m.grid)
    runner = CliRunner()
    res = runner.invoke(app, ["render", str(tmp_path / "*.npy"), "--out", str(tmp_path / "s.png"), "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["maps"] == 2 and not report["truncated"]
    with Image.open(tmp_path / "s.png") as im:
        assert list(im.size) == report["pixels"] == [2 * 240, 264]


def test_render_cli_error_is_one_line_exit_2(tmp_path) -> None:
    np.save(tmp_path / "m.npy", generate_map("none", rng=0))
    proc = subprocess.run(
        [sys.executable, "-m", "fabsight", "render", str(tmp_path / "m.npy"), "--out", str(tmp_path / "m.jpg")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'm.jpg'}: output picture must be a .png file"


def test_real_stdf_and_klarf_maps_render(shared, tmp_path) -> None:
    from fabsight.io import read_maps

    (stdf,) = read_maps(shared / "fixtures/stdf/lot2.stdf")
    ax = render_map(stdf)
    texts = [t.get_text() for t in ax.get_legend().get_texts()]
    codes = [int(c) for c in np.unique(stdf.bins) if c >= 0]
    assert len(texts) == len(codes)
    counted = sum(int(t.rsplit(", ", 1)[1].rstrip(")")) for t in texts)
    assert counted == int((stdf.bins >= 0).sum())
    passing = [t for t in texts if "(pass," in t]
    assert passing and all(int(t.split()[1]) in codes for t in passing)
    klarf = read_maps(shared / "fixtures/klarf/QUU_NUU.000")
    ax = render_map(klarf[0], color_by="counts")
    assert ax.images[1].get_array().count() == int((klarf[0].counts > 0).sum())
    with Image.open(render_png(klarf, tmp_path / "lot.png", color_by="counts")) as im:
        assert im.size == (2 * 240, 2 * 264)
