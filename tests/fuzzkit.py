"""Mutation fuzzer of every wafer-data and image reader, with a memory cap and a time limit per case.

Seeds are real fixtures (``../shared/fixtures``, when present: small KLARFs, G85 maps, the
wafer-sort records of ``lot2.stdf``) plus files fabsight's own writers, numpy and Pillow
make here (KLARF, STDF, G85, ``.npy``, ``.npz``, PNG, TIFF, an LSWMD pickle). Each case is
a seed put through a few mutations (bytes flipped or set to boundary values, spans cut,
duplicated or spliced from another seed, numbers in text swapped for huge/NaN/negative
ones, zip and PNG header fields rewritten with valid checksums) and read by the real
reader **in a worker process**, one case after another, with

* an address-space rlimit of the worker's size after warm-up + ``cap_mib`` (an allocation
  over it raises MemoryError: a finding), and
* a per-case alarm of ``case_seconds`` (a finding), backed by a watchdog in the parent
  that kills a worker stuck inside C code and records that case as a hang too.

Any exception other than :class:`fabsight.errors.FabsightError` (whose message must be one
line) is a finding; findings keep their input file so they can be replayed. Cases are
deterministic: case ``i`` of a format with seed ``s`` is always the same bytes.

Used by ``tests/test_io_fuzz.py`` (a few seconds per format) and
``benchmarks/fuzz_parsers.py`` (as many cases as asked, JSON report).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import re
import select
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

FORMATS = ("klarf", "stdf", "g85", "npz", "npy", "png", "tiff", "lswmd")
SUFFIX = {"klarf": ".000", "stdf": ".stdf", "g85": ".xml", "npz": ".npz", "npy": ".npy", "png": ".png"}
SUFFIX |= {"tiff": ".tif", "lswmd": ".pkl", "image": ".png"}
SHARED = Path(__file__).resolve().parents[2] / "shared"
_SMALL_FIXTURE = 20_000  # bytes: bigger fixtures make each case slow without adding structure

# ----------------------------------------------------------------------------- seeds


def _fixture_seeds(fmt: str, shared: Path | None) -> list[bytes]:
    root = None if shared is None else shared / "fixtures" / fmt
    if root is None or not root.is_dir():
        return []
    if fmt == "stdf":
        return [_stdf_wafer_records((root / "lot2.stdf").read_bytes())]
    suffixes = {".klarf", ".000"} if fmt == "klarf" else {".xml"}
    files = sorted(p for p in root.iterdir() if p.suffix in suffixes and p.stat().st_size < _SMALL_FIXTURE)
    return [p.read_bytes() for p in files]


def _stdf_wafer_records(data: bytes, max_parts: int = 120) -> bytes:
    """A real STDF cut down to its bin-map records: FAR, MIR, WIR/WCR, the first parts, bins, MRR.

    Test results (PTR/FTR) are the bulk of the real file; two are kept so the skipping path
    stays covered.
    """
    keep = {(0, 10), (1, 10), (1, 20), (1, 40), (1, 50), (2, 10), (2, 20), (2, 30), (5, 10), (5, 20)}
    out, pos, parts, tests = [], 0, 0, 0
    while pos + 4 <= len(data):
        length, typ, sub = struct.unpack_from("<HBB", data, pos)
        rec = data[pos : pos + 4 + length]
        pos += 4 + length
        if (typ, sub) == (5, 20):
            parts += 1
            if parts > max_parts:
                continue
        if (typ, sub) in keep or ((typ, sub) == (15, 10) and tests < 2):
            tests += (typ, sub) == (15, 10)
            out.append(rec)
    return b"".join(out)


def _written_seeds(fmt: str, tmp: Path) -> list[bytes]:
    """Files fabsight's writers, numpy and Pillow make from small known maps."""
    import numpy as np

    from fabsight.io import write_g85, write_klarf, write_lswmd, write_stdf
    from fabsight.types import WaferMap

    yy, xx = np.mgrid[:9, :11]
    grid = np.where((yy - 4) ** 2 / 20 + (xx - 5) ** 2 / 30 <= 1, 1, 0).astype(np.uint8)
    grid[3:5, 4:7] *= 2
    maps = [WaferMap(grid, lot_id="L1", wafer_id="W1", die_pitch=(900.0, 800.0)), WaferMap(grid.T.copy())]
    out = tmp / f"seed{SUFFIX[fmt]}"
    if fmt in ("klarf", "g85", "lswmd"):
        {"klarf": write_klarf, "g85": write_g85, "lswmd": write_lswmd}[fmt](maps, out)
        return [out.read_bytes()]
    if fmt == "stdf":
        return [write_stdf(maps, out, byte_order=o).read_bytes() for o in ("<", ">")]
    if fmt == "npy":
        return [_npy(grid), _npy(grid.astype(">i8")), _npy(np.asfortranarray(grid.astype(np.float32)))]
    if fmt == "npz":
        stack = np.stack([grid, grid[::-1]]).astype(np.int64)
        labels = np.array([[1, 0, 0, 0, 0, 0, 0, 0], [0] * 8], np.int64)
        return [_npz(np.savez, stack, labels), _npz(np.savez_compressed, stack, labels)]
    return _image_seeds(fmt, grid)


