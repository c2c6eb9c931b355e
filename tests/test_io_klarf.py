"""KLARF 1.1/1.2/1.8 reading on the real fixtures, checked against the files' own summaries."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fabsight.errors import FormatError
from fabsight.io import detect_format, read_maps
from fabsight.io.klarf import read_klarf, write_klarf
from fabsight.types import DieState

pytestmark = pytest.mark.shared


def _summaries(path: Path) -> list[tuple[int, int, int]]:
    """(NDEFECT, NDIE, NDEFDIE) per wafer from the SummaryList records, read with a regex."""
    text = path.read_text()
    rows = re.findall(r"SummaryList\s+(\d+)\s+(\d+)\s+\S+\s+(\d+)\s+(\d+)\s*;", text)
    return [(int(n), int(nd), int(ndd)) for _, n, nd, ndd in rows]


def _defect_lines(path: Path) -> list[list[str]]:
    """Defect rows of a plain one-row-per-line KLARF 1.2 file, the way awk would see them."""
    rows, inside = [], False
    for line in path.read_text().splitlines():
        if line.startswith("DefectList"):
            inside = True
            continue
        if line.startswith("SummarySpec"):
            inside = False
        if inside and line.strip():
            rows.append(line.replace(";", " ").split())
    return rows


@pytest.mark.parametrize("name", ["QUU_NUU.000", "LAA_FAA_LAA-01.000", "LARGE_KLARF.000"])
def test_real_files_match_their_summary_records(shared: Path, name: str) -> None:
    path = shared / "fixtures/klarf" / name
    maps = read_maps(path)
    summaries = _summaries(path)
    assert len(maps) == len(summaries)
    lines = _defect_lines(path)
    assert sum(len(m.defects) for m in maps) == len(lines)
    for m, (n_defect, _n_die, n_defect_dies) in zip(maps, summaries, strict=True):
        assert m.format == "klarf"
        assert len(m.defects) == n_defect
        assert m.n_fail == n_defect_dies  # failing dies = dies holding ≥ 1 defect
        assert int(m.counts.sum()) == n_defect
        assert m.extras["die_grid"] == "wafer geometry"
        # every die with a defect is FAIL, every FAIL die has a defect
        assert np.array_equal(m.grid == DieState.FAIL, m.counts > 0)


def test_quu_nuu_three_wafers(shared: Path) -> None:
    maps = read_maps(shared / "fixtures/klarf/QUU_NUU.000")
    assert [m.wafer_id for m in maps] == ["02", "06", "01"]
    assert {m.lot_id for m in maps} == {"QUU"}
    assert sum(len(m.defects) for m in maps) == 187  # 56 + 36 + 95 rows (grep), as its SummaryLists say
    assert maps[0].die_pitch == pytest.approx((2459.878, 2659.947))
    assert [m.extras["slot"] for m in maps] == ["1", "5", "25"]
    assert maps[0].notch == "down"
    assert maps[0].timestamp is not None and maps[0].timestamp.year == 2020


def test_defects_land_on_their_die(shared: Path) -> None:
    path = shared / "fixtures/klarf/LARGE_KLARF.000"
    (m,) = read_maps(path)
    lines = _defect_lines(path)
    pairs = {(int(r[3]), int(r[4])) for r in lines}
    assert len(pairs) == 120 == m.n_fail
    # first row: " 1 188.845 639.419 5 27 ..." → die (5, 27)
    col = int(np.flatnonzero(m.x_index == 5)[0])
    row = int(np.flatnonzero(m.y_index == 27)[0])
    assert m.grid[row, col] == DieState.FAIL
    assert m.y_index[0] > m.y_index[-1]  # row 0 is the top: the largest YINDEX
    d = m.defects
    assert d.defect_id[0] == 1 and d.xrel[0] == pytest.approx(188.845) and d.size[0] == pytest.approx(0.299)
    assert "DYN_CLUSTER_ID" in d.extra
    # wafer coordinates: index * pitch + rel - centre
    assert d.x[0] == pytest.approx(5 * 3399.976 + 188.845 - 2469.553)


def test_geometry_grid_is_round(shared: Path) -> None:
    # its SummaryList claims 40 defects but its DefectList is empty: the list is what counts
    (m,) = read_maps(shared / "fixtures/klarf/klarf_no_defect.000")
    assert m.n_fail == 0 and len(m.defects) == 0
    # a 200 mm wafer of 4.0 × 6.6 mm dies holds about π·100²/(4·6.6) ≈ 1190 dies, fewer when whole
    assert 1000 < m.n_dies < 1190
    assert m.grid[0, 0] == DieState.OFF and m.grid[m.shape[0] // 2, m.shape[1] // 2] == DieState.GOOD


def test_klarf18_records_lists_and_nm_units(shared: Path) -> None:
    maps = read_maps(shared / "fixtures/klarf/simple18.klarf")
    assert [m.wafer_id for m in maps] == ["FirstWaferId", "SecondWaferId"]
    assert [len(m.defects) for m in maps] == [3, 1]
    first = maps[0]
    assert first.lot_id == "aLot.String"
    assert first.die_pitch == pytest.approx((5744.15, 5410.203))  # nm → µm
    assert first.extras["die_grid"] == "SampleTestPlan"
    assert first.n_dies == 9 + 3  # 9 tested dies in two TestRecords + 3 defect dies outside them
    assert first.extras["class_names"] == {0: "Unclassified", 1: "NV", 2: "FM", 3: "Blobby"}
    assert first.defects.class_number.tolist() == [91, 180, 0]
    assert first.defects.xrel[0] == pytest.approx(1254.96)


def test_na_values_become_nan(shared: Path) -> None:
    maps = read_maps(shared / "fixtures/klarf/wierdKlarfWithNAs.klarf")
    extra = maps[0].defects.extra  # NA in DBGROUP of defect 2 and DCIRANGE of defect 3
    assert np.isnan(extra["DBGROUP"]).tolist() == [False, True, False]
    assert np.isnan(extra["DCIRANGE"]).tolist() == [False, False, True]


def test_image_lists_are_kept(shared: Path) -> None:
    (m,) = read_maps(shared / "fixtures/klarf/klarfWithImagelist.klarf")
    images = m.defects.extra["IMAGELIST"]
    assert images[0] == ("a/path/here", "a/path/there", "a/path/anywhere")
    assert images[1] == ()
    (m12,) = read_maps(shared / "fixtures/klarf/klarf12DefectListExample.klarf")
    assert len(m12.defects) == 13  # four DefectList records, IMAGELIST counts 0..7
    assert m12.defects.extra["IMAGELIST"][10] == tuple(str(v) for v in (1, 0, 2, 0, 3, 0, 4, 0, 5, 0, 6, 0, 7, 0))


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("bad12.klarf", "wafer 'anotherWafer' has no DefectList"),
        ("bad12DefectList.klarf", "DefectList ends inside a defect record"),
    ],
)
def test_broken_files_fail_with_one_line(shared: Path, name: str, problem: str) -> None:
    with pytest.raises(FormatError) as info:
        read_maps(shared / "fixtures/klarf" / name)
    assert problem in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(shared / "fixtures/klarf" / name))


def test_truncated_and_binary_files(shared: Path, tmp_path: Path) -> None:
    text = (shared / "fixtures/klarf/QUU_NUU.000").read_text()
    cut = tmp_path / "cut.000"
    cut.write_text(text[: len(text) // 2])
    with pytest.raises(FormatError, match="truncated"):
        read_klarf(cut)
    binary = tmp_path / "bin.000"
    binary.write_bytes(b"FileVersion 1 2;\x00\x01\x02")
    with pytest.raises(FormatError, match="binary"):
        read_klarf(binary)
    empty = tmp_path / "empty.000"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="empty"):
        read_maps(empty)


def test_detect_by_content_not_extension(shared: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "defects.txt"
    renamed.write_bytes((shared / "fixtures/klarf/simple18.klarf").read_bytes())
    assert detect_format(renamed) == "klarf"


READABLE = [
    "QUU_NUU.000",
    "LAA_FAA_LAA-01.000",
    "klarf_no_defect.000",
    "simple12.klarf",
    "simple18.klarf",
    "klarf12Example.klarf",
    "klarf12DefectListExample.klarf",
    "klarfWithImagelist.klarf",
    "wierdKlarfWithNAs.klarf",
]


@pytest.mark.parametrize("name", READABLE)
def test_write_klarf_round_trip(shared: Path, tmp_path: Path, name: str) -> None:
    maps = read_maps(shared / "fixtures/klarf" / name)
    back = read_maps(write_klarf(maps, tmp_path / "lot.000"))
    assert [b.wafer_id for b in back] == [m.wafer_id for m in maps]
    for a, b in zip(maps, back, strict=True):
        assert b.extras["die_grid"] == "SampleTestPlan"
        assert np.array_equal(a.grid, b.grid)
        assert np.array_equal(a.x_index, b.x_index) and np.array_equal(a.y_index, b.y_index)
        assert np.array_equal(a.counts, b.counts)
        assert b.extras["class_names"] == a.extras["class_names"]
        assert np.allclose(a.defects.xrel, b.defects.xrel) and np.allclose(
            a.defects.size, b.defects.size, equal_nan=True
        )
        assert np.array_equal(a.defects.class_number, b.defects.class_number)


def _klarf(rows: str) -> str:
    return (
        'FileVersion 1 2;\nLotID "L";\nSampleSize 1 200;\nDiePitch 1000 1000;\nWaferID "W";\n'
        "SampleCenterLocation 0 0;\nDefectRecordSpec 4 DEFECTID XINDEX YINDEX DSIZE;\n"
        f"DefectList\n{rows};\nSummarySpec 1 TESTNO;\nSummaryList 1;\nEndOfFile;\n"
    )


def test_wrapped_records_and_short_rows(tmp_path: Path) -> None:
    path = tmp_path / "w.000"
    path.write_text(_klarf(" 1 0 0\n 2.5\n 2 3 -4 NA\n"))  # record 1 wraps onto a second line
    (m,) = read_klarf(path)
    assert m.defects.defect_id.tolist() == [1, 2] and m.defects.size[0] == 2.5 and np.isnan(m.defects.size[1])
    assert m.grid[int(np.flatnonzero(m.y_index == -4)[0]), int(np.flatnonzero(m.x_index == 3)[0])] == DieState.FAIL
    path.write_text(_klarf(" 1 0 0 1.0\n 2 3 -4\n 3 1 1 1.0\n"))  # one value missing: not padded with NaN
    with pytest.raises(FormatError, match="11 values, not a whole number of 4-column"):
        read_klarf(path)
    path.write_text(_klarf(" 1 0 0 1.0\n 2 3 x 1.0\n"))
    with pytest.raises(FormatError, match="'x' is not a number"):
        read_klarf(path)


def test_defects_without_indices_are_placed_from_positions(shared: Path, tmp_path: Path) -> None:
    """Strip XINDEX/YINDEX from a real file and give centre-relative positions instead:
    every defect must land on the same die."""
    (m,) = read_maps(shared / "fixtures/klarf/LAA_FAA_LAA-01.000")
    d = m.defects
    text = (shared / "fixtures/klarf/LAA_FAA_LAA-01.000").read_text()
    head = text[: text.index("DefectRecordSpec")]
    rows = "\n".join(f" {i} {x:.3f} {y:.3f} {s}" for i, x, y, s in zip(d.defect_id, d.x, d.y, d.size, strict=True))
    path = tmp_path / "noindex.000"
    path.write_text(
        head + f"DefectRecordSpec 4 DEFECTID XREL YREL DSIZE;\nDefectList\n{rows};\n"
        "SummarySpec 1 TESTNO;\nSummaryList 1;\nEndOfFile;\n"
    )
    (b,) = read_klarf(path)
    assert np.array_equal(b.defects.xindex, d.xindex) and np.array_equal(b.defects.yindex, d.yindex)
    assert np.allclose(b.defects.xrel, d.xrel, atol=1e-2) and np.array_equal(b.grid, m.grid)


def test_defect_record_spec_declared_once_for_the_lot(tmp_path: Path) -> None:
    text = (
        'FileVersion 1 2;\nLotID "L";\nDiePitch 1000 1000;\nDefectRecordSpec 3 DEFECTID XINDEX YINDEX;\n'
        'WaferID "1";\nDefectList\n 1 0 0\n 2 1 0;\nSummaryList 1;\n'
        'WaferID "2";\nDefectList\n 1 5 5;\nSummaryList 1;\nEndOfFile;\n'
    )
    path = tmp_path / "lot.000"
    path.write_text(text)
    maps = read_klarf(path)
    assert [len(m.defects) for m in maps] == [2, 1]
    assert [m.extras["die_grid"] for m in maps] == ["defect extent"] * 2
    assert maps[0].grid.tolist() == [[2, 2]]
