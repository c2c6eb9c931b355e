"""STDF V4 bin maps from the real lot2.stdf and from files we write in both byte orders."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from fabsight.errors import FormatError
from fabsight.io import detect_format, read_maps
from fabsight.io.stdf import read_stdf, write_stdf
from fabsight.types import BinDefinition, DieState, WaferMap


def _walk(data: bytes) -> list[tuple[int, int, bytes]]:
    """Records of a big-endian STDF file, split by a loop independent of the reader."""
    out, pos = [], 0
    while pos < len(data):
        n = int.from_bytes(data[pos : pos + 2], "big")
        out.append((data[pos + 2], data[pos + 3], data[pos + 4 : pos + 4 + n]))
        pos += 4 + n
    return out


@pytest.mark.shared
def test_lot2_bin_map(shared: Path) -> None:
    path = shared / "fixtures/stdf/lot2.stdf"
    assert detect_format(path) == "stdf"
    (m,) = read_maps(path)
    records = _walk(path.read_bytes())
    prrs = [b for t, s, b in records if (t, s) == (5, 20)]
    last: dict[tuple[int, int], tuple[int, int]] = {}
    for b in prrs:  # HEAD SITE PART_FLG NUM_TEST HARD_BIN SOFT_BIN X Y
        flag, hard, x, y = b[2], int.from_bytes(b[5:7], "big"), *struct.unpack(">hh", b[9:13])
        last[(x, y)] = (hard, flag)
    assert len(prrs) == m.extras["parts_tested"] == 1569
    assert len(last) == 1456 == m.n_dies  # DATA.md: 1,456 X/Y die sites
    assert m.extras["retested_dies"] == len(prrs) - len(last)
    assert m.n_fail == sum(1 for _, flag in last.values() if flag & 0x08)
    assert m.lot_id == "GAL-LOT" and m.wafer_id == "GAL-LOT-02"
    assert sorted(set(np.unique(m.bins)) - {-1}) == sorted({h for h, _ in last.values()})
    # HBR totals count every part tested, retests included
    assert sum(d.count for d in m.bin_definitions.values()) == len(prrs)
    # the last result wins: a die's bin is that of its final PRR
    (x, y), (hard, _) = next(iter(last.items()))
    row = int(np.flatnonzero(m.y_index == y)[0])
    col = int(np.flatnonzero(m.x_index == x)[0])
    assert m.bins[row, col] == hard
    assert m.timestamp is not None and m.timestamp.year == 2001


def _map() -> WaferMap:
    grid = np.array([[0, 1, 1, 0], [1, 2, 1, 1], [1, 1, 2, 1], [0, 1, 1, 0]], np.uint8)
    bins = np.where(grid == 0, -1, np.where(grid == 2, 7, 1)).astype(np.int32)
    bins[2, 2] = 9
    return WaferMap(
        grid,
        lot_id="L1",
        wafer_id="W3",
        bins=bins,
        die_pitch=(5000.0, 4000.0),
        notch="left",
        bin_definitions={1: BinDefinition(1, True, "PASS"), 7: BinDefinition(7, False, "OPEN")},
    )


@pytest.mark.parametrize("order", ["<", ">"])
def test_write_read_round_trip_both_byte_orders(tmp_path: Path, order: str) -> None:
    m = _map()
    path = write_stdf([m, m.with_grid(m.grid)], tmp_path / "w.stdf", byte_order=order)
    assert path.read_bytes()[4] == (2 if order == "<" else 1)  # FAR CPU_TYPE
    back = read_stdf(path)
    assert len(back) == 2
    for b in back:
        assert np.array_equal(b.grid, m.grid) and np.array_equal(b.bins, m.bins)
        assert b.lot_id == "L1" and b.wafer_id == "W3" and b.notch == "left"
        assert b.die_pitch == pytest.approx((5000.0, 4000.0))
        assert b.bin_definitions[7].name == "OPEN" and not b.bin_definitions[7].passed
        assert b.bin_definitions[1].count == 2 * 10


def test_no_pass_fail_flag_uses_the_hard_bin(tmp_path: Path) -> None:
    order = "<"
    recs = [struct.pack("<HBB", 2, 0, 10) + bytes([2, 4])]
    for x, hard in ((0, 1), (1, 5)):  # PART_FLG bit 4: no pass/fail indication
        body = struct.pack("<BBBHHHhhI", 1, 1, 0x10, 0, hard, hard, x, 0, 0) + b"\x00\x00\x00"
        recs.append(struct.pack(order + "HBB", len(body), 5, 20) + body)
    path = tmp_path / "noflag.stdf"
    path.write_bytes(b"".join(recs))
    (m,) = read_stdf(path)
    assert m.grid.tolist() == [[DieState.GOOD, DieState.FAIL]]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "empty"),
        (b"\x00\x02\x00\x0a\x01\x03", "version 3"),
        (b"hello world, not stdf", "FAR"),
        (b"\x00\x02\x00\x0a\x01\x04\x00\x10\x05\x14\x01", "truncated"),
        (b"\x00\x02\x00\x0a\x01\x04", "no part results"),
    ],
)
def test_bad_stdf(tmp_path: Path, data: bytes, problem: str) -> None:
    path = tmp_path / "bad.stdf"
    path.write_bytes(data)
    with pytest.raises(FormatError, match=problem):
        read_stdf(path)


@pytest.mark.shared
def test_truncated_real_file(shared: Path, tmp_path: Path) -> None:
    data = (shared / "fixtures/stdf/lot2.stdf").read_bytes()
    path = tmp_path / "cut.stdf"
    path.write_bytes(data[: len(data) // 3 + 1])
    with pytest.raises(FormatError, match="truncated"):
        read_stdf(path)


def test_per_site_bin_records_are_summed_unless_summarised(tmp_path: Path) -> None:
    def rec(typ: int, sub: int, body: bytes) -> bytes:
        return struct.pack("<HBB", len(body), typ, sub) + body

    def hbr(head: int, site: int, num: int, cnt: int) -> bytes:
        return rec(1, 40, struct.pack("<BBHI", head, site, num, cnt) + b"F\x04OPEN")

    prr = struct.pack("<BBBHHHhhI", 1, 1, 0x08, 0, 3, 3, 0, 0, 0) + b"\x00\x00\x00"
    far = rec(0, 10, bytes([2, 4]))
    path = tmp_path / "sites.stdf"
    path.write_bytes(far + rec(5, 20, prr) + hbr(1, 1, 3, 4) + hbr(1, 2, 3, 5))
    assert read_stdf(path)[0].bin_definitions[3].count == 9
    path.write_bytes(far + rec(5, 20, prr) + hbr(1, 1, 3, 4) + hbr(255, 255, 3, 7) + hbr(1, 2, 3, 5))
    (m,) = read_stdf(path)
    assert m.bin_definitions[3].count == 7 and m.bin_definitions[3].name == "OPEN"
