"""KLARF (KLA Results File) 1.1/1.2 and 1.8: defect lists → per-die defect counts → wafer maps.

Both syntaxes are first turned into the same intermediate form (per-wafer fields, the
defect table, the tested dies, the class names) and then built into maps by one
function, so placement rules never diverge between versions.

Conventions (from the KLARF specification):

* YINDEX grows towards the top of the wafer, so row 0 of the grid is the largest YINDEX.
* ``XREL``/``YREL`` are positions inside the die; ``SampleCenterLocation`` is the wafer
  centre relative to the origin of die (0, 0); ``DieOrigin`` is the die origin relative to
  the die's lower-left corner. Wafer coordinates ``x``/``y`` are centre-relative.
* A defect without XINDEX/YINDEX (no index columns, or NA) is placed from its wafer
  position: ``X``/``Y``, or ``XREL``/``YREL`` when the file has no index columns, taken as
  centre-relative and turned into a die with ``DiePitch``/``DieOrigin``/``SampleCenterLocation``.
* KLARF 1.2 lengths are µm; KLARF 1.8 lengths are nm and are converted to µm.
* The on-wafer dies are the tested dies (``SampleTestPlan``) when the file lists them,
  otherwise every die lying fully inside the wafer circle (``SampleSize`` diameter,
  ``DiePitch``, ``SampleCenterLocation``), otherwise the bounding box of the defect dies;
  ``extras['die_grid']`` says which. Dies holding a defect are always on-wafer and FAIL.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.errors import FormatError
from fabsight.io._common import (
    ANGLE_BY_NOTCH,
    file_indices,
    grid_from_dies,
    index_to_cell,
    notch_from_angle,
    parse_timestamp,
)
from fabsight.io.limits import check_defects, check_span
from fabsight.types import DefectList, DieState, WaferMap
from fabsight.utils.atomic import atomic_open

#: Defect columns that have a place of their own in :class:`DefectList`.
_CORE_COLUMNS = ("DEFECTID", "XREL", "YREL", "XINDEX", "YINDEX", "DSIZE", "CLASSNUMBER")
#: Length columns converted from nm (KLARF 1.8) to µm.
_LENGTH_COLUMNS = ("XREL", "YREL", "X", "Y", "XSIZE", "YSIZE", "DSIZE")
_NOTCH_WORDS = {"DOWN": "down", "UP": "up", "LEFT": "left", "RIGHT": "right", "BOTTOM": "down", "TOP": "up"}
_MAX_DEPTH = 32
#: Largest die index (XINDEX/YINDEX, SampleTestPlan, the wafer circle) taken as sane.
_MAX_INDEX = 1_000_000


@dataclass
class _Wafer:
    """One wafer as read from either syntax, before it becomes a :class:`WaferMap`."""

    fields: dict[str, list[str]] = field(default_factory=dict)
    columns: list[str] | None = None
    blocks: list[np.ndarray] = field(default_factory=list)
    images: list[tuple[str, ...]] | None = None
    test_plan: list[tuple[int, int]] = field(default_factory=list)
    has_defect_list: bool = False


# ----------------------------------------------------------------------------- 1.2 syntax


def _statements(path: Path, text: str) -> list[str]:
    """Split KLARF 1.2 text into ``;``-terminated records, keeping quoted ``;`` intact."""
    out: list[str] = []
    buf: str | None = None
    for piece in text.split(";"):
        if buf is not None:
            piece = f"{buf};{piece}"
        if piece.count('"') % 2:
            buf = piece
            continue
        buf = None
        out.append(piece)
    if buf is not None:
        raise FormatError(path, "unterminated quoted string")
    tail = out.pop().strip() if out else ""
    if tail:
        word = tail.split(None, 1)[0]
        raise FormatError(path, f"file ends inside a '{word[:40]}' record (no ';': truncated?)")
    return out


_WORD = re.compile(r'"([^"]*)"|(\S+)')


def _words(text: str) -> list[str]:
    return [q if w == "" else w for q, w in _WORD.findall(text)]


def _floats(path: Path, tokens: Sequence[str], what: str) -> np.ndarray:
    """Numbers from text tokens (``NA`` → NaN), vectorised for big defect lists."""
    try:
        return np.array(["nan" if t in ("NA", "na", "N/A") else t for t in tokens], dtype=np.float64)
    except ValueError:
        bad = next(t for t in tokens if not _is_number(t))
        raise FormatError(path, f"{what}: {bad[:40]!r} is not a number") from None


def _is_number(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return token in ("NA", "na", "N/A")
    return True


def _int(path: Path, token: str, what: str) -> int:
    try:
        value = float(token)
    except ValueError:
        raise FormatError(path, f"{what}: {token[:40]!r} is not an integer") from None
    if not value.is_integer():
        raise FormatError(path, f"{what}: {token[:40]!r} is not an integer")
    return int(value)


def _defect_rows(path: Path, body: str, columns: list[str]) -> tuple[np.ndarray, list[tuple[str, ...]] | None]:
    """The values of one ``DefectList`` record as an (n, k) array (IMAGELIST kept apart)."""
    if "IMAGELIST" not in columns:
        k = len(columns)
        fast = _fast_rows(body, k)
        if fast is not None:
            return fast, None
    tokens = body.split()
    if "IMAGELIST" not in columns:
        if len(tokens) % k:
            raise FormatError(
                path,
                f"DefectList has {len(tokens)} values, not a whole number of {k}-column defect records "
                f"(DefectRecordSpec declares {k} columns)",
            )
        return _floats(path, tokens, "DefectList").reshape(-1, k), None
    if columns[-1] != "IMAGELIST":
        raise FormatError(path, "IMAGELIST must be the last DefectRecordSpec column")
    k = len(columns) - 1
    fixed: list[str] = []
    images: list[tuple[str, ...]] = []
    i, n = 0, len(tokens)
    while i < n:
        if i + k + 1 > n:
            raise FormatError(
                path,
                f"DefectList ends inside a defect record: {n - i} value(s) left over "
                f"(DefectRecordSpec declares {k + 1} columns)",
            )
        fixed.extend(tokens[i : i + k])
        count = _int(path, tokens[i + k], "IMAGELIST count")
        j = i + k + 1
        if count < 0 or j + 2 * count > n:
            raise FormatError(path, f"IMAGELIST of defect {tokens[i][:20]} claims {count} images but the list ends")
        images.append(tuple(tokens[j : j + 2 * count]))
        i = j + 2 * count
    return _floats(path, fixed, "DefectList").reshape(-1, k), images


def _fast_rows(body: str, k: int) -> np.ndarray | None:
    """One-defect-per-line lists through pandas' C parser (about 3× numpy on 22k defects).

    Returns None whenever the text is not exactly that shape (records wrapped over lines,
    a short row padded with NaN, a non-number) so the careful token path can judge it and
    word the error.
    """
    import pandas as pd

    try:
        frame = pd.read_csv(
            io.StringIO(body), sep=r"\s+", header=None, dtype=np.float64, na_values=["NA"], keep_default_na=False
        )
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        return None
    values = frame.to_numpy()
    if values.shape[1] != k or int(np.isnan(values).sum()) != body.count("NA"):
        return None
    return values


def _record_spec(path: Path, target: _Wafer, body: str) -> None:
    """DefectRecordSpec: the defect columns, fixed once a DefectList of the wafer used them."""
    words = _words(body)
    if not words:
        raise FormatError(path, "DefectRecordSpec is empty")
    n = _int(path, words[0], "DefectRecordSpec count")
    names = [w.upper() for w in words[1:]]
    if n != len(names) or n == 0:
        raise FormatError(path, f"DefectRecordSpec declares {n} columns but names {len(names)}")
    if target.blocks and names != target.columns:
        raise FormatError(path, "DefectRecordSpec changes the columns after a DefectList of the same wafer")
    target.columns = names


def _defect_list(path: Path, target: _Wafer, body: str, wafers: list[_Wafer]) -> None:
    """DefectList: rows under the wafer's columns (or, when it declares none, the lot's last ones)."""
    if target.columns is None:  # a lot may declare its DefectRecordSpec once, for every wafer
        target.columns = next((w.columns for w in reversed(wafers) if w.columns), None)
    if target.columns is None:
        raise FormatError(path, "DefectList before any DefectRecordSpec")
    values, images = _defect_rows(path, body, target.columns)
    target.blocks.append(values)
    if images is not None:
        target.images = (target.images or []) + images
    target.has_defect_list = True


def _test_plan(path: Path, target: _Wafer, body: str) -> None:
    """SampleTestPlan: the die indices on the wafer (count, then X Y pairs)."""
    words = _words(body)
    n = _int(path, words[0], "SampleTestPlan count") if words else 0
    pairs = words[1:]
    if len(pairs) != 2 * n:
        raise FormatError(path, f"SampleTestPlan declares {n} dies but lists {len(pairs) // 2}")
    target.test_plan.extend(
        (_int(path, pairs[2 * j], "SampleTestPlan"), _int(path, pairs[2 * j + 1], "SampleTestPlan"))
        for j in range(n)
    )


def _parse_12(path: Path, text: str) -> tuple[dict[str, list[str]], list[_Wafer]]:
    """KLARF 1.1/1.2 line syntax: lot records, then per wafer WaferID ... SummaryList.

    Records before the first WaferID describe the lot; records between a SummaryList and the
    next WaferID are held for that next wafer (``pending``).
    """
    lot: dict[str, list[str]] = {}
    wafers: list[_Wafer] = []
    pending = _Wafer()
    current: _Wafer | None = None
    ended = False
    for stmt in _statements(path, text):
        stmt = stmt.strip()
        if not stmt:
            continue
        if ended:
            raise FormatError(path, "records after EndOfFile")
        parts = stmt.split(None, 1)
        key, body = parts[0].lower(), (parts[1] if len(parts) > 1 else "")
        target = current if current is not None else pending
        if key == "endoffile":
            ended = True
        elif key == "waferid":
            current, pending = pending, _Wafer()
            current.fields["waferid"] = _words(body)
            wafers.append(current)
        elif key == "defectrecordspec":
            _record_spec(path, target, body)
        elif key == "defectlist":
            _defect_list(path, target, body, wafers)
        elif key == "sampletestplan":
            _test_plan(path, target, body)
        elif current is None and not wafers and key != "summarylist":
            lot[key] = _words(body)
        else:
            target.fields[key] = _words(body)
            if key == "summarylist":
                current = None  # the next records belong to the next wafer
    if not ended:
        raise FormatError(path, "no EndOfFile record (truncated file?)")
    if pending.has_defect_list:
        raise FormatError(path, "DefectList without a WaferID")
    return lot, wafers


# ----------------------------------------------------------------------------- 1.8 syntax

_TOKEN_18 = re.compile(r'"[^"]*"|[{},;]|[^\s{},;"]+')


class _Tokens:
    """A cursor over KLARF 1.8 tokens with the few checks the grammar needs."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.toks = _TOKEN_18.findall(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def next(self, what: str) -> str:
        if self.i >= len(self.toks):
            raise FormatError(self.path, f"file ends while reading {what} (truncated?)")
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, want: str, what: str) -> None:
        tok = self.next(what)
        if tok != want:
            raise FormatError(self.path, f"expected '{want}' in {what}, found {tok[:40]!r}")


