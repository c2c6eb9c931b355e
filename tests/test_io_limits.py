"""Bounded readers: declared sizes are checked before allocating, and hostile numbers are one-line errors.

Every input here is built from bytes in the test. The first group are the inputs that
crashed a reader with a traceback before (each is now a FormatError naming the file); the
second, the tiny files that asked for gigabytes (each is now refused from its header in
well under a second, with almost no memory); the last, that real files still read and the
limits can be changed.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest

from fabsight.die.data import read_image
from fabsight.errors import FabsightError, FormatError
from fabsight.io import read_maps, write_g85, write_klarf
from fabsight.io.limits import Limits, current
from fabsight.types import WaferMap
from fuzzkit import measure, png_bytes, worst_inputs

KLARF_HEAD = 'FileVersion 1 2;\nSampleSize 1 300;\nDiePitch 10000 10000;\nDieOrigin 0 0;\nWaferID "W1";\n'
KLARF_TAIL = "DefectRecordSpec 3 DEFECTID XINDEX YINDEX;\nDefectList\n 1 0 0;\nEndOfFile;\n"
G85 = '<Map><Device Rows="1" Columns="1" BinType="Decimal" NullBin="255"{attr}>{bins}<Data><Row>1</Row></Data>'
G85 += "</Device></Map>"


def _npy(header: str, data: bytes = bytes(64)) -> bytes:
    raw = header.encode("latin-1")
    raw += b" " * (63 - len(raw) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(raw)) + raw + data


def _npz_with_method(method: int) -> bytes:
    """A valid MixedWM38 .npz whose arr_0 member then claims compression ``method``."""
    buf = io.BytesIO()
    np.savez(buf, np.zeros((1, 4, 4), np.uint8), np.zeros((1, 8), np.int64))
    data = bytearray(buf.getvalue())
    for sig, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        k = data.index(sig)  # the first member, arr_0.npy, in the local header and the directory
        data[k + at : k + at + 2] = struct.pack("<H", method)
    return bytes(data)


CRASHERS = {  # name → (file name, bytes, what the one-line error says)
    "klarf SampleCenterLocation nan": (
        "a.000",
        (KLARF_HEAD + "SampleCenterLocation nan 0;\n" + KLARF_TAIL).encode(),
        "samplecenterlocation must be finite",
    ),
    "klarf SampleCenterLocation inf": (
        "a.000",
        (KLARF_HEAD + "SampleCenterLocation 0 inf;\n" + KLARF_TAIL).encode(),
        "samplecenterlocation must be finite",
    ),
    "klarf OrientationMarkLocation inf": (
        "a.000",
        (KLARF_HEAD + "OrientationMarkLocation inf;\n" + KLARF_TAIL).encode(),
        "orientation 'inf' is not an angle",
    ),
    "klarf SampleTestPlan beyond int64": (
        "a.000",
        (KLARF_HEAD + "SampleTestPlan 1 99999999999999999999 0;\n" + KLARF_TAIL).encode(),
        "SampleTestPlan die indices beyond",
    ),
    "klarf SampleTestPlan that wrapped the span check": (
        "a.000",
        (KLARF_HEAD + "SampleTestPlan 2 -4611686018427387904 0 4611686018427387904 0;\n" + KLARF_TAIL).encode(),
        "SampleTestPlan die indices beyond",
    ),
    "klarf DefectRecordSpec changing columns after a DefectList (found by the fuzzer)": (
        "a.000",
        (
            KLARF_HEAD
            + KLARF_TAIL.replace("EndOfFile;\n", "DefectRecordSpec 2 XINDEX YINDEX;\nDefectList 1 1;\nEndOfFile;\n")
        ).encode(),
        "DefectRecordSpec changes the columns",
    ),
    "g85 BinCode beyond int64": (
        "a.xml",
        G85.format(attr="", bins='<Bin BinCode="99999999999999999999" BinQuality="Pass"/>').encode(),
        "does not fit in 32 bits",
    ),
    "g85 Orientation inf": ("a.xml", G85.format(attr=' Orientation="inf"', bins="").encode(), "is not an angle"),
    "npy header that does not parse": ("a.npy", _npy("{'descr': '<i8', 'shape': (2,"), "not a readable .npy"),
    "npy header with a bad dtype": (
        "a.npy",
        _npy("{'descr': '<q9', 'fortran_order': False, 'shape': (2, 2), }"),
        "not a readable .npy",
    ),
    "npy header with a negative shape": (
        "a.npy",
        _npy("{'descr': '|u1', 'fortran_order': False, 'shape': (-1, 4), }"),
        "not a numeric array",
    ),
    "npy of pickled objects": (
        "a.npy",
        _npy("{'descr': '|O', 'fortran_order': False, 'shape': (1, 1), }"),
        "not a numeric array",
    ),
    "npz with an unknown compression method": ("a.npz", _npz_with_method(99), "compression method 99"),
    "npz with lzma (inflates a whole chunk at once)": ("a.npz", _npz_with_method(14), "compression method 14"),
    "png decompression bomb over Pillow's guard": (
        "a.png",
        png_bytes(100_000, 100_000, zlib.compress(bytes(100))),
        "not a readable PNG",
    ),
}


@pytest.mark.parametrize("name", list(CRASHERS))
def test_inputs_that_crashed_are_one_line_format_errors(tmp_path: Path, name: str) -> None:
    file_name, data, problem = CRASHERS[name]
    path = tmp_path / file_name
    path.write_bytes(data)
    with pytest.raises(FormatError) as info:
        read_maps(path)
    message = str(info.value)
    assert message.startswith(str(path) + ": ") and "\n" not in message
    assert problem in message


@pytest.fixture(scope="module")
def worst() -> dict[str, dict]:
    """Every small worst input (and a PNG whose chunk claims 4 GiB) read once in one fresh worker
    process with 256 MiB of address space to spare; peaks are cumulative over the inputs."""
    inputs = worst_inputs(big=False)
    inputs["png: a chunk length of 4 GiB"] = ("png", png_bytes(11, 9, b"")[:33] + b"\xff\xff\x00\x00IDAT" + bytes(20))
    return {r["input"]: r for r in measure(inputs, separate=False, cap_mib=256)}


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("stdf: 40 bytes, 2 parts 18712 × 13091 dies apart", "13091 × 18712 dies, over the limit of 5000 per side"),
        ("klarf: 2 defects 5000 × 5000 dies apart (defect extent)", "25000000 dies, over the limit of 4000000"),
        ("klarf: 300 mm wafer of 0.3 µm dies (wafer circle)", "1000003 × 1000003 dies"),
        ("g85: Rows × Columns 100000 × 100000", "FABSIGHT_MAX_GRID_SIDE"),
        ("g85: billion laughs (10^9 entity expansions)", "entity declarations are refused"),
        ("npy: header shape 2^20 × 2^20", "1048576 × 1048576 dies"),
        ("npy: header 1-D, 2^40 bytes", "FABSIGHT_MAX_ARRAY_BYTES"),
        ("npz: zip directory says 2^40 bytes", "1099511627912 bytes, over the limit"),
        ("png: header 100000 × 100000", "decompression bomb"),
        ("png: header 9000 × 9000 (under Pillow's own bomb guard)", "9000 × 9000 dies"),
        ("tiff: header 9000 × 9000 (under Pillow's own bomb guard)", "FABSIGHT_MAX_IMAGE_PIXELS"),
        ("png die image: header 9000 × 9000", "FABSIGHT_MAX_IMAGE_PIXELS"),
        ("png: a chunk length of 4 GiB", "not a readable PNG"),  # these four were MemoryErrors under a cap:
        ("npy: header length field of 662 MB", "a header of 662372470 bytes"),  # a read reserves the size
        ("npz: 900 MB claimed by a 440-byte archive", "not a readable .npz"),  # a file claims, before reading
        ("die image: a GIMP-brush header claiming a 2 GiB comment", "cannot be decoded"),  # found as a mutated TIFF
    ],
)
def test_worst_inputs_are_refused_from_their_header(worst: dict[str, dict], name: str, problem: str) -> None:
    outcome = worst[name]["outcome"]
    assert outcome.startswith("refused: ") and problem in outcome, outcome


def test_worst_inputs_cost_neither_time_nor_memory(worst: dict[str, dict]) -> None:
    rows = list(worst.values())
    assert all(r["outcome"].startswith("refused: ") for r in rows), [r["outcome"] for r in rows]
    assert max(r["seconds"] for r in rows) < 1.0  # measured 0.0-0.02 s
    # each read's own growth: its peak over the worker after warming up on a real file of the format
    grown = max(r["peak_rss_mib"] - r["rss_before_mib"] for r in rows)
    assert grown < 50, rows  # these inputs took 1.4-4.2 GB before the header checks


def test_npz_directory_size_is_checked_before_inflating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:  # 300 kB of zeros deflate to 300 bytes
        zf.writestr(
            "arr_0.npy", _npy("{'descr': '|u1', 'fortran_order': False, 'shape': (1, 500, 600), }", bytes(300_000))
        )
        zf.writestr("arr_1.npy", _npy("{'descr': '|u1', 'fortran_order': False, 'shape': (1, 8), }", bytes(8)))
    assert read_maps(path, format="npz")[0].grid.shape == (500, 600)
    monkeypatch.setenv("FABSIGHT_MAX_ARRAY_BYTES", "200000")
    with pytest.raises(
        FormatError, match=r"the arrays arr_0, arr_1 would take 30\d{4} bytes, over the limit of 200000"
    ):
        read_maps(path, format="npz")


def test_npy_header_cannot_claim_more_than_the_file_holds(tmp_path: Path) -> None:
    path = tmp_path / "a.npy"
    path.write_bytes(_npy("{'descr': '<i8', 'fortran_order': False, 'shape': (100, 100), }", bytes(800)))
    with pytest.raises(FormatError, match="declares 80000 bytes of data, the file holds 800"):
        read_maps(path)


def test_arrays_read_as_numpy_reads_them(tmp_path: Path) -> None:
    grid = np.array([[0, 1, 2], [1, 1, 0]])
    for i, arr in enumerate([grid.astype(">i8"), np.asfortranarray(grid.astype(np.float32)), grid.astype(np.uint8)]):
        np.save(tmp_path / f"m{i}.npy", arr)
        (m,) = read_maps(tmp_path / f"m{i}.npy")
        assert m.grid.tolist() == grid.tolist()
    np.savez_compressed(tmp_path / "c.npz", np.stack([grid, grid[::-1]]), np.eye(2, 8, dtype=np.int64))
    maps = read_maps(tmp_path / "c.npz")
    assert [m.grid.tolist() for m in maps] == [grid.tolist(), grid[::-1].tolist()]
    assert [m.labels for m in maps] == [("Center",), ("Donut",)]


@pytest.mark.shared
def test_real_mixedwm38_reads_exactly_as_np_load(shared: Path) -> None:
    path = shared / "data/mixedwm38/MixedWM38_train_01.npz"
    maps = read_maps(path)
    with np.load(path) as z:
        assert np.array_equal(np.stack([m.grid for m in maps]), z["arr_0"])
        assert np.array_equal(np.stack([m.extras["label_vector"] for m in maps]), z["arr_1"])


def test_limits_come_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    grid = np.ones((9, 11), np.uint8)
    grid[4, 5] = 2
    klarf, g85 = write_klarf([WaferMap(grid)], tmp_path / "a.000"), write_g85([WaferMap(grid)], tmp_path / "a.xml")
    np.save(tmp_path / "a.npy", grid)
    assert current() == Limits()
    for path in (klarf, g85, tmp_path / "a.npy"):
        assert read_maps(path)[0].grid.shape == (9, 11)
    monkeypatch.setenv("FABSIGHT_MAX_GRID_SIDE", "10")
    for path in (klarf, g85, tmp_path / "a.npy"):
        with pytest.raises(FormatError, match=r"9 × 11 dies, over the limit of 10 per side \(FABSIGHT_MAX_GRID_SIDE\)"):
            read_maps(path)
    monkeypatch.setenv("FABSIGHT_MAX_GRID_SIDE", "11")
    monkeypatch.setenv("FABSIGHT_MAX_GRID_DIES", "98")
    with pytest.raises(FormatError, match="9 × 11 = 99 dies, over the limit of 98"):
        read_maps(g85)
    monkeypatch.setenv("FABSIGHT_MAX_GRID_DIES", "lots")
    with pytest.raises(FabsightError, match="FABSIGHT_MAX_GRID_DIES='lots' is not a positive whole number"):
        read_maps(g85)


def test_die_image_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    path = tmp_path / "die.tif"
    Image.fromarray(np.arange(64 * 48, dtype=np.uint8).reshape(48, 64)).save(path)
    assert read_image(path).shape == (48, 64)
    monkeypatch.setenv("FABSIGHT_MAX_IMAGE_PIXELS", str(64 * 48 - 1))
    with pytest.raises(FormatError, match=r"die\.tif: image of 64 × 48 pixels, over the limit of 3071"):
        read_image(path)
