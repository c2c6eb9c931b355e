"""STDF V4 wafer-sort results → bin maps (a small record reader and writer of our own).

Only the records a bin map needs are decoded: FAR (byte order), MIR/MRR (lot, times),
WIR/WRR (wafer id), WCR (flat/notch and axis directions), PIR/PRR (one part = one die:
X/Y, hard/soft bin, pass/fail) and HBR/SBR (bin names). Every other record is skipped
by its length, so test-result-heavy files stay fast.

Rules worth knowing:

* Pass/fail comes from PRR ``PART_FLG`` bit 3 (1 = failed). When bit 4 says "no pass/fail
  indication", the hard bin's HBR ``HBIN_PF`` decides, and without one hard bin 1 passes.
* A die tested more than once (same X/Y within a wafer): the **last** result wins, as a
  retest overrides the first touchdown; ``extras['retested_dies']`` counts them.
* Without a WCR the Y coordinate is taken to grow downwards (row 0 = smallest Y), the
  most common prober convention; WCR ``POS_X``/``POS_Y`` override it.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.errors import FormatError
from fabsight.io._common import grid_from_dies
from fabsight.types import BinDefinition, DieState, WaferMap
from fabsight.utils.atomic import atomic_open

_FAR, _MIR, _MRR = (0, 10), (1, 10), (1, 20)
_HBR, _SBR = (1, 40), (1, 50)
_WIR, _WRR, _WCR = (2, 10), (2, 20), (2, 30)
_PIR, _PRR = (5, 10), (5, 20)
_FLAT = {"U": "up", "D": "down", "L": "left", "R": "right"}
_MISSING_XY = -32768


class _Fields:
    """Sequential decoder of one record's fields; absent trailing fields read as None."""

    def __init__(self, body: bytes, order: str) -> None:
        self.b = body
        self.o = order
        self.i = 0

    def _take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.i + size > len(self.b):
            self.i = len(self.b)
            return None
        (value,) = struct.unpack_from(self.o + fmt, self.b, self.i)
        self.i += size
        return value

    def u1(self) -> int | None:
        return self._take("B")

    def u2(self) -> int | None:
        return self._take("H")

    def u4(self) -> int | None:
        return self._take("I")

    def i2(self) -> int | None:
        return self._take("h")

    def r4(self) -> float | None:
        return self._take("f")

    def c1(self) -> str | None:
        v = self._take("c")
        return None if v is None else v.decode("latin-1")

    def cn(self) -> str | None:
        n = self.u1()
        if n is None:
            return None
        s = self.b[self.i : self.i + n].decode("latin-1")
        self.i += n
        return s


@dataclass
class _WaferRun:
    """The part results and wafer records between one WIR and its WRR."""

    wafer_id: str = ""
    start: int | None = None
    parts: dict[tuple[int, int], tuple[int, int, bool | None]] = field(default_factory=dict)
    n_parts: int = 0
    retested: int = 0
    no_xy: int = 0


def _byte_order(path: Path, data: bytes) -> str:
    if len(data) < 6:
        raise FormatError(path, "too short to be STDF (no FAR record)")
    if data[2:4] != b"\x00\x0a":
        raise FormatError(path, "not STDF: the file does not start with a FAR record")
    cpu, version = data[4], data[5]
    order = "<" if cpu == 2 or cpu == 0 else ">"
    if struct.unpack_from(order + "H", data, 0)[0] != 2:
        raise FormatError(path, f"not STDF: FAR record length does not match CPU_TYPE {cpu}")
    if version != 4:
        raise FormatError(path, f"STDF version {version} is not supported (only V4)")
    return order


_WANTED = frozenset({_MIR, _MRR, _HBR, _SBR, _WIR, _WRR, _WCR, _PRR})


def _records(path: Path, data: bytes, order: str) -> Iterator[tuple[int, int, bytes]]:
    """``(rec_typ, rec_sub, body)`` of the records a bin map needs; checks every length.

    Test results (PTR/FTR/MPR), the bulk of a file, are stepped over without copying.
    """
    header = struct.Struct(order + "HBB")
    pos, n = 0, len(data)
    while pos < n:
        if pos + 4 > n:
            raise FormatError(path, f"truncated record header at byte {pos}")
        length, typ, sub = header.unpack_from(data, pos)
        end = pos + 4 + length
        if end > n:
            raise FormatError(path, f"truncated record ({typ},{sub}) at byte {pos}: needs {length} bytes")
        if (typ, sub) in _WANTED:
            yield typ, sub, data[pos + 4 : end]
        pos = end