def _unquote(tok: str) -> str:
    return tok[1:-1] if len(tok) >= 2 and tok[0] == '"' and tok[-1] == '"' else tok


def _parse_node(tk: _Tokens, depth: int) -> dict[str, Any]:
    """A ``{ ... }`` block: its Fields, Lists and nested Records."""
    if depth > _MAX_DEPTH:
        raise FormatError(tk.path, "records nested too deeply")
    node: dict[str, Any] = {"fields": {}, "lists": {}, "records": []}
    while True:
        tok = tk.next("a record")
        if tok == "}":
            return node
        if tok == "Record":
            rtype = tk.next("a Record type")
            name = ""
            if tk.peek() != "{":
                name = _unquote(tk.next("a Record name"))
            tk.expect("{", f"Record {rtype}")
            node["records"].append((rtype, name, _parse_node(tk, depth + 1)))
        elif tok == "Field":
            fname = tk.next("a Field name")
            tk.next(f"Field {fname} count")
            tk.expect("{", f"Field {fname}")
            values: list[str] = []
            while (v := tk.next(f"Field {fname}")) != "}":
                if v != ",":
                    values.append(_unquote(v))
            node["fields"][fname.lower()] = values
        elif tok == "List":
            lname = tk.next("a List name")
            node["lists"][lname.lower()] = _parse_list(tk, lname)
        else:
            raise FormatError(tk.path, f"unexpected {tok[:40]!r} where a Record, Field or List should start")