def _npy(arr: Any) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _npz(save: Callable[..., None], *arrays: Any) -> bytes:
    buf = io.BytesIO()
    save(buf, *arrays)
    return buf.getvalue()


def _image_seeds(fmt: str, grid: Any) -> list[bytes]:
    import numpy as np
    from PIL import Image

    grey = Image.fromarray(grid * 100)
    rgb = Image.fromarray(np.stack([grid * 100] * 3, axis=-1))
    wide = Image.fromarray(grid.astype(np.uint16) * 30000)  # mode I;16
    images = [grey, rgb, grey.convert("P"), wide, grey.convert("1")]
    options = [{}] if fmt == "png" else [{}, {"compression": "tiff_lzw"}, {"compression": "tiff_adobe_deflate"}]
    out = []
    for im in images:
        for opts in options:
            buf = io.BytesIO()
            im.save(buf, format="PNG" if fmt == "png" else "TIFF", **opts)
            out.append(buf.getvalue())
    return out


def seeds(fmt: str, shared: Path | None, tmp: Path) -> list[bytes]:
    """The seed files of one format: real fixtures (when ``shared`` has them), written ones, and the
    small worst inputs (their mutations probe sizes just inside and outside the limits)."""
    hostile = [data for f, data in worst_inputs(big=False).values() if f == fmt]
    return _fixture_seeds(fmt, shared) + _written_seeds(fmt, tmp) + hostile