@dataclass
class _StdfState:
    """What the records of one STDF file say, gathered in file order (one handler per record type)."""

    path: Path
    order: str
    lot_id: str = ""
    part_type: str = ""
    mir_start: int | None = None
    finish: int | None = None
    hbins: dict[int, BinDefinition] = field(default_factory=dict)
    sbins: dict[int, BinDefinition] = field(default_factory=dict)
    hard_pf: dict[int, str] = field(default_factory=dict)  # HBIN_PF as written: 'P', 'F' or ' ' (unknown)
    summarised: dict[tuple[int, int], set[int]] = field(default_factory=lambda: {_HBR: set(), _SBR: set()})
    runs: list[_WaferRun] = field(default_factory=list)
    current: _WaferRun | None = None
    wcr: dict[str, Any] = field(default_factory=dict)

    def prr(self, body: bytes) -> None:
        """A part result: its die position, bins and pass/fail (the last touchdown of a die wins)."""
        f = _Fields(body, self.order)
        f.u1(), f.u1()
        flag = f.u1()
        f.u2()
        hard, soft, x, y = f.u2(), f.u2(), f.i2(), f.i2()
        if flag is None or hard is None:
            raise FormatError(self.path, "PRR record too short (no PART_FLG/HARD_BIN)")
        if self.current is None:
            self.current = _WaferRun()
            self.runs.append(self.current)
        run = self.current
        run.n_parts += 1
        if x is None or y is None or x == _MISSING_XY or y == _MISSING_XY:
            run.no_xy += 1
            return
        passed = None if flag & 0x10 else not (flag & 0x08)
        if (x, y) in run.parts:
            run.retested += 1
            del run.parts[(x, y)]  # re-insert so the dict order follows the last touchdown
        run.parts[(x, y)] = (hard, 65535 if soft is None else soft, passed)

    def wir(self, body: bytes) -> None:
        f = _Fields(body, self.order)
        f.u1(), f.u1()
        start = f.u4()
        self.current = _WaferRun(wafer_id=f.cn() or "", start=start)
        self.runs.append(self.current)

    def wrr(self, body: bytes) -> None:
        f = _Fields(body, self.order)
        f.u1(), f.u1(), f.u4()
        for _ in range(5):
            f.u4()
        wid = f.cn()
        if self.current is not None:
            self.current.wafer_id = self.current.wafer_id or wid or ""
        self.current = None

    def mir(self, body: bytes) -> None:
        f = _Fields(body, self.order)
        f.u4()
        self.mir_start = f.u4()
        f.u1(), f.c1(), f.c1(), f.c1(), f.u2(), f.c1()
        self.lot_id, self.part_type = f.cn() or "", f.cn() or ""

    def mrr(self, body: bytes) -> None:
        self.finish = _Fields(body, self.order).u4()

    def bin_record(self, key: tuple[int, int], body: bytes) -> None:
        """HBR/SBR: per-site records are added up until an all-site summary (head 255) replaces them."""
        f = _Fields(body, self.order)
        head = f.u1()
        f.u1()
        num, cnt, pf, name = f.u2(), f.u4(), f.c1(), f.cn()
        if num is None:
            return
        table = self.hbins if key == _HBR else self.sbins
        old = table.get(num)
        if old is not None and old.count is not None and head != 255 and num not in self.summarised[key]:
            old.count += cnt or 0
        elif old is None or head == 255:
            passed = pf == "P" if pf in ("P", "F") else num == 1
            table[num] = BinDefinition(code=num, passed=passed, name=name or "", count=cnt)
            if key == _HBR:
                self.hard_pf[num] = pf or " "
            if head == 255:
                self.summarised[key].add(num)

    def wcr_record(self, body: bytes) -> None:
        f = _Fields(body, self.order)
        wcr = {"wafer_size": f.r4(), "die_height": f.r4(), "die_width": f.r4(), "units": f.u1()}
        self.wcr = wcr | {"flat": f.c1(), "center_x": f.i2(), "center_y": f.i2(), "pos_x": f.c1(), "pos_y": f.c1()}

    def take(self, key: tuple[int, int], body: bytes) -> None:
        """Hand one record to its handler."""
        if key in (_HBR, _SBR):
            self.bin_record(key, body)
            return
        handler = {_PRR: self.prr, _WIR: self.wir, _WRR: self.wrr, _MIR: self.mir, _MRR: self.mrr,
                   _WCR: self.wcr_record}.get(key)
        if handler is not None:
            handler(body)