def _parse_list(tk: _Tokens, name: str) -> tuple[list[str], list[str], list[list[Any]]]:
    """``List NAME { Columns n { type NAME, ... } Data m { v v ... ; ... } }``."""
    tk.expect("{", f"List {name}")
    tk.expect("Columns", f"List {name}")
    ncols = _int(tk.path, tk.next(f"List {name} column count"), f"List {name} column count")
    tk.expect("{", f"List {name} Columns")
    types: list[str] = []
    names: list[str] = []
    while (tok := tk.next(f"List {name} Columns")) != "}":
        if tok == ",":
            continue
        types.append(tok)
        names.append(tk.next(f"List {name} Columns").upper())
    if len(names) != ncols:
        raise FormatError(tk.path, f"List {name} declares {ncols} columns but names {len(names)}")
    rows: list[list[Any]] = []
    if tk.peek() == "Data":
        tk.next("Data")
        nrows = _int(tk.path, tk.next(f"List {name} row count"), f"List {name} row count")
        tk.expect("{", f"List {name} Data")
        while tk.peek() != "}":
            row: list[Any] = []
            for ctype in types:
                if ctype.lower() == "imagelist":
                    row.append(_parse_images(tk))
                else:
                    row.append(_unquote(tk.next(f"a {name} row")))
            tk.expect(";", f"a {name} row (rows must have {len(types)} values)")
            rows.append(row)
        tk.next("Data end")
        if len(rows) != nrows:
            raise FormatError(tk.path, f"List {name} declares {nrows} rows but holds {len(rows)}")
    tk.expect("}", f"List {name}")
    return types, names, rows


