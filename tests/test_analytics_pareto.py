"""Paretos of real KLARF / STDF / G85 files and of generated lots with known counts; the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from clikit import run_cli
from fabsight.analytics.pareto import SIZE_BINS_UM, pareto, pareto_png, size_keys
from fabsight.errors import FabsightError
from fabsight.io import read_maps, write_klarf
from fabsight.synth.defects import SYNTH_CLASSES, generate_defect_lot
from fabsight.types import DieState


def _rows(result) -> dict[str, int]:
    return {row.label: row.count for row in result.rows}


def test_real_klarf_pareto_by_class_size_and_wafer(shared) -> None:
    (laa,) = read_maps(shared / "fixtures/klarf/LAA_FAA_LAA-01.000")
    by_class = pareto([laa], "class")
    assert by_class.total == 12263 == sum(_rows(by_class).values())  # the file's own SummaryList NDEFECT
    by_size = pareto([laa], "size")
    size = laa.defects.size
    assert _rows(by_size)["< 0.5 µm"] == int((size < 0.5).sum())
    assert _rows(by_size)["2–5 µm"] == int(((size >= 2) & (size < 5)).sum())
    assert _rows(by_size)["≥ 100 µm"] == int((size >= 100).sum())
    counts = [row.count for row in by_size.rows]
    assert counts == sorted(counts, reverse=True) and by_size.rows[-1].cumulative == 1.0
    quu = read_maps(shared / "fixtures/klarf/QUU_NUU.000")
    by_wafer = pareto(quu, "wafer")
    assert _rows(by_wafer) == {f"QUU #{m.wafer_id}": len(m.defects) for m in quu}
    by_rough = pareto(quu, "bin")
    rough = np.concatenate([m.defects.extra["ROUGHBINNUMBER"] for m in quu]).astype(int)
    assert _rows(by_rough)[f"rough bin {np.bincount(rough).argmax()}"] == np.bincount(rough).max()
    assert _rows(pareto(quu, "step")) == {"NUU": 187}


def test_real_sort_paretos_give_yield_loss_per_bin_with_names(shared) -> None:
    (stdf,) = read_maps(shared / "fixtures/stdf/lot2.stdf")
    result = pareto([stdf], "bin")
    failing = stdf.bins[stdf.grid == DieState.FAIL]
    assert {row.key: row.count for row in result.rows} == {
        str(c): int((failing == c).sum()) for c in np.unique(failing)
    }
    assert sum(row.yield_loss for row in result.rows) == pytest.approx(1 - stdf.yield_, abs=1e-5)
    assert result.to_json()["yield"] == pytest.approx(stdf.yield_, abs=1e-6)
    assert pareto([stdf], "softbin").total == stdf.n_fail
    (g85,) = read_maps(shared / "fixtures/g85/SEMI_G85_1101_ALL.xml")
    rows = pareto([g85], "bin").rows
    assert [(r.label, r.count) for r in rows] == [("bin 222 Fail", 38), ("bin 173 QC", 5)]
    assert rows[0].yield_loss == pytest.approx(38 / g85.n_dies, abs=1e-6)


def test_classified_klarf_round_trip_keeps_class_names(tmp_path) -> None:
    lot = generate_defect_lot(3, random_defects=200, seed=4)
    path = write_klarf(lot.maps, tmp_path / "classified.000")
    maps = read_maps(path)
    result = pareto(maps, "class")
    codes = np.concatenate([m.defects.class_number for m in lot.maps])
    want = {f"{c} {SYNTH_CLASSES[c]}": int((codes == c).sum()) for c in SYNTH_CLASSES}
    assert _rows(result) == want


def test_size_bins_are_documented_edges_and_checked() -> None:
    keys = size_keys(np.array([0.1, 0.5, 0.99, 100.0, np.nan]), SIZE_BINS_UM)
    assert keys.tolist() == [0, 1, 1, len(SIZE_BINS_UM), -1]  # an edge value goes to the bin above
    lot = generate_defect_lot(1, random_defects=500, seed=2)
    result = pareto(lot.maps, "size", size_bins=[1, 3])
    size = lot.maps[0].defects.size
    assert _rows(result) == {
        "< 1 µm": (size < 1).sum(),
        "1–3 µm": ((size >= 1) & (size < 3)).sum(),
        "≥ 3 µm": (size >= 3).sum(),
    }
    with pytest.raises(FabsightError, match="increasing"):
        pareto(lot.maps, "size", size_bins=[2, 1])


def test_sources_are_never_mixed_and_by_must_fit_the_source(shared) -> None:
    klarf = read_maps(shared / "fixtures/klarf/QUU_NUU.000")
    stdf = read_maps(shared / "fixtures/stdf/lot2.stdf")
    with pytest.raises(FabsightError, match="mixes inspection defects") as err:
        pareto(klarf + stdf, "wafer")
    assert "lot2.stdf" in str(err.value)
    with pytest.raises(FabsightError, match="needs KLARF defects"):
        pareto(stdf, "class")
    with pytest.raises(FabsightError, match="needs sort bins"):
        pareto(klarf, "softbin")
    with pytest.raises(FabsightError, match="'tool' is not bin, class, lot, size, softbin, step or wafer"):
        pareto(klarf, "tool")


def test_chart_is_written_atomically_with_one_bar_per_row_and_other(tmp_path) -> None:
    lot = generate_defect_lot(6, random_defects=100, seed=1)
    result = pareto(lot.maps, "wafer")
    target = pareto_png(result, tmp_path / "wafers.png", top=4)
    with Image.open(target) as im:
        assert im.format == "PNG" and im.size[0] >= 600
    assert [p.name for p in tmp_path.iterdir()] == ["wafers.png"]  # no temporary file left
    with pytest.raises(FabsightError, match=r"\.png"):
        pareto_png(result, tmp_path / "chart.jpg")


def test_pareto_cli_json_chart_and_one_line_errors(shared, tmp_path, capsys) -> None:
    files = shared / "fixtures"
    code, out, _ = run_cli(
        ["pareto", files / "stdf/lot2.stdf", "--by", "bin", "--json", "--out", tmp_path / "b.png"], capsys
    )
    assert code == 0
    report = json.loads(out)
    assert report["unit"] == "failing dies" and report["tested_dies"] > report["total"] > 0
    assert (tmp_path / "b.png").is_file() and report["errors"] == []
    code, out, _ = run_cli(["pareto", files / "klarf/LAA_FAA_LAA-01.000", "--by", "size"], capsys)
    assert code == 0 and "12,263 defects in LAA (1 wafer), by size:" in out
    code, _, err = run_cli(["pareto", files / "klarf/QUU_NUU.000", files / "stdf/lot2.stdf"], capsys)
    assert code == 2 and err.strip().startswith("error: ") and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(["pareto", files / "klarf/QUU_NUU.000", "--size-bins", "1,x"], capsys)
    assert code == 2 and err.strip() == "error: --size-bins: '1,x' is not a list of numbers separated by ','"