def read_stdf(path: str | Path) -> list[WaferMap]:
    """Bin maps of every wafer in an STDF V4 file (one map per WIR/WRR pair)."""
    path = Path(path)
    data = path.read_bytes()
    if not data:
        raise FormatError(path, "empty file")
    order = _byte_order(path, data)
    st = _StdfState(path, order)
    for typ, sub, body in _records(path, data, order):
        st.take((typ, sub), body)
    runs = [r for r in st.runs if r.parts]
    if not runs:
        raise FormatError(path, "no part results (PRR) with X/Y coordinates: not wafer-sort data")
    return [_to_map(path, r, st.lot_id, st.part_type, st.mir_start, st.finish, st.hbins, st.sbins, st.hard_pf,
                    st.wcr) for r in runs]


def _passed(hard: int, passed: bool | None, hard_pf: dict[int, str]) -> bool:
    """PART_FLG's verdict, else the hard bin's HBR verdict, else "hard bin 1 passes"."""
    if passed is not None:
        return passed
    pf = hard_pf.get(hard)
    return pf == "P" if pf in ("P", "F") else hard == 1


def _to_map(
    path: Path,
    run: _WaferRun,
    lot_id: str,
    part_type: str,
    mir_start: int | None,
    finish: int | None,
    hbins: dict[int, BinDefinition],
    sbins: dict[int, BinDefinition],
    hard_pf: dict[int, str],
    wcr: dict[str, Any],
) -> WaferMap:
    xy = np.array(list(run.parts.keys()), dtype=np.int64)
    hard = np.array([p[0] for p in run.parts.values()], dtype=np.int32)
    soft = np.array([p[1] for p in run.parts.values()], dtype=np.int32)
    ok = np.array([_passed(p[0], p[2], hard_pf) for p in run.parts.values()], dtype=bool)
    x, y = xy[:, 0], xy[:, 1]
    if wcr.get("pos_x") == "L":
        x = -x
    y_up = wcr.get("pos_y") == "U"
    grid, x_index, y_index = grid_from_dies(path, x[ok], y[ok], x[~ok], y[~ok], y_up=y_up)
    rows = (y_index[0] - y) if y_up else (y - y_index[0])
    cols = x - x_index[0]
    bins = np.full(grid.shape, -1, np.int32)
    soft_bins = np.full(grid.shape, -1, np.int32)
    bins[rows, cols] = hard
    soft_bins[rows, cols] = soft
    if wcr.get("pos_x") == "L":
        x_index = -x_index  # back to the file's own X numbering
    pitch = None
    if wcr.get("die_width") and wcr.get("die_height"):
        to_um = {1: 25400.0, 2: 10000.0, 3: 1000.0, 4: 25.4}.get(wcr.get("units") or 0)  # in, cm, mm, mil
        if to_um:
            pitch = (float(wcr["die_width"]) * to_um, float(wcr["die_height"]) * to_um)
    stamp = run.start or mir_start
    return WaferMap(
        grid=grid,
        lot_id=lot_id,
        wafer_id=run.wafer_id,
        source=str(path),
        format="stdf",
        die_pitch=pitch,
        notch=_FLAT.get((wcr.get("flat") or " ").upper(), "down"),
        x_index=x_index,
        y_index=y_index,
        bins=bins,
        bin_definitions=dict(hbins),
        timestamp=None if not stamp else datetime.fromtimestamp(stamp, UTC),
        extras={
            "soft_bins": soft_bins,
            "soft_bin_definitions": dict(sbins),
            "part_type": part_type,
            "parts_tested": run.n_parts,
            "retested_dies": run.retested,
            "parts_without_xy": run.no_xy,
            "finish_time": None if not finish else datetime.fromtimestamp(finish, UTC),
        },
    )


# ----------------------------------------------------------------------------- writer


def _rec(order: str, typ: int, sub: int, body: bytes) -> bytes:
    return struct.pack(order + "HBB", len(body), typ, sub) + body


def _cn(text: str) -> bytes:
    raw = text.encode("latin-1", errors="replace")[:255]
    return bytes([len(raw)]) + raw


def _epoch(ts: datetime | None) -> int:
    if ts is None:
        return 0
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return max(0, min(int(ts.timestamp()), 2**32 - 1))