def _parse_images(tk: _Tokens) -> tuple[str, ...]:
    """An ImageList cell: ``N`` (none) or ``Images n { "file" "type" k "name", ... }``."""
    tok = tk.next("an ImageList")
    if tok == "N":
        return ()
    if tok != "Images":
        raise FormatError(tk.path, f"expected an ImageList ('N' or 'Images'), found {tok[:40]!r}")
    tk.next("Images count")
    tk.expect("{", "Images")
    files: list[str] = []
    first = True
    while (v := tk.next("Images")) != "}":
        if v == ",":
            first = True
        elif first:
            files.append(_unquote(v))
            first = False
    return tuple(files)


def _parse_18(path: Path, text: str) -> tuple[dict[str, list[str]], list[_Wafer]]:
    """KLARF 1.8 ``Record``/``Field``/``List`` syntax → the same form as 1.2 (lengths still nm)."""
    tk = _Tokens(path, text)
    tk.expect("Record", "the FileRecord")
    tk.expect("FileRecord", "the FileRecord")
    version = _unquote(tk.next("the FileRecord version"))
    tk.expect("{", "the FileRecord")
    root = _parse_node(tk, 0)
    if tk.peek() != "EndOfFile":
        raise FormatError(path, "no EndOfFile after the FileRecord (truncated file?)")
    lot: dict[str, list[str]] = dict(root["fields"])
    lot["fileversion"] = version.split(".")
    wafers: list[_Wafer] = []
    for rtype, lot_name, lot_node in root["records"]:
        if rtype != "LotRecord":
            continue
        lot_fields = {**lot, **lot_node["fields"], "lotid": [lot_name]}
        lookup = lot_node["lists"].get("classlookuplist")
        if lookup:
            lot_fields["classlookup"] = _class_lookup_tokens(lookup)
        for wtype, wafer_name, wnode in lot_node["records"]:
            if wtype != "WaferRecord":
                continue
            w = _Wafer(fields={**lot_fields, **wnode["fields"], "waferid": [wafer_name]})
            if "defectlist" in wnode["lists"]:
                types, names, rows = wnode["lists"]["defectlist"]
                _defects_from_18(path, w, types, names, rows)
            for ttype, _, tnode in wnode["records"]:
                if ttype == "TestRecord" and "sampletestplanlist" in tnode["lists"]:
                    _, names, rows = tnode["lists"]["sampletestplanlist"]
                    if "XINDEX" not in names or "YINDEX" not in names:
                        raise FormatError(path, "SampleTestPlanList needs XINDEX and YINDEX columns")
                    xi, yi = names.index("XINDEX"), names.index("YINDEX")
                    w.test_plan.extend(
                        (_int(path, r[xi], "SampleTestPlan"), _int(path, r[yi], "SampleTestPlan")) for r in rows
                    )
            wafers.append(w)
    return {}, wafers


def _class_lookup_tokens(lookup: tuple[list[str], list[str], list[list[Any]]]) -> list[str]:
    """ClassLookupList rows flattened as in 1.2's ``ClassLookup n id "name" ...``."""
    _, names, rows = lookup
    if "CLASSNUMBER" not in names or "CLASSNAME" not in names:
        return []
    i, j = names.index("CLASSNUMBER"), names.index("CLASSNAME")
    out = [str(len(rows))]
    for r in rows:
        out += [str(r[i]), str(r[j])]
    return out


def _defects_from_18(path: Path, w: _Wafer, types: list[str], names: list[str], rows: list[list[Any]]) -> None:
    image_cols = [j for j, t in enumerate(types) if t.lower() == "imagelist"]
    num_cols = [j for j in range(len(names)) if j not in image_cols]
    w.columns = [names[j] for j in num_cols]
    flat = [r[j] for r in rows for j in num_cols]
    w.blocks.append(_floats(path, flat, "DefectList").reshape(len(rows), len(num_cols)))
    if image_cols:
        w.images = [tuple(f for j in image_cols for f in r[j]) for r in rows]
    w.has_defect_list = True


# ----------------------------------------------------------------------------- building maps


def _field_floats(path: Path, fields: dict[str, list[str]], key: str, n: int, divisor: float) -> np.ndarray | None:
    """The first ``n`` numbers of a geometry field (finite: they place dies), or None when absent."""
    values = fields.get(key)
    if not values:
        return None
    if len(values) < n:
        raise FormatError(path, f"{key} needs {n} numbers, has {len(values)}")
    numbers = _floats(path, values[:n], key)
    if not np.all(np.isfinite(numbers)):
        raise FormatError(path, f"{key} must be finite numbers, got {' '.join(v[:20] for v in values[:n])}")
    return numbers / divisor


