"""SEMI G85 XML wafer maps (``<Map><Device><Bin/>…<Data><Row/>…``) → bin maps.

Bin codes are two hex digits per die (``BinType="HexaDecimal"``), fixed-width or
space-separated decimals (``Decimal``/``Integer``), or one character per die (``ASCII``).
The ``NullBin`` code marks dies off the wafer. A die is GOOD when its bin's
``BinQuality`` is ``Pass``; any other bin, defined or not, is FAIL. ``Orientation`` is the
notch angle clockwise from the bottom (0 = down, 90 = left, 180 = up, 270 = right).
Rows are stored top first, so row r of the file is row r of the grid; ``y_index`` is the
row number and ``x_index`` the column number.
"""

from __future__ import annotations

import contextlib
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from xml.parsers import expat
from xml.sax.saxutils import quoteattr

import numpy as np

from fabsight.errors import FormatError
from fabsight.io._common import ANGLE_BY_NOTCH, notch_from_angle, parse_timestamp
from fabsight.io.limits import check_grid
from fabsight.types import BinDefinition, DieState, WaferMap
from fabsight.utils.atomic import atomic_open


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(elem: ET.Element, name: str) -> ET.Element | None:
    return next((c for c in elem if _local(c.tag) == name), None)


def _code(path: Path, text: str, bin_type: str) -> int:
    """A bin code; it must fit the 32-bit ``bins`` array it is stored in."""
    try:
        code = int(text, 16) if bin_type == "hex" else (ord(text) if bin_type == "ascii" else int(text))
    except (ValueError, TypeError):
        raise FormatError(path, f"bin code {text[:20]!r} is not a valid {bin_type} bin code") from None
    if not -(2**31) <= code < 2**31:
        raise FormatError(path, f"bin code {text[:20]!r} does not fit in 32 bits")
    return code


def _bin_type(path: Path, attr: str) -> str:
    kind = attr.strip().lower()
    if kind.startswith("hex"):
        return "hex"
    if kind in ("decimal", "integer2", "integer", "dec"):
        return "decimal"
    if kind == "ascii":
        return "ascii"
    raise FormatError(path, f"unknown BinType {attr!r} (expected HexaDecimal, Decimal or ASCII)")


def _int_attr(path: Path, elem: ET.Element, name: str) -> int:
    value = elem.get(name)
    if value is None:
        raise FormatError(path, f"<{_local(elem.tag)}> has no {name} attribute")
    try:
        return int(value)
    except ValueError:
        raise FormatError(path, f"{name}={value!r} is not an integer") from None


def _row_codes(path: Path, text: str, r: int, cols: int, bin_type: str, width: int) -> list[int]:
    text = text.strip()
    if bin_type == "decimal" and any(ch.isspace() for ch in text):
        cells = text.split()
    else:
        cells = [text[i : i + width] for i in range(0, len(text), width)]
    if len(cells) != cols:
        raise FormatError(path, f"row {r + 1} has {len(cells)} dies, Columns says {cols}")
    return [_code(path, c, bin_type) for c in cells]


def _map_from(path: Path, map_el: ET.Element) -> WaferMap:
    device = _child(map_el, "Device")
    if device is None:
        raise FormatError(path, "<Map> has no <Device>")
    bin_type = _bin_type(path, device.get("BinType", "HexaDecimal"))
    null_text = device.get("NullBin", "FF" if bin_type == "hex" else "255")
    null = _code(path, null_text, bin_type)
    rows, cols = _int_attr(path, device, "Rows"), _int_attr(path, device, "Columns")
    if rows <= 0 or cols <= 0:
        raise FormatError(path, f"Rows={rows}, Columns={cols} is not a map size")
    check_grid(path, rows, cols, "<Device> Rows × Columns")
    defs: dict[int, BinDefinition] = {}
    for b in device:
        if _local(b.tag) != "Bin":
            continue
        code = _code(path, b.get("BinCode", ""), bin_type)
        count = b.get("BinCount")
        defs[code] = BinDefinition(
            code=code,
            passed=b.get("BinQuality", "").strip().lower() == "pass",
            name=b.get("BinDescription", ""),
            count=int(count) if count and count.isascii() and count.isdigit() else None,
        )
    data = _child(device, "Data")
    if data is None:
        raise FormatError(path, "<Device> has no <Data>")
    row_els = [r for r in data if _local(r.tag) == "Row"]
    if len(row_els) != rows:
        raise FormatError(path, f"<Data> has {len(row_els)} rows, Rows says {rows}")
    width = max(len(null_text.strip()), 1) if bin_type != "ascii" else 1
    if bin_type == "hex":
        width = max(width, 2)
    bins = np.array([_row_codes(path, r.text or "", i, cols, bin_type, width) for i, r in enumerate(row_els)], np.int64)
    off = bins == null
    pass_codes = np.array([c for c, d in defs.items() if d.passed], np.int64)
    grid = np.where(off, DieState.OFF, np.where(np.isin(bins, pass_codes), DieState.GOOD, DieState.FAIL))
    bins = np.where(off, -1, bins).astype(np.int32)
    size_x, size_y = device.get("DeviceSizeX"), device.get("DeviceSizeY")
    pitch = None
    try:
        if size_x and size_y and float(size_x) > 0 and float(size_y) > 0:
            pitch = (float(size_x), float(size_y))
    except ValueError:
        raise FormatError(path, f"DeviceSizeX/Y {size_x!r}/{size_y!r} are not numbers") from None
    created = device.get("CreateDate")
    return WaferMap(
        grid=grid,
        lot_id=device.get("LotId", ""),
        wafer_id=map_el.get("WaferId", ""),
        source=str(path),
        format="g85",
        die_pitch=pitch,
        notch=notch_from_angle(path, device.get("Orientation", "0")),
        x_index=np.arange(cols, dtype=np.int64),
        y_index=np.arange(rows, dtype=np.int64),
        bins=bins,
        bin_definitions=defs,
        timestamp=parse_timestamp([created]) if created else None,
        extras={
            "product_id": device.get("ProductId", ""),
            "origin_location": device.get("OriginLocation", ""),
            "wafer_size": device.get("WaferSize", ""),
            "bin_type": device.get("BinType", "HexaDecimal"),
        },
    )