def _prr(x: int, y: int) -> bytes:
    return struct.pack("<HBB", 13, 5, 20) + struct.pack("<BBBHHHhh", 1, 1, 0, 0, 1, 1, x, y)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bytes(width: int, height: int, idat: bytes) -> bytes:
    """A grey 8-bit PNG of the declared size holding ``idat`` as its (zlib) pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def _deflate_zeros(head: bytes, n_zeros: int, *, zlib_wrapped: bool) -> tuple[bytes, int]:
    """``head`` + ``n_zeros`` zero bytes as raw deflate (or a zlib stream), about 1 kB per MB: a real
    bomb, built in seconds by repeating one fully flushed block; with the data's CRC-32.

    A full flush ends a block on a byte boundary with no back-references, so copies of it
    chain into one valid stream.
    """
    chunk = 1 << 24
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = comp.compress(bytes(chunk)) + comp.flush(zlib.Z_FULL_FLUSH)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = comp.compress(bytes(n_zeros % chunk)) + comp.flush()
    crc, adler = zlib.crc32(head), zlib.adler32(head)
    for _ in range(n_zeros // chunk):
        crc, adler = zlib.crc32(bytes(chunk), crc), zlib.adler32(bytes(chunk), adler)
    crc, adler = zlib.crc32(bytes(n_zeros % chunk), crc), zlib.adler32(bytes(n_zeros % chunk), adler)
    body = first + block * (n_zeros // chunk) + tail
    return (b"\x78\xda" + body + struct.pack(">I", adler) if zlib_wrapped else body), crc


def npz_bomb(n_bytes: int) -> bytes:
    """An ``.npz`` whose deflated ``arr_0`` inflates to an ``n_bytes`` array of zeros."""
    import numpy as np

    header = io.BytesIO()
    np.lib.format.write_array_header_2_0(header, {"descr": "|u1", "fortran_order": False, "shape": (n_bytes, 1, 1)})
    head = header.getvalue()
    body, crc = _deflate_zeros(head, n_bytes, zlib_wrapped=False)
    return _zip([("arr_0.npy", body, len(head) + n_bytes, crc), _deflated_npy(np.zeros((1, 8), np.uint8))])


def png_bomb(side: int) -> bytes:
    """A grey ``side`` × ``side`` PNG of real zero pixels (a few hundred kB for 20,000²)."""
    idat, _ = _deflate_zeros(b"", side * (side + 1), zlib_wrapped=True)
    return png_bytes(side, side, idat)


def _zip(members: list[tuple[str, bytes, int, int]], *, claim_compressed: int | None = None) -> bytes:
    """A zip of already-deflated members ``(name, data, inflated size, crc)``, ZIP64 sizes;
    ``claim_compressed``: the compressed size every member claims instead of its own."""
    local, central = b"", b""
    for name, data, size, crc in members:
        raw = name.encode()
        extra = struct.pack("<HHQQ", 1, 16, size, len(data) if claim_compressed is None else claim_compressed)
        head = struct.pack("<HHHHHIIIHH", 45, 0, 8, 0, 0, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(raw), len(extra))
        offset = len(local)
        local += b"PK\x03\x04" + head + raw + extra + data
        central += b"PK\x01\x02" + struct.pack("<H", 45) + head + struct.pack("<HHHII", 0, 0, 0, 0, offset)
        central += raw + extra
    n = len(members)
    return local + central + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, n, n, len(central), len(local), 0)


def _deflated_npy(arr: Any) -> tuple[str, bytes, int, int]:
    data = _npy(arr)
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    return "arr_1.npy", comp.compress(data) + comp.flush(), len(data), zlib.crc32(data)


def _tiff_header(width: int, height: int) -> bytes:
    """A grey 8-bit TIFF declaring ``width`` × ``height`` pixels over one tiny strip."""
    tags = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8 + 2 + 9 * 12 + 4)]
    tags += [(277, 3, 1), (278, 4, height), (279, 4, 16)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", t, k, 1, v) for t, k, v in tags)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + bytes(16)


def _klarf(lines: list[str]) -> bytes:
    return ("FileVersion 1 2;\n" + "\n".join(lines) + "\nEndOfFile;\n").encode()


def _laughs() -> bytes:
    ents = '<!ENTITY a0 "die">' + "".join(f'<!ENTITY a{i} "{f"&a{i - 1};" * 10}">' for i in range(1, 10))
    rows = '<Device Rows="1" Columns="1" LotId="&a9;"><Data><Row>00</Row></Data></Device>'
    return f'<?xml version="1.0"?><!DOCTYPE Map [{ents}]><Map>{rows}</Map>'.encode()


def worst_inputs(*, big: bool) -> dict[str, tuple[str, bytes]]:
    """Hostile files, small on disk, each asking a reader for gigabytes: name → (format, bytes).

    ``big`` adds the real decompression bombs (a 4.2 GB ``.npz`` in 4 MB, a 400 Mpixel PNG),
    which take seconds to build.
    """
    import numpy as np

    far = b"\x02\x00\x00\x0a\x02\x04"
    defects = ["DefectRecordSpec 3 DEFECTID XINDEX YINDEX;", "DefectList", " 1 0 0;"]
    out = {
        "stdf: 40 bytes, 2 parts 18712 × 13091 dies apart": ("stdf", far + _prr(-9356, -6545) + _prr(9355, 6545)),
        "stdf: 2 parts at the int16 corners": ("stdf", far + _prr(-32767, -32767) + _prr(32767, 32767)),
        "klarf: 2 defects 5000 × 5000 dies apart (defect extent)": (
            "klarf",
            _klarf(['WaferID "1";', *defects[:2], " 1 0 0", " 2 4999 4999;"]),
        ),
        "klarf: 300 mm wafer of 0.3 µm dies (wafer circle)": (
            "klarf",
            _klarf(["SampleSize 1 300;", "DiePitch 0.3 0.3;", "SampleCenterLocation 0 0;", 'WaferID "1";', *defects]),
        ),
        "klarf: SampleTestPlan at ±2^62": (
            "klarf",
            _klarf(['WaferID "1";', "SampleTestPlan 2 -4611686018427387904 0 4611686018427387904 0;", *defects]),
        ),
        "g85: Rows × Columns 100000 × 100000": (
            "g85",
            b'<Map><Device Rows="100000" Columns="100000"><Data><Row>00</Row></Data></Device></Map>',
        ),
        "g85: billion laughs (10^9 entity expansions)": ("g85", _laughs()),
        "npy: header shape 2^20 × 2^20": ("npy", _npy_header("(1048576, 1048576)")),
        "npy: header 1-D, 2^40 bytes": ("npy", _npy_header("(1099511627776,)")),
        "npy: header length field of 662 MB": (
            "npy",
            b"\x93NUMPY\x02\x00" + struct.pack("<I", 662_372_470) + bytes(64),
        ),
        "npz: 900 MB claimed by a 440-byte archive": ("npz", _short_npz(900_000_000)),
        "npz: zip directory says 2^40 bytes": (
            "npz",
            _zip([("arr_0.npy", b"\x03\x00", 1 << 40, 0), _deflated_npy(np.zeros((1, 8), np.uint8))]),
        ),
        "png: header 100000 × 100000": ("png", png_bytes(100_000, 100_000, zlib.compress(bytes(1000)))),
        "png: header 9000 × 9000 (under Pillow's own bomb guard)": (
            "png",
            png_bytes(9000, 9000, zlib.compress(bytes(1000))),
        ),
        "tiff: header 100000 × 100000": ("tiff", _tiff_header(100_000, 100_000)),
        "tiff: header 9000 × 9000 (under Pillow's own bomb guard)": ("tiff", _tiff_header(9000, 9000)),
        "die image: a GIMP-brush header claiming a 2 GiB comment": (
            "image",
            struct.pack(">5I", 0x7FFFFFF0, 1, 1, 1, 1),
        ),
        "png die image: header 9000 × 9000": ("image", png_bytes(9000, 9000, zlib.compress(bytes(1000)))),
    }
    if big:
        out["npz: 4.2 GB of zeros deflated (real bomb)"] = ("npz", npz_bomb(4_200_000_000))
        out["png: 20000 × 20000 zero pixels (real bomb)"] = ("png", png_bomb(20_000))
    return out


def _short_npz(claim: int) -> bytes:
    """An ``.npz`` whose ``arr_0`` header and zip directory both claim ``claim`` bytes it does not hold."""
    import numpy as np

    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (claim, 1, 1)})
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    arr_0 = ("arr_0.npy", comp.compress(header.getvalue() + bytes(100)) + comp.flush(), claim + 128, 0)
    return _zip([arr_0, _deflated_npy(np.zeros((1, 8), np.uint8))], claim_compressed=claim)


def _npy_header(shape: str) -> bytes:
    header = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (63 - len(header) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + bytes(64)


# ----------------------------------------------------------------------------- mutations

_NUMBERS = [b"0", b"-1", b"1", b"2", b"255", b"65535", b"32767", b"-32768", b"2147483648", b"-2147483649"]
_NUMBERS += [b"9223372036854775808", b"-9223372036854775809", b"18446744073709551616", b"99999999999999999999999"]
_NUMBERS += [b"1e308", b"-1e308", b"1e-308", b"nan", b"inf", b"-inf", b"NA", b"1.5", b"4999", b"5001", b"1e6"]
_NUMBERS += [b"0x10", b"\xef\xbc\x91", b""]
_TEXT_BITS = [b";", b'"', b"{", b"}", b",", b"\n", b" ", b"<", b">", b"&", b"]]>", b"\x00", b"\xff"]
_INTS = [0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
_NUMBER_RE = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")


def _span(rng: random.Random, data: bytearray) -> tuple[int, int]:
    i = rng.randrange(len(data) + 1)
    return i, min(len(data), i + rng.choice((1, 2, 4, 8, 32, 256, 4096)))


def _flip(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    if data:
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)


def _set_int(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    width = rng.choice((1, 2, 4, 8))
    if len(data) >= width:
        i = rng.randrange(len(data) - width + 1)
        value = (rng.choice(_INTS) + rng.choice((-1, 0, 0, 1))) % (1 << (8 * width))
        data[i : i + width] = value.to_bytes(width, rng.choice(("little", "big")))


def _cut(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    del data[rng.randrange(len(data) + 1) :]


def _delete(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    i, j = _span(rng, data)
    del data[i:j]


def _duplicate(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    i, j = _span(rng, data)
    k = rng.randrange(len(data) + 1)
    data[k:k] = data[i:j] * rng.choice((1, 2, 16))


def _splice(rng: random.Random, data: bytearray, pool: list[bytes]) -> None:
    other = rng.choice(pool)
    i, j = rng.randrange(len(other) + 1), rng.randrange(len(data) + 1)
    data[j:] = other[i:]


def _number(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    """A number in text (KLARF fields, G85 attributes, npy header shapes) swapped for a boundary value."""
    found = list(_NUMBER_RE.finditer(data))
    if found:
        m = rng.choice(found)
        data[m.start() : m.end()] = rng.choice(_NUMBERS)


def _text_bit(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    k = rng.randrange(len(data) + 1)
    data[k:k] = rng.choice(_TEXT_BITS)


def _zip_field(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    """A zip header field rewritten: compression method, flags or a size, local or central."""
    heads = [(m.start(), 8, 18) for m in re.finditer(rb"PK\x03\x04", data)]  # method, sizes at +18
    heads += [(m.start(), 10, 20) for m in re.finditer(rb"PK\x01\x02", data)]
    if not heads:
        return
    start, method_at, sizes_at = rng.choice(heads)
    if rng.random() < 0.4 and start + method_at + 2 <= len(data):
        method = rng.choice((1, 6, 9, 12, 14, 93, 95, 98, 99, 0xFFFF))
        data[start + method_at : start + method_at + 2] = struct.pack("<H", method)
    else:
        at = start + sizes_at + 4 * rng.randrange(2)
        if at + 4 <= len(data):
            data[at : at + 4] = struct.pack("<I", rng.choice(_INTS))


def _png_field(rng: random.Random, data: bytearray, _: list[bytes]) -> None:
    """IHDR width/height/depth/colour type rewritten, or a chunk's bytes changed, then every CRC fixed
    (Pillow checks them, so random flips alone never reach the decoder)."""
    if len(data) >= 33 and rng.random() < 0.6:
        field = rng.choice(((16, ">I"), (20, ">I"), (24, ">B"), (25, ">B")))
        value = rng.choice((0, 1, 2, 3, 4, 6, 8, 16, 5000, 5001, 30000, 65535, 1 << 20, 0x7FFFFFFF))
        data[field[0] : field[0] + struct.calcsize(field[1])] = struct.pack(
            field[1], value % (256 if "B" in field[1] else 1 << 32)
        )
    else:
        _set_int(rng, data, [])
    _fix_png_crcs(data)


def _fix_png_crcs(data: bytearray) -> None:
    pos = 8
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + 8 + length
        if end + 4 > len(data):
            return
        data[end : end + 4] = struct.pack(">I", zlib.crc32(data[pos + 4 : end]))
        pos = end + 4


_BYTES = [_flip, _set_int, _cut, _delete, _duplicate, _splice]
MUTATORS: dict[str, list[Callable[[random.Random, bytearray, list[bytes]], None]]] = {
    "klarf": [*_BYTES, _number, _number, _number, _text_bit],
    "g85": [*_BYTES, _number, _number, _text_bit],
    "stdf": [*_BYTES, _set_int, _set_int],
    "npy": [*_BYTES, _number, _number, _text_bit],
    "npz": [*_BYTES, _zip_field, _zip_field, _number],
    "png": [*_BYTES, _png_field, _png_field, _png_field],
    "tiff": [*_BYTES, _set_int, _set_int],
    "lswmd": [*_BYTES, _set_int],
}


def make_case(fmt: str, pool: list[bytes], seed: int, index: int) -> bytes:
    """Case ``index``: a seed from ``pool`` put through 1-4 mutations (deterministic)."""
    rng = random.Random(f"{fmt}:{seed}:{index}")
    data = bytearray(rng.choice(pool))
    for _ in range(rng.choice((1, 1, 2, 3, 4))):
        rng.choice(MUTATORS[fmt])(rng, data, pool)
    return bytes(data)


# ----------------------------------------------------------------------------- the worker


class CaseTimeout(Exception):
    """Raised by the per-case alarm: the reader ran past ``case_seconds``."""


def _readers() -> dict[str, Callable[[Path], object]]:
    from fabsight.die.data import read_image
    from fabsight.io import detect_format, read_maps

    def both(fmt: str) -> Callable[[Path], object]:
        def run(path: Path) -> object:
            maps = read_maps(path, format=fmt)
            detect_format(path)
            return maps

        return run

    def png(path: Path) -> object:
        return both("png")(path), read_image(path)

    return {"klarf": both("klarf"), "stdf": both("stdf"), "g85": both("g85"), "npz": both("mixedwm38")} | {
        "npy": both("npy"),
        "png": png,
        "tiff": read_image,
        "image": read_image,
        "lswmd": both("lswmd"),
    }


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _vm_bytes() -> int:
    return _status_kib("VmSize") * 1024


def _peak_rss_kib() -> int:
    """This process's own peak RSS (VmHWM): ``ru_maxrss`` survives exec on Linux, so a worker
    started by a big process (pytest late in a run) would report its parent's peak."""
    return _status_kib("VmHWM")