def _notch(path: Path, fields: dict[str, list[str]]) -> str:
    values = fields.get("orientationmarklocation")
    if not values:
        return "down"
    word = values[0].upper()
    if word in _NOTCH_WORDS:
        return _NOTCH_WORDS[word]
    return notch_from_angle(path, values[0])


def _geometry_dies(
    path: Path, pitch: np.ndarray, origin: np.ndarray, center: np.ndarray, radius: float
) -> tuple[np.ndarray, ...]:
    """Indices of the dies lying fully inside a wafer circle of ``radius`` µm.

    The circle's die range is checked against the grid limits before any array is built.
    """
    px, py = float(pitch[0]), float(pitch[1])
    cx, cy = float(center[0]) + float(origin[0]), float(center[1]) + float(origin[1])
    bounds = ((cx - radius) / px, (cx + radius) / px, (cy - radius) / py, (cy + radius) / py)
    if not all(math.isfinite(b) and abs(b) <= _MAX_INDEX for b in bounds):
        raise FormatError(path, "SampleSize, DiePitch and SampleCenterLocation put the wafer beyond die index 1e6")
    lo_x, hi_x = math.floor(bounds[0]) - 1, math.ceil(bounds[1]) + 1
    lo_y, hi_y = math.floor(bounds[2]) - 1, math.ceil(bounds[3]) + 1
    check_span(path, lo_x, hi_x, lo_y, hi_y, "the dies of the wafer circle (SampleSize, DiePitch)")
    xs, ys = np.arange(lo_x, hi_x + 1), np.arange(lo_y, hi_y + 1)
    x0 = xs * px - origin[0] - center[0]
    y0 = ys * py - origin[1] - center[1]
    far_x = np.maximum(np.abs(x0), np.abs(x0 + px))  # per column and per row: only the test is 2-D
    far_y = np.maximum(np.abs(y0), np.abs(y0 + py))
    rows, cols = np.nonzero(far_y[:, None] ** 2 + far_x[None, :] ** 2 <= radius**2)
    return xs[cols], ys[rows]


@dataclass
class _Geometry:
    """Die pitch, die origin, sample centre (µm) and wafer diameter, where the file gives them."""

    pitch: np.ndarray | None
    origin: np.ndarray
    center: np.ndarray | None
    diameter_um: float | None


def _geometry(path: Path, f: dict[str, list[str]], *, nm: bool) -> _Geometry:
    scale = 1000.0 if nm else 1.0  # KLARF 1.8 lengths are nm
    pitch = _field_floats(path, f, "diepitch", 2, scale)
    if pitch is not None and not np.all(pitch > 0):
        raise FormatError(path, f"DiePitch must be positive, got {pitch.tolist()}")
    origin = _field_floats(path, f, "dieorigin", 2, scale)
    center = _field_floats(path, f, "samplecenterlocation", 2, scale)
    size = f.get("samplesize")
    diameter_um = None
    if size:
        if nm:
            diameter_um = float(_floats(path, size[:1], "SampleSize")[0]) / 1000.0
        elif len(size) >= 2:
            diameter_um = float(_floats(path, size[1:2], "SampleSize")[0]) * 1000.0
    return _Geometry(pitch, np.zeros(2) if origin is None else origin, center, diameter_um)


class _Columns:
    """The wafer's defect rows in µm, looked up by column name (NaN where the file lacks one)."""

    def __init__(self, path: Path, w: _Wafer, *, nm: bool) -> None:
        cols = w.columns or []
        values = np.concatenate(w.blocks) if w.blocks else np.zeros((0, len(cols)))
        if nm:
            for j, name in enumerate(cols):
                if name in _LENGTH_COLUMNS:
                    values[:, j] /= 1e3
                elif name == "DEFECTAREA":
                    values[:, j] /= 1e6
        self.values = values
        self.n = values.shape[0]
        check_defects(path, self.n)
        self.index = {name: j for j, name in enumerate(c for c in cols if c != "IMAGELIST")}

    def __contains__(self, name: str) -> bool:
        return name in self.index

    def __call__(self, name: str) -> np.ndarray:
        return self.values[:, self.index[name]] if name in self.index else np.full(self.n, np.nan)