def _refuse_entities(path: Path, raw: bytes) -> None:
    """Refuse XML that declares entities: SEMI G85 maps have none, and expanding them is the
    "billion laughs" bomb, which expat stops only after megabytes of expansion (and only from
    expat 2.4 on). A quick expat pass that stops at the first declaration."""

    def refuse(*_: object) -> None:
        raise FormatError(path, "XML entity declarations are refused (a SEMI G85 map has none)")

    scan = expat.ParserCreate()
    scan.EntityDeclHandler = refuse
    with contextlib.suppress(expat.ExpatError, LookupError, ValueError):  # broken XML: ElementTree words it
        scan.Parse(raw, True)


def read_g85(path: str | Path) -> list[WaferMap]:
    """Every ``<Map>`` of a SEMI G85 XML file (usually one)."""
    path = Path(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise FormatError(path, "empty file")
    _refuse_entities(path, raw)
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise FormatError(path, f"broken XML ({exc})") from None
    except LookupError as exc:  # the XML declaration names an encoding Python does not know
        raise FormatError(path, f"broken XML declaration ({exc})") from None
    maps = [root] if _local(root.tag) == "Map" else [e for e in root.iter() if _local(e.tag) == "Map"]
    if not maps:
        raise FormatError(path, "no SEMI G85 <Map> element")
    return [_map_from(path, m) for m in maps]


def _codes_of(wmap: WaferMap) -> np.ndarray:
    """Bin code per die: the map's bins, or 1 = pass / 0 = fail when it has none."""
    if wmap.bins is not None:
        codes = np.asarray(wmap.bins, np.int64).copy()
        missing = (codes < 0) & (wmap.grid != DieState.OFF)
        codes[missing] = np.where(wmap.grid[missing] == DieState.FAIL, 0, 1)
        return codes
    return np.where(wmap.grid == DieState.FAIL, 0, np.where(wmap.grid == DieState.GOOD, 1, -1))


def write_g85(maps: Sequence[WaferMap], path: str | Path) -> Path:
    """Write maps as SEMI G85 XML (one ``<Map>`` per wafer under a ``<Maps>`` root when
    there are several). Hex bin codes when they fit in two digits, decimal otherwise."""
    if not maps:
        raise FormatError(path, "nothing to write: no wafer maps")
    parts = ['<?xml version="1.0" encoding="UTF-8"?>']
    several = len(maps) > 1
    if several:
        parts.append('<Maps xmlns="http://www.semi.org">')
    for wmap in maps:
        codes = _codes_of(wmap)
        on = codes >= 0
        hexa = codes.max(initial=0) < 255
        width = 2 if hexa else len(str(int(codes.max(initial=0)) + 1))
        null = 255 if hexa else 10**width - 1  # all nines: above every code used
        cells = np.where(on, codes, null)
        spec = "02X" if hexa else f"0{width}d"

        used, counts = np.unique(codes[on], return_counts=True)
        rows, cols = wmap.shape
        ns = "" if several else ' xmlns="http://www.semi.org"'
        attrs = {
            "BinType": "HexaDecimal" if hexa else "Decimal",
            "LotId": wmap.lot_id,
            "NullBin": format(null, spec),
            "Rows": str(rows),
            "Columns": str(cols),
            "MapType": "Array",
            "OriginLocation": "0",
            "Orientation": str(ANGLE_BY_NOTCH.get(wmap.notch, 0)),
        }
        if wmap.die_pitch:
            attrs["DeviceSizeX"], attrs["DeviceSizeY"] = (f"{v:g}" for v in wmap.die_pitch)
        if wmap.timestamp:
            attrs["CreateDate"] = wmap.timestamp.strftime("%Y%m%d%H%M%S")
        parts.append(f'<Map{ns} WaferId={quoteattr(wmap.wafer_id)} FormatRevision="SEMI G85-1101">')
        parts.append("  <Device " + " ".join(f"{k}={quoteattr(v)}" for k, v in attrs.items()) + ">")
        for code, count in zip(used.tolist(), counts.tolist(), strict=True):
            d = wmap.bin_definitions.get(code)
            passed = d.passed if d is not None else bool(np.any((codes == code) & (wmap.grid == DieState.GOOD)))
            desc = f" BinDescription={quoteattr(d.name)}" if d is not None and d.name else ""
            parts.append(
                f'    <Bin BinCode="{format(code, spec)}" BinQuality="{"Pass" if passed else "Fail"}"{desc} '
                f'BinCount="{count}"/>'
            )
        parts.append("    <Data>")
        parts += ["      <Row><![CDATA[" + "".join(format(v, spec) for v in r.tolist()) + "]]></Row>" for r in cells]
        parts += ["    </Data>", "  </Device>", "</Map>"]
    if several:
        parts.append("</Maps>")
    with atomic_open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(parts) + "\n")
    return Path(path)