def _classify(exc: BaseException) -> dict[str, Any] | None:
    """None for an acceptable outcome, else the finding's kind, type, message and where it was raised."""
    from fabsight.errors import FabsightError

    if isinstance(exc, FabsightError):
        return None if "\n" not in str(exc) else {"kind": "crash", "type": "multi-line error", "message": str(exc)}
    tb = exc.__traceback__
    where = ""
    while tb is not None:
        if "fabsight" in tb.tb_frame.f_code.co_filename:
            where = f"{Path(tb.tb_frame.f_code.co_filename).name}:{tb.tb_lineno}"
        tb = tb.tb_next
    kind = "hang" if isinstance(exc, CaseTimeout) else "memory" if isinstance(exc, MemoryError) else "crash"
    return {"kind": kind, "type": type(exc).__name__, "message": str(exc)[:300], "where": where}


def _alarm(signum: int, frame: object) -> None:
    raise CaseTimeout("case ran past its time limit")


def worker(job: dict[str, Any]) -> None:
    """Run cases ``job['start']``.. of one format, one line of JSON per event on stdout."""
    import resource
    import warnings

    warnings.simplefilter("ignore")  # readers' warnings are not findings
    fmt, work = job["fmt"], Path(job["work"])
    pool = [Path(p).read_bytes() for p in job["seeds"]]
    read = _readers()[fmt]
    case = work / f"case{SUFFIX[fmt]}"
    for data in pool:  # warm-up: imports, thread pools and caches exist before the cap is set
        case.write_bytes(data)
        with contextlib.suppress(Exception):
            read(case)
    limit = _vm_bytes() + job["cap_mib"] * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
    rss0 = _peak_rss_kib()
    signal.signal(signal.SIGALRM, _alarm)
    deadline = time.monotonic() + job["seconds"]
    out = sys.stdout
    i = job["start"]
    while i < job["end"] and time.monotonic() < deadline:
        case.write_bytes(make_case(fmt, pool, job["seed"], i))
        out.write(f'{{"case": {i}}}\n')
        out.flush()
        signal.setitimer(signal.ITIMER_REAL, job["case_seconds"])
        finding = None
        try:
            read(case)
        except BaseException as exc:
            signal.setitimer(signal.ITIMER_REAL, 0)
            finding = _classify(exc)
        signal.setitimer(signal.ITIMER_REAL, 0)
        if finding:
            out.write(json.dumps({"finding": {"case": i, **finding}}) + "\n")
        i += 1
    out.write(json.dumps({"done": i, "baseline_rss_kib": rss0, "peak_rss_kib": _peak_rss_kib()}) + "\n")
    out.flush()


