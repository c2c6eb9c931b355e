"""Kill ratios from paired inspection + sort wafers: planted answers recovered through real
KLARF / STDF / G85 files, alignment refused or questioned when it does not fit, and the real
sort fixtures paired with inspection files built on their own dies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clikit import run_cli
from fabsight.analytics.align import Alignment, best_alignment, pair_wafers, wafer_key
from fabsight.analytics.killratio import kill_ratios, newcombe, wilson
from fabsight.errors import FabsightError
from fabsight.io import read_maps, write_g85, write_klarf, write_stdf
from fabsight.synth.impact import paired_lot
from fabsight.types import DefectList, DieState, WaferMap


@pytest.fixture(scope="module")
def lot_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, object]:
    lot = paired_lot(np.random.default_rng(7), n_wafers=12, kill={1: 0.9, 2: 0.5, 3: 0.1}, baseline_fail=0.08)
    d = tmp_path_factory.mktemp("paired")
    return write_klarf(lot.inspection, d / "insp.000"), write_stdf(lot.sort, d / "sort.stdf"), \
        write_g85(lot.sort, d / "sort.xml"), lot


def test_planted_kill_ratios_are_recovered_from_klarf_and_stdf(lot_files) -> None:
    insp, stdf, _, lot = lot_files
    report = kill_ratios(read_maps(insp), read_maps(stdf), Alignment(flip_y=True))
    assert len(report.wafers) == 12 and not report.inspection_only and not report.sort_only
    assert report.defects_untested == 0 and not report.warnings
    assert abs(report.clean_fail_rate - lot.baseline_fail) < 0.02
    rows = {int(r.key): r for r in report.by_class}
    assert set(rows) == {1, 2, 3} and rows[1].name == "1 CLASS1"
    for cls, row in rows.items():
        assert abs(row.kill_ratio - lot.kill_ratio(cls)) < 0.04, (cls, row)
        assert abs(row.kill_probability - lot.kill[cls]) < 0.04, (cls, row)
        assert row.kill_ratio_low < row.kill_ratio < row.kill_ratio_high
        assert row.yield_loss == pytest.approx(row.dies_with * row.kill_ratio / report.dies)
    assert [int(r.key) for r in report.by_class] == [1, 2, 3]  # worst yield loss first
    assert sum(r.dies_with for r in report.by_size) >= sum(r.dies_with for r in report.by_class)


def test_g85_sort_gives_the_same_answer_under_its_own_die_numbering(lot_files) -> None:
    insp, stdf, g85, _ = lot_files
    inspection = read_maps(insp)
    from_stdf = kill_ratios(inspection, read_maps(stdf), Alignment(flip_y=True))
    sort = read_maps(g85)
    rows, cols = sort[0].shape
    # G85 numbers dies by column/row from the top-left; the generator centres KLARF indices
    found, _ = best_alignment(pair_wafers(inspection, sort).pairs[0])
    assert found == Alignment(cols // 2, rows - 1 - rows // 2, False, True)
    from_g85 = kill_ratios(inspection, sort, found)
    assert [(r.key, r.dies_with, r.failing_with) for r in from_g85.by_class] == \
        [(r.key, r.dies_with, r.failing_with) for r in from_stdf.by_class]


def test_a_wrong_flip_is_flagged_and_a_wrong_offset_refused(lot_files) -> None:
    insp, stdf, _, _ = lot_files
    inspection, sort = read_maps(insp), read_maps(stdf)
    unflipped = kill_ratios(inspection, sort)  # a round wafer still overlaps itself
    assert unflipped.warnings and "--flip y" in unflipped.warnings[0]
    assert all(abs(r.kill_ratio) < 0.06 for r in unflipped.by_class)
    with pytest.raises(FabsightError, match=r"cannot be aligned with --offset 25,0.*--offset 0,0 --flip y fits best"):
        kill_ratios(inspection, sort, Alignment(25, 0, False, True))


def test_wilson_and_newcombe_intervals() -> None:
    lo, hi = wilson(81, 263)  # Newcombe (1998) table I example: 0.2553 to 0.3662
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    lo, hi = newcombe(56, 70, 48, 80)  # Newcombe (1998) method 10 example: 0.0524 to 0.3339
    assert (round(lo, 4), round(hi, 4)) == (0.0524, 0.3339)


def test_wafer_ids_match_across_conventions() -> None:
    assert wafer_key("GAL-LOT", "GAL-LOT-02") == wafer_key("gal-lot ", "2") == ("gal-lot", "2")
    assert wafer_key("A103", "07")[1] == "7" and wafer_key("A103", "W7")[1] == "w7"


@pytest.mark.parametrize(("offset", "flip"), [("1", None), ("a,b", None), (None, "z"), (None, "xx")])
def test_bad_alignment_options(offset: str | None, flip: str | None) -> None:
    with pytest.raises(FabsightError, match=r"--offset|--flip"):
        Alignment.parse(offset, flip)


def _inspection_on(sort: WaferMap, wafer_id: str, dx: int) -> tuple[WaferMap, Alignment]:
    """A KLARF-style map of ``sort``'s wafer: class 1 defects on its failing dies, class 2 on
    every 7th passing die, numbered x − dx and with Y growing up (so sort = flip y, +dx)."""
    rows, cols = np.nonzero(sort.grid != DieState.OFF)
    failed = sort.grid[rows, cols] == DieState.FAIL
    pick = failed | (np.arange(rows.size) % 7 == 0)
    x = sort.x_index[cols[pick]] - dx
    y = -sort.y_index[rows[pick]]
    cls = np.where(failed[pick], 1, 2)
    n = int(pick.sum())
    grid = np.where(sort.grid != DieState.OFF, DieState.GOOD, DieState.OFF).astype(np.uint8)
    grid[rows[pick], cols[pick]] = DieState.FAIL
    y_index = -sort.y_index
    if y_index[-1] > y_index[0]:  # KLARF rows run with Y growing up: turn the picture with the numbering
        grid, y_index = grid[::-1], y_index[::-1]
    defects = DefectList(np.arange(1, n + 1), np.full(n, np.nan), np.full(n, np.nan), np.full(n, 10.0),
                         np.full(n, 10.0), x.astype(np.int64), y.astype(np.int64), np.full(n, 3.0),
                         cls.astype(np.int64))
    insp = WaferMap(grid=grid, lot_id=sort.lot_id or "LOT", wafer_id=wafer_id, die_pitch=(2000.0, 2000.0),
                    x_index=sort.x_index - dx, y_index=y_index, defects=defects,
                    extras={"class_names": {1: "PARTICLE", 2: "RESIDUE"}})
    return insp, Alignment(dx, 0, False, True)


@pytest.mark.parametrize(("fixture", "wafer_id"), [("stdf/lot2.stdf", "02"), ("g85/SEMI_G85_1101_ALL.xml", "abcd123")])
def test_real_sort_fixtures_pair_and_align(shared: Path, tmp_path: Path, fixture: str, wafer_id: str) -> None:
    sort = read_maps(shared / "fixtures" / fixture)
    insp_map, truth = _inspection_on(sort[0], wafer_id, dx=5)
    inspection = read_maps(write_klarf([insp_map], tmp_path / "insp.000"))
    assert best_alignment(pair_wafers(inspection, sort).pairs[0])[0] == truth
    report = kill_ratios(inspection, sort, truth)
    rows = {r.name: r for r in report.by_class}
    assert rows["1 PARTICLE"].dies_with == sort[0].n_fail and rows["1 PARTICLE"].fail_rate == 1.0
    assert rows["2 RESIDUE"].failing_with == 0 and report.clean_failing == 0
    assert rows["1 PARTICLE"].kill_ratio == 1.0 and rows["2 RESIDUE"].kill_ratio == 0.0


def test_cli_refuses_sort_and_inspection_of_different_lots(shared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["killratio", "--inspection", shared / "fixtures/klarf/QUU_NUU.000",
                              "--sort", shared / "fixtures/stdf/lot2.stdf"], capsys)
    assert code == 2 and not out
    assert err.count("\n") == 1 and "lot2.stdf: sort lot GAL-LOT is not the inspection lot QUU" in err


def test_cli_refuses_swapped_inputs_and_bad_offsets(shared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    klarf, stdf = shared / "fixtures/klarf/QUU_NUU.000", shared / "fixtures/stdf/lot2.stdf"
    code, _, err = run_cli(["killratio", "--inspection", stdf, "--sort", klarf], capsys)
    assert code == 2 and "lot2.stdf: has no defect list" in err
    code, _, err = run_cli(["killratio", "--inspection", klarf, "--sort", stdf, "--offset", "1;2"], capsys)
    assert code == 2 and "expected two integers" in err and err.count("\n") == 1


def test_cli_json(lot_files, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    insp, stdf, _, _ = lot_files
    code, out, err = run_cli(["killratio", "--inspection", insp, "--sort", stdf, "--flip", "y", "--size-bins",
                              "1,5", "--json"], capsys)
    assert code == 0 and not err
    result = json.loads(out)
    assert result["alignment"]["options"] == "--offset 0,0 --flip y" and result["errors"] == []
    assert {r["name"] for r in result["by_size"]} <= {"<1 µm", "1–5 µm", "≥5 µm"}
    assert sum(r["dies"] for r in result["wafers"]) == result["dies"]


def test_same_lot_without_common_wafers_is_refused(shared: Path, tmp_path: Path) -> None:
    sort = read_maps(shared / "fixtures/stdf/lot2.stdf")
    insp_map, truth = _inspection_on(sort[0], "17", dx=0)
    inspection = read_maps(write_klarf([insp_map], tmp_path / "insp.000"))
    with pytest.raises(FabsightError, match=r"lot2.stdf: no wafer is in both.*GAL-LOT/17.*GAL-LOT/GAL-LOT-02"):
        kill_ratios(inspection, sort, truth)
