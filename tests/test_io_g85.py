"""SEMI G85 XML maps: the real fixtures against their own BinCount attributes, and round trips."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from fabsight.errors import FormatError
from fabsight.io import read_maps
from fabsight.io.g85 import read_g85, write_g85
from fabsight.types import BinDefinition, WaferMap


@pytest.mark.shared
@pytest.mark.parametrize("name", ["SEMI_G85_1101_ALL.xml", "SEMI_G85_1101_MIN.xml"])
def test_fixture_counts_match_bin_counts(shared: Path, name: str) -> None:
    path = shared / "fixtures/g85" / name
    text = path.read_text()
    declared = {int(c, 16): int(n) for c, n in re.findall(r'BinCode="(\w+)"[^>]*BinCount="(\d+)"', text)}
    rows = re.findall(r"<!\[CDATA\[(\w+)\]\]>", text)
    (m,) = read_maps(path)
    assert m.shape == (60, 60) == (len(rows), len(rows[0]) // 2)
    for code, count in declared.items():
        assert int(np.count_nonzero(m.bins == code)) == count
    assert m.n_good == declared[0x00] == 2765
    assert m.n_fail == declared[0xDE] + declared[0xAD]
    assert m.n_off == sum(r[i : i + 2] == "FF" for r in rows for i in range(0, len(r), 2))
    assert m.bin_definitions[0xAD].passed is False


@pytest.mark.shared
def test_fixture_metadata(shared: Path) -> None:
    (m,) = read_maps(shared / "fixtures/g85/SEMI_G85_1101_ALL.xml")
    assert (m.lot_id, m.wafer_id, m.notch) == ("DEADBEEF", "ABCD123", "down")
    assert m.die_pitch == (5000.0, 5000.0)
    assert m.timestamp is not None and m.timestamp.isoformat() == "2023-10-28T12:34:56"
    assert m.bin_definitions[0xAD].name == "QC"
    # first row: 27 null bins then "DEDEADDEDE00DE"
    assert m.bins[0, 27:34].tolist() == [0xDE, 0xDE, 0xAD, 0xDE, 0xDE, 0x00, 0xDE]


def test_decimal_and_round_trip(tmp_path: Path) -> None:
    grid = np.array([[0, 1, 2], [1, 1, 2], [0, 2, 0]], np.uint8)
    bins = np.array([[-1, 1, 300], [1, 1, 7], [-1, 300, -1]], np.int32)
    m = WaferMap(
        grid,
        lot_id="L",
        wafer_id="W",
        bins=bins,
        notch="right",
        bin_definitions={1: BinDefinition(1, True, "good"), 300: BinDefinition(300, False, "leak")},
    )
    write_g85([m, m], tmp_path / "m.xml")
    back = read_g85(tmp_path / "m.xml")
    assert len(back) == 2
    for b in back:
        assert np.array_equal(b.grid, grid) and np.array_equal(b.bins, bins)
        assert b.notch == "right" and b.bin_definitions[300].name == "leak"


def test_space_separated_decimal_rows(tmp_path: Path) -> None:
    xml = """<Map WaferId="w"><Device BinType="Decimal" NullBin="255" Rows="2" Columns="3">
    <Bin BinCode="1" BinQuality="Pass"/><Bin BinCode="12" BinQuality="Fail"/>
    <Data><Row>255 1 12</Row><Row>1 1 255</Row></Data></Device></Map>"""
    path = tmp_path / "d.xml"
    path.write_text(xml)
    (m,) = read_g85(path)
    assert m.grid.tolist() == [[0, 1, 2], [1, 1, 0]]


@pytest.mark.parametrize(
    ("xml", "problem"),
    [
        ("<Map><Device", "broken XML"),
        ("<Other/>", "no SEMI G85 <Map>"),
        ('<Map><Device Rows="2" Columns="2"><Data><Row>0000</Row></Data></Device></Map>', "1 rows, Rows says 2"),
        ('<Map><Device Rows="1" Columns="3"><Data><Row>0000</Row></Data></Device></Map>', "row 1 has 2 dies"),
        ('<Map><Device Rows="1" Columns="1"><Data><Row>ZZ</Row></Data></Device></Map>', "not a valid hex"),
        ('<Map><Device Rows="1" Columns="1" Orientation="45"><Data><Row>00</Row></Data></Device></Map>', "45°"),
    ],
)
def test_bad_g85(tmp_path: Path, xml: str, problem: str) -> None:
    path = tmp_path / "bad.xml"
    path.write_text(xml)
    with pytest.raises(FormatError, match=re.escape(problem)):
        read_g85(path)


def test_unknown_xml_encoding_is_a_format_error(tmp_path) -> None:
    # found by the mutation fuzzer: a damaged declaration made ElementTree raise LookupError
    from fabsight.errors import FormatError
    from fabsight.io import read_maps

    bad = tmp_path / "map.xml"
    bad.write_bytes(b'<?xml version="1.0" encoding="TF-8"?><Map/>')
    with pytest.raises(FormatError, match="encoding"):
        read_maps(bad)