def _die_positions(path: Path, wafer_id: str, c: _Columns, g: _Geometry) -> tuple[np.ndarray, ...]:
    """Each defect's die index and in-die position → (xindex, yindex, xrel, yrel) as floats.

    A defect without a die index has its position (X/Y, or XREL/YREL when the file has no
    index columns) as a wafer coordinate relative to the centre; it is shifted to die (0, 0)'s
    origin and split into index and in-die offset.
    """
    xi, yi, xrel, yrel = c("XINDEX"), c("YINDEX"), c("XREL"), c("YREL")
    missing = ~(np.isfinite(xi) & np.isfinite(yi))
    if missing.any():
        has_index_columns = "XINDEX" in c and "YINDEX" in c
        wafer_x = c("X") if "X" in c else (None if has_index_columns else xrel)
        wafer_y = c("Y") if "Y" in c else (None if has_index_columns else yrel)
        if g.pitch is None or wafer_x is None or wafer_y is None:
            raise FormatError(path, f"wafer '{wafer_id}': defects without XINDEX/YINDEX and no position + DiePitch")
        shift = np.zeros(2) if g.center is None else g.center
        pos_x, pos_y = wafer_x[missing] + shift[0], wafer_y[missing] + shift[1]
        xi, yi, xrel, yrel = xi.copy(), yi.copy(), xrel.copy(), yrel.copy()
        xi[missing] = np.floor((pos_x + g.origin[0]) / g.pitch[0])
        yi[missing] = np.floor((pos_y + g.origin[1]) / g.pitch[1])
        xrel[missing] = pos_x - xi[missing] * g.pitch[0]
        yrel[missing] = pos_y - yi[missing] * g.pitch[1]
        if not (np.all(np.isfinite(xi)) and np.all(np.isfinite(yi))):
            raise FormatError(path, f"wafer '{wafer_id}': a defect has neither a die index nor a position")
    if (
        np.any(xi != np.round(xi))
        or np.any(yi != np.round(yi))
        or np.any(np.abs(xi) > _MAX_INDEX)
        or np.any(np.abs(yi) > _MAX_INDEX)
    ):
        raise FormatError(path, f"wafer '{wafer_id}': XINDEX/YINDEX must be integers of sane size")
    return xi, yi, xrel, yrel