# ----------------------------------------------------------------------------- the parent


def _spawn(job: dict[str, Any]) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (src, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, str(Path(__file__).resolve()), json.dumps(job)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)


def fuzz(
    fmt: str,
    *,
    cases: int,
    seconds: float = float("inf"),
    seed: int = 0,
    cap_mib: int = 512,
    case_seconds: float = 5.0,
    shared: Path | None = SHARED,
    keep: Path | None = None,
) -> dict[str, Any]:
    """Run up to ``cases`` cases of ``fmt`` for at most ``seconds``; a summary with every finding.

    ``keep``: a folder where each finding's input is saved (``FORMAT-CASE.ext``).
    """
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{fmt}-") as tmp_name:
        tmp = Path(tmp_name)
        pool = seeds(fmt, shared if shared and shared.is_dir() else None, tmp)
        seed_paths = []
        for k, data in enumerate(pool):
            seed_paths.append(str(tmp / f"seed{k}{SUFFIX[fmt]}"))
            Path(seed_paths[-1]).write_bytes(data)
        job = {"fmt": fmt, "work": str(tmp), "seeds": seed_paths, "seed": seed, "cap_mib": cap_mib}
        job |= {"case_seconds": case_seconds, "start": 0, "end": cases}
        started = time.monotonic()
        summary: dict[str, Any] = {"format": fmt, "seeds": len(pool), "cases": 0, "findings": []}
        peak = base = 0
        while job["start"] < cases and time.monotonic() - started < seconds:
            job["seconds"] = seconds - (time.monotonic() - started)
            done, stats = _watch(_spawn(job), job, summary["findings"], case_seconds)
            peak, base = max(peak, stats.get("peak_rss_kib", 0)), max(base, stats.get("baseline_rss_kib", 0))
            job["start"] = done
        elapsed = time.monotonic() - started
        if keep is not None:
            keep.mkdir(parents=True, exist_ok=True)
            for f in summary["findings"]:
                (keep / f"{fmt}-{f['case']}{SUFFIX[fmt]}").write_bytes(make_case(fmt, pool, seed, f["case"]))
    kinds = [f["kind"] for f in summary["findings"]]
    summary |= {"cases": job["start"], "seconds": round(elapsed, 1), "cases_per_s": round(job["start"] / elapsed, 1)}
    summary |= {"crashes": kinds.count("crash"), "hangs": kinds.count("hang"), "over_memory_cap": kinds.count("memory")}
    summary |= {"peak_rss_mib": round(peak / 1024, 1), "rss_after_warmup_mib": round(base / 1024, 1)}
    return summary