def write_stdf(maps: Sequence[WaferMap], path: str | Path, *, byte_order: str = "<") -> Path:
    """Write a minimal valid STDF V4 file: FAR, MIR, per wafer WIR + PIR/PRR per die + WRR,
    then HBR/SBR and MRR.

    Hard bins come from ``bins`` when a map has them (soft bins from ``extras['soft_bins']``),
    otherwise 1 for good and 2 for failing dies. ``byte_order`` ``"<"`` writes CPU_TYPE 2
    (little-endian), ``">"`` CPU_TYPE 1 (big-endian).
    """
    if not maps:
        raise FormatError(path, "nothing to write: no wafer maps")
    if byte_order not in ("<", ">"):
        raise ValueError("byte_order must be '<' or '>'")
    o = byte_order
    first = maps[0]
    t0 = _epoch(first.timestamp)
    out = [_rec(o, 0, 10, bytes([2 if o == "<" else 1, 4]))]
    mir = struct.pack(o + "IIB", t0, t0, 1) + b"P  " + struct.pack(o + "H", 65535) + b" "
    mir += _cn(first.lot_id) + _cn(str(first.extras.get("part_type", ""))) + _cn("fabsight") + _cn("") + _cn("")
    out.append(_rec(o, 1, 10, mir))
    hcount: dict[int, int] = {}
    scount: dict[int, int] = {}
    hdefs: dict[int, BinDefinition] = {}
    sdefs: dict[int, BinDefinition] = {}
    for wmap in maps:
        hdefs.update(wmap.bin_definitions)
        sdefs.update(wmap.extras.get("soft_bin_definitions") or {})
        rows_n, cols_n = wmap.shape
        xs = np.arange(cols_n) if wmap.x_index is None else np.asarray(wmap.x_index, np.int64)
        ys = np.arange(rows_n) if wmap.y_index is None else np.asarray(wmap.y_index, np.int64)
        if np.abs(xs).max(initial=0) > 32767 or np.abs(ys).max(initial=0) > 32767:
            raise FormatError(path, f"wafer '{wmap.wafer_id}': die indices do not fit STDF's 16-bit X/Y")
        t = _epoch(wmap.timestamp)
        out.append(_rec(o, 2, 10, struct.pack(o + "BBI", 1, 255, t) + _cn(wmap.wafer_id)))
        # WCR: axis directions so the file's own indices keep the picture the right way up
        pos_x = b"L" if xs.size > 1 and xs[1] < xs[0] else b"R"
        pos_y = b"U" if ys.size > 1 and ys[1] < ys[0] else b"D"
        pitch_mm = (wmap.die_pitch[1] / 1000, wmap.die_pitch[0] / 1000) if wmap.die_pitch else (0.0, 0.0)
        flat = {"up": b"U", "down": b"D", "left": b"L", "right": b"R"}.get(wmap.notch, b" ")
        wcr = struct.pack(o + "fffB", 0.0, *pitch_mm, 3) + flat + struct.pack(o + "hh", -32768, -32768) + pos_x + pos_y
        out.append(_rec(o, 2, 30, wcr))
        rows, cols = np.nonzero(wmap.grid != DieState.OFF)
        soft_grid = wmap.extras.get("soft_bins")
        good = 0
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            failed = wmap.grid[r, c] == DieState.FAIL
            hard = int(wmap.bins[r, c]) if wmap.bins is not None and wmap.bins[r, c] >= 0 else (2 if failed else 1)
            soft = int(soft_grid[r, c]) if isinstance(soft_grid, np.ndarray) and soft_grid[r, c] >= 0 else hard
            hcount[hard] = hcount.get(hard, 0) + 1
            scount[soft] = scount.get(soft, 0) + 1
            good += not failed
            out.append(_rec(o, 5, 10, b"\x01\x01"))
            prr = struct.pack(o + "BBBHHHhhI", 1, 1, 0x08 if failed else 0, 0, hard, soft, xs[c], ys[r], 0)
            out.append(_rec(o, 5, 20, prr + _cn(f"{xs[c]},{ys[r]}") + _cn("") + b"\x00"))
        wrr = struct.pack(o + "BBIIIIII", 1, 255, t, rows.size, 0, 0, good, 0) + _cn(wmap.wafer_id)
        out.append(_rec(o, 2, 20, wrr))
    for typ_sub, counts, defs in (((1, 40), hcount, hdefs), ((1, 50), scount, sdefs)):
        for num in sorted(counts):
            d = defs.get(num) or BinDefinition(num, passed=num == 1, name="")
            body = struct.pack(o + "BBHI", 255, 255, num, counts[num]) + (b"P" if d.passed else b"F") + _cn(d.name)
            out.append(_rec(o, *typ_sub, body))
    out.append(_rec(o, 1, 20, struct.pack(o + "I", t0) + b" " + _cn("") + _cn("") + _cn("")))
    with atomic_open(path, "wb") as fh:
        fh.write(b"".join(out))
    return Path(path)