def _on_wafer_dies(path: Path, wafer_id: str, w: _Wafer, g: _Geometry, n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The dies on the wafer → (x indices, y indices, where they came from).

    SampleTestPlan when the file has one, else the wafer circle from its geometry, else the
    defects' bounding box (empty here: filled once the grid is built).
    """
    if w.test_plan:
        if any(abs(v) > _MAX_INDEX for pair in w.test_plan for v in pair):
            raise FormatError(path, f"wafer '{wafer_id}': SampleTestPlan die indices beyond ±{_MAX_INDEX}")
        plan = np.array(w.test_plan, dtype=np.int64)
        return plan[:, 0], plan[:, 1], "SampleTestPlan"
    if g.pitch is not None and g.center is not None and g.diameter_um and g.diameter_um > 0:
        on_x, on_y = _geometry_dies(path, g.pitch, g.origin, g.center, g.diameter_um / 2)
        return on_x, on_y, "wafer geometry"
    if n:
        empty = np.zeros(0, np.int64)
        return empty, empty, "defect extent"
    raise FormatError(path, f"wafer '{wafer_id}': no SampleTestPlan, no SampleSize/DiePitch and no defects")


def _class_names(path: Path, f: dict[str, list[str]]) -> dict[int, str]:
    """ClassLookup (count, then number name pairs) → {class number: name}."""
    lookup = f.get("classlookup") or []
    names: dict[int, str] = {}
    for j in range(1, len(lookup) - 1, 2):
        try:
            names[int(float(lookup[j]))] = lookup[j + 1]
        except (ValueError, OverflowError):  # OverflowError: "inf"
            raise FormatError(path, f"ClassLookup: {lookup[j][:40]!r} is not a class number") from None
    return names


def _defects(w: _Wafer, c: _Columns, g: _Geometry, positions: tuple[np.ndarray, ...]) -> DefectList:
    """The wafer's defects as columns; wafer coordinates need the pitch and the sample centre."""
    xi, yi, xrel, yrel = positions
    n = c.n
    if g.pitch is not None and g.center is not None:
        wx = xi * g.pitch[0] + xrel - g.center[0]
        wy = yi * g.pitch[1] + yrel - g.center[1]
    else:
        wx = wy = np.full(n, np.nan)
    ids = np.arange(1, n + 1) if "DEFECTID" not in c else np.nan_to_num(c("DEFECTID"), nan=-1)
    extra: dict[str, np.ndarray] = {name: c.values[:, j] for name, j in c.index.items() if name not in _CORE_COLUMNS}
    if w.images is not None:
        imgs = np.empty(n, dtype=object)
        imgs[:] = w.images
        extra["IMAGELIST"] = imgs
    return DefectList(
        defect_id=ids.astype(np.int64),
        x=wx,
        y=wy,
        xrel=xrel,
        yrel=yrel,
        xindex=xi.astype(np.int64),
        yindex=yi.astype(np.int64),
        size=c("DSIZE"),
        class_number=np.nan_to_num(c("CLASSNUMBER"), nan=-1).astype(np.int64),
        extra=extra,
    )


def _build(path: Path, w: _Wafer, *, nm: bool) -> WaferMap:
    """One :class:`WaferMap` from a parsed wafer (either syntax)."""
    f = w.fields
    wafer_id = (f.get("waferid") or [""])[0]
    if not w.has_defect_list:
        raise FormatError(path, f"wafer '{wafer_id}' has no DefectList (truncated or incomplete file?)")
    g = _geometry(path, f, nm=nm)
    c = _Columns(path, w, nm=nm)
    positions = _die_positions(path, wafer_id, c, g)
    defects = _defects(w, c, g, positions)
    xi_i, yi_i = defects.xindex, defects.yindex
    on_x, on_y, source = _on_wafer_dies(path, wafer_id, w, g, c.n)
    grid, x_index, y_index = grid_from_dies(path, on_x, on_y, xi_i, yi_i, y_up=True)
    if source == "defect extent":
        grid[grid == DieState.OFF] = DieState.GOOD
    counts = np.zeros(grid.shape, np.int32)
    if c.n:
        rows, cc = index_to_cell(yi_i, xi_i, int(x_index[0]), int(y_index[-1]), int(y_index[0]), y_up=True)
        np.add.at(counts, (rows, cc), 1)
    slot = f.get("slot") or f.get("slotnumber")
    stamp = parse_timestamp(f.get("resulttimestamp") or []) or parse_timestamp(f.get("filetimestamp") or [])
    extras: dict[str, Any] = {
        "file_version": ".".join((f.get("fileversion") or [])[:2]),
        "die_grid": source,
        "slot": slot[0] if slot else None,
        "device_id": (f.get("deviceid") or [""])[0],
        "step_id": (f.get("stepid") or [""])[0],
        "class_names": _class_names(path, f),
        "die_origin_um": g.origin.tolist(),
        "sample_center_um": None if g.center is None else g.center.tolist(),
        "wafer_diameter_mm": None if g.diameter_um is None else g.diameter_um / 1000.0,
        "orientation_mark_type": (f.get("sampleorientationmarktype") or [""])[0],
    }
    return WaferMap(
        grid=grid,
        lot_id=(f.get("lotid") or [""])[0],
        wafer_id=wafer_id,
        source=str(path),
        format="klarf",
        die_pitch=None if g.pitch is None else (float(g.pitch[0]), float(g.pitch[1])),
        notch=_notch(path, f),
        x_index=x_index,
        y_index=y_index,
        counts=counts,
        defects=defects,
        timestamp=stamp,
        extras=extras,
    )


def read_klarf(path: str | Path) -> list[WaferMap]:
    """All wafers of a KLARF 1.1/1.2/1.8 file, one :class:`WaferMap` each."""
    path = Path(path)
    raw = path.read_bytes()
    if not raw.strip():
        raise FormatError(path, "empty file")
    if b"\x00" in raw[:65536]:
        raise FormatError(path, "binary data, not a KLARF text file")
    text = raw.decode("utf-8", errors="replace")
    head = text.lstrip()[:200]
    if head.startswith("Record"):
        lot, wafers = _parse_18(path, text)
        nm = True
    elif head.startswith("FileVersion"):
        lot, wafers = _parse_12(path, text)
        nm = False
    else:
        raise FormatError(path, "not a KLARF file: it starts with neither 'FileVersion' nor 'Record FileRecord'")
    if not wafers:
        raise FormatError(path, "no wafers (no WaferID / WaferRecord)")
    return [_build(path, _merge(lot, w), nm=nm) for w in wafers]


def _merge(lot: dict[str, list[str]], w: _Wafer) -> _Wafer:
    """Lot-level records apply to every wafer unless the wafer repeats them."""
    w.fields = {**lot, **w.fields}
    return w


# ----------------------------------------------------------------------------- writer


def _q(text: str) -> str:
    return '"' + str(text).replace('"', "'").replace(";", ",") + '"'


def _num(v: float) -> str:
    return "NA" if not np.isfinite(v) else f"{v:.10g}"


def _stamp(ts: datetime | None) -> str:
    return (ts or datetime(2000, 1, 1)).strftime("%m-%d-%Y %H:%M:%S")


def _wafer_defects(wmap: WaferMap, xs: np.ndarray, ys: np.ndarray, pitch: tuple[float, float]) -> list[str]:
    """Defect lines: the map's own defects, plus one at the centre of every FAIL die without one.

    Maps from formats without defect lists (G85, STDF, WM-811K) thereby keep their failing
    dies when written as KLARF.
    """
    lines: list[str] = []
    d = wmap.defects
    covered: set[tuple[int, int]] = set()
    next_id = 1
    if d is not None and len(d):
        for k in range(len(d)):
            xi, yi = int(d.xindex[k]), int(d.yindex[k])
            covered.add((xi, yi))
            did = int(d.defect_id[k]) if d.defect_id[k] >= 0 else k + 1
            next_id = max(next_id, did + 1)
            xrel = d.xrel[k] if np.isfinite(d.xrel[k]) else pitch[0] / 2
            yrel = d.yrel[k] if np.isfinite(d.yrel[k]) else pitch[1] / 2
            lines.append(f" {did} {_num(xrel)} {_num(yrel)} {xi} {yi} {_num(d.size[k])} {int(d.class_number[k])} 1")
    rows, cols = np.nonzero(wmap.grid == DieState.FAIL)
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        xi, yi = int(xs[c]), int(ys[r])
        if (xi, yi) not in covered:
            lines.append(f" {next_id} {_num(pitch[0] / 2)} {_num(pitch[1] / 2)} {xi} {yi} NA 0 1")
            next_id += 1
    return lines


def _file_pitch(wmap: WaferMap) -> tuple[float, float]:
    return wmap.die_pitch if wmap.die_pitch else (1000.0, 1000.0)


def write_klarf(maps: Sequence[WaferMap], path: str | Path) -> Path:
    """Write maps as one multi-wafer KLARF 1.2 file (lengths in µm).

    Every on-wafer die goes into ``SampleTestPlan`` and every failing die gets at least
    one defect, so reading the file back gives the same grid. The lot id, device and
    timestamp of the first map head the file; pitch, notch and wafer size are written per
    wafer. Maps without a die pitch get 1000 µm.
    """
    if not maps:
        raise FormatError(path, "nothing to write: no wafer maps")
    first = maps[0]
    out = [
        "FileVersion 1 2;",
        f"FileTimestamp {_stamp(first.timestamp)};",
        'InspectionStationID "fabsight" "" "";',
        "SampleType WAFER;",
        f"ResultTimestamp {_stamp(first.timestamp)};",
        f"LotID {_q(first.lot_id)};",
        f"DeviceID {_q(str(first.extras.get('device_id', '')))};",
        f"StepID {_q(str(first.extras.get('step_id', '')))};",
        "SampleOrientationMarkType NOTCH;",
    ]
    for slot, wmap in enumerate(maps, start=1):
        pitch = _file_pitch(wmap)
        xs, ys = file_indices(wmap, y_up=True)
        on_r, on_c = np.nonzero(wmap.grid != DieState.OFF)
        center = wmap.extras.get("sample_center_um")
        if center is None and xs.size:
            center = [(xs.min() + xs.max() + 1) / 2 * pitch[0], (ys.min() + ys.max() + 1) / 2 * pitch[1]]
        center = center or [0.0, 0.0]
        diameter = wmap.extras.get("wafer_diameter_mm") or math.hypot(
            xs.size * pitch[0] / 1000, ys.size * pitch[1] / 1000
        )
        class_names = wmap.extras.get("class_names") or {}
        out += [
            f"SampleSize 1 {_num(float(diameter))};",
            f"OrientationMarkLocation {wmap.notch.upper() if wmap.notch in ANGLE_BY_NOTCH else 'DOWN'};",
            f"DiePitch {_num(pitch[0])} {_num(pitch[1])};",
            "DieOrigin 0 0;",
            f"WaferID {_q(wmap.wafer_id or str(slot))};",
            f"Slot {wmap.extras.get('slot') or slot};",
            f"SampleCenterLocation {_num(float(center[0]))} {_num(float(center[1]))};",
        ]
        if class_names:
            out.append(f"ClassLookup {len(class_names)}")
            out += [f" {int(k)} {_q(v)}" for k, v in class_names.items()]
            out[-1] += ";"
        out += ["InspectionTest 1;", f"SampleTestPlan {on_r.size}"]
        out += [f" {int(xs[c])} {int(ys[r])}" for r, c in zip(on_r.tolist(), on_c.tolist(), strict=True)]
        out[-1] += ";"
        area = pitch[0] * pitch[1] * on_r.size
        out += [
            f"AreaPerTest {_num(area)};",
            "DefectRecordSpec 8 DEFECTID XREL YREL XINDEX YINDEX DSIZE CLASSNUMBER TEST;",
            "DefectList",
        ]
        defects = _wafer_defects(wmap, xs, ys, pitch)
        out += defects
        out[-1] += ";"
        n_def_dies = int(np.count_nonzero(wmap.grid == DieState.FAIL))
        density = len(defects) / (area / 1e8) if area else 0.0
        out += [
            "SummarySpec 5 TESTNO NDEFECT DEFDENSITY NDIE NDEFDIE;",
            f"SummaryList 1 {len(defects)} {_num(density)} {on_r.size} {n_def_dies};",
        ]
    out.append("EndOfFile;")
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as fh:
        fh.write("\n".join(out) + "\n")
    return Path(path)