class _Lines:
    """Lines from a worker's stdout, each waited for at most a given time (None: nothing came)."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        self.fd = proc.stdout.fileno()
        self.buf = b""

    def next(self, wait: float) -> str | None:
        end = time.monotonic() + wait
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return ""
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def _watch(
    proc: subprocess.Popen[bytes], job: dict[str, Any], findings: list[dict[str, Any]], case_seconds: float
) -> tuple[int, dict[str, Any]]:
    """Follow one worker; kill it when a case outlives the alarm (stuck in C code) or it dies.

    Returns the next case to run and the worker's statistics; its peak RSS comes from the
    kernel (``wait4``), so a worker that crashed counts too.
    """
    lines = _Lines(proc)
    current, warm, stats = job["start"], True, {}
    lost: dict[str, Any] | None = None
    while lost is None and not stats:
        line = lines.next(120.0 if warm else case_seconds * 2 + 5)  # warm-up reads every seed
        if not line:
            lost = {"case": current, "kind": "crash" if line == "" else "hang"}
            lost["type"] = "worker died" if line == "" else "killed"
            break
        event, warm = json.loads(line), False
        if "case" in event:
            current = event["case"]
        elif "finding" in event:
            findings.append(event["finding"])
        else:
            stats = event
    if lost is not None:  # os.kill, not proc.kill/poll: those would reap the worker before wait4
        os.kill(proc.pid, signal.SIGKILL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.stdout is not None:
        proc.stdout.close()
    stats.setdefault("peak_rss_kib", usage.ru_maxrss)  # a worker that died never reported its own
    if lost is not None:
        findings.append(lost | {"message": f"exit status {proc.returncode}"})
        return current + 1, stats
    return stats["done"], stats


def _measure_worker(inputs: list[list[str]], cap_mib: int | None) -> None:
    """Read each ``[name, format, path, warm-up path]``; one JSON line each: outcome, seconds, RSS
    before (after reading the warm-up file: the imports and caches a real read needs) and peak.
    ``cap_mib``: the address space the read may add (as in the fuzzer), None for no cap."""
    import resource
    import warnings

    warnings.simplefilter("ignore")
    readers = _readers()
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    for name, fmt, path, warm in inputs:
        with contextlib.suppress(Exception):
            readers[fmt](Path(warm))
        before = _peak_rss_kib()
        if cap_mib is not None:
            resource.setrlimit(resource.RLIMIT_AS, (_vm_bytes() + cap_mib * 2**20, hard))
        t0 = time.perf_counter()
        try:
            readers[fmt](Path(path))
            outcome = "read"
        except BaseException as exc:
            finding = _classify(exc)
            outcome = f"{type(exc).__name__}: {exc}" if finding else f"refused: {exc}"
        seconds = time.perf_counter() - t0
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
        peak = _peak_rss_kib()
        row = {"input": name, "format": fmt, "bytes": Path(path).stat().st_size, "outcome": outcome[:240]}
        row |= {
            "seconds": round(seconds, 3),
            "rss_before_mib": round(before / 1024, 1),
            "peak_rss_mib": round(peak / 1024, 1),
        }
        print(json.dumps(row), flush=True)


def measure(
    inputs: dict[str, tuple[str, bytes]], *, separate: bool, cap_mib: int | None = None
) -> list[dict[str, Any]]:
    """Time and peak RSS of reading each input in a fresh worker (``separate``: one worker each,
    so every peak is that input's own; otherwise one worker for all, peaks are cumulative),
    with an address-space cap of ``cap_mib`` over the warmed-up worker when given."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="worst-") as tmp:
        jobs = []
        for k, (name, (fmt, data)) in enumerate(inputs.items()):
            path, warm = Path(tmp) / f"in{k}{SUFFIX[fmt]}", Path(tmp) / f"warm{k}{SUFFIX[fmt]}"
            path.write_bytes(data)
            warm.write_bytes(_written_seeds("png" if fmt == "image" else fmt, Path(tmp))[0])
            jobs.append([name, fmt, str(path), str(warm)])
        for group in [[j] for j in jobs] if separate else [jobs]:
            proc = _spawn({"measure": group, "cap_mib": cap_mib})
            out, _ = proc.communicate(timeout=600)
            rows += [json.loads(line) for line in out.decode().splitlines()]
    return rows


if __name__ == "__main__":
    request = json.loads(sys.argv[1])
    if "measure" in request:
        _measure_worker(request["measure"], request["cap_mib"])
    else:
        worker(request)
