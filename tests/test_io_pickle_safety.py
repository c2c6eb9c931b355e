"""Crafted LSWMD pickles: nothing in a pickle runs, allocates without bound or crashes the reader.

Each hostile pickle would create a marker file (``touch``) or crash/exhaust a plain
``pickle.load``; the reader must refuse it with one line naming the file, and the marker
must not exist afterwards. The pickles are written opcode by opcode so they say exactly what
an attacker's file would say.
"""

from __future__ import annotations

import copyreg
import io
import json
import os
import pickle
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pandas.core.internals.managers import BlockManager

from fabsight.errors import FormatError
from fabsight.io import PICKLE_REFUSED, iter_maps, read_maps, write_lswmd
from fabsight.io.safe_pickle import ALLOWED, RENAMED, PickleLimits
from fabsight.io.wm811k import read_lswmd
from fabsight.types import WaferMap

PROTO4, STOP, POP, MARK, TUPLE, REDUCE = b"\x80\x04", b".", b"0", b"(", b"t", b"R"


def _s(text: str) -> bytes:
    """SHORT_BINUNICODE / BINUNICODE: push a str."""
    raw = text.encode()
    return (b"\x8c" + bytes([len(raw)]) if len(raw) < 256 else b"X" + len(raw).to_bytes(4, "little")) + raw


def _int(n: int) -> bytes:
    """LONG1: push any int."""
    raw = n.to_bytes((n.bit_length() + 8) // 8 or 1, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _lit(value: object) -> bytes:
    """Opcodes that push a plain value: None, a bool, int, str or bytes, or a tuple of them."""
    if value is None or isinstance(value, bool):
        return {None: b"N", True: b"\x88", False: b"\x89"}[value]
    if isinstance(value, int):
        return _int(value)
    if isinstance(value, str):
        return _s(value)
    if isinstance(value, bytes):
        return b"B" + len(value).to_bytes(4, "little") + value  # BINBYTES
    assert isinstance(value, tuple)
    return MARK + b"".join(_lit(v) for v in value) + TUPLE


def _global4(module: str, name: str) -> bytes:
    return _s(module) + _s(name) + b"\x93"  # STACK_GLOBAL


def _global0(module: str, name: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode()  # GLOBAL


def _call(func: bytes, *args: bytes) -> bytes:
    return func + MARK + b"".join(args) + TUPLE + REDUCE


def _touch(marker: Path) -> str:
    return f"touch {shlex.quote(str(marker))}"


def _frame(n: int = 3) -> pd.DataFrame:
    """A small DataFrame in the public LSWMD layout."""
    maps = [np.full((3 + i, 4), 1 + i % 2, np.uint8) for i in range(n)]
    return pd.DataFrame(
        {
            "waferMap": maps,
            "dieSize": [float(m.size) for m in maps],
            "lotName": [f"lot{i}" for i in range(n)],
            "waferIndex": [float(i + 1) for i in range(n)],
            "trianTestLabel": [np.array([["Training"]])] * n,
            "failureType": [np.array([["Center"]]) if i % 2 else np.zeros((0, 0)) for i in range(n)],
        }
    )


def _refused(path: Path, match: str = "") -> str:
    """The one-line FormatError that reading ``path`` gives (it must name the file)."""
    with pytest.raises(FormatError) as info:
        read_maps(path)
    text = str(info.value)
    assert text.startswith(f"{path}: ") and "\n" not in text
    assert match in text
    return text


def _write(tmp_path: Path, data: bytes, name: str = "evil.pkl") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- names: only the exact pairs, never a dotted name, whatever the opcode ------------------

HOSTILE_NAMES = [
    ("numpy._core._methods", "os.system"),  # a dotted name walks from an allowed module to os
    ("pandas.io.common", "os.system"),
    ("numpy", "_core._methods.os.system"),
    ("os", "system"),
    ("posix", "system"),
    ("subprocess", "getoutput"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "getattr"),
    ("builtins", "__import__"),
    ("copyreg", "_reconstructor"),
    ("numpy", "load"),
    ("numpy", "frompyfunc"),
    ("numpy.lib._npyio_impl", "load"),
    ("pandas", "read_pickle"),
    ("pandas.io.pickle", "read_pickle"),
    ("pandas", "eval"),
    ("pyarrow", "input_stream"),
]


@pytest.mark.parametrize("opcode", ["STACK_GLOBAL", "GLOBAL"])
@pytest.mark.parametrize(("module", "name"), HOSTILE_NAMES)
def test_names_outside_the_list_are_refused(tmp_path: Path, opcode: str, module: str, name: str) -> None:
    marker = tmp_path / "owned"
    func = _global4(module, name) if opcode == "STACK_GLOBAL" else _global0(module, name)
    path = _write(tmp_path, PROTO4 + _call(func, _s(_touch(marker))) + STOP)
    text = _refused(path, f"refusing to load this pickle: {module}.{name}")
    assert ("dotted name" in text) == ("." in name)
    assert not marker.exists()


def test_the_dotted_walk_runs_code_in_a_plain_unpickler(tmp_path: Path) -> None:
    """Why dotted names are refused: protocol 4 resolves them attribute by attribute."""
    marker = tmp_path / "owned"
    data = PROTO4 + _call(_global4("numpy._core._methods", "os.system"), _s(_touch(marker))) + STOP
    pickle.loads(data)
    assert marker.exists()
    marker.unlink()
    _refused(_write(tmp_path, data), "dotted name")
    assert not marker.exists()


def test_the_list_is_exact_pairs_without_dots() -> None:
    assert len(ALLOWED) == 19
    assert all("." not in name for _, name in [*ALLOWED, *RENAMED])
    assert set(RENAMED.values()) <= set(ALLOWED)


# --- opcodes an LSWMD pickle never uses ------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "opcode"),
    [
        (b"\x80\x02(S'{cmd}'\nios\nsystem\n.", "INST"),
        (b"\x80\x02(ipandas\nDataFrame\n.", "INST"),
        (b"\x80\x02(cpandas\nDataFrame\no.", "OBJ"),
        (b"\x80\x02\x82\x01.", "EXT1"),
        (b"\x80\x02Pfoo\n.", "PERSID"),
        (b"\x80\x02N\x51.", "BINPERSID"),
        (b"\x80\x04\x8f(N\x90.", "EMPTY_SET"),
        (b"\x80\x05\x97.", "NEXT_BUFFER"),
        (b"\x80\x04" + _global4("pandas", "DataFrame") + b")}\x92.", "NEWOBJ_EX"),
    ],
)
def test_opcodes_outside_the_layout_are_refused(tmp_path: Path, data: bytes, opcode: str) -> None:
    marker = tmp_path / "owned"
    path = _write(tmp_path, data.replace(b"{cmd}", _touch(marker).encode()))
    _refused(path, f"opcode {opcode}")
    assert not marker.exists()


def test_obj_naming_os_system_is_refused_at_the_name(tmp_path: Path) -> None:
    marker = tmp_path / "owned"
    path = _write(tmp_path, b"\x80\x02(cos\nsystem\nS'" + _touch(marker).encode() + b"'\no.")
    _refused(path, "os.system is not one of the 19 names")
    assert not marker.exists()


# --- allowed names used for something else ---------------------------------------------------


def _dtype(spec: str) -> bytes:
    """A dtype exactly as numpy pickles one: ``dtype(spec, False, True)``, then BUILD its state."""
    _, args, state = np.dtype(spec).__reduce__()
    return _call(_global4("numpy", "dtype"), *map(_lit, args)) + _lit(state) + b"b"


def _array_state(shape: tuple[int, ...], dtype: str, data: bytes) -> bytes:
    """An ndarray as numpy pickles one: _reconstruct, then BUILD (1, shape, dtype, fortran, data)."""
    empty = _call(
        _global4("numpy._core.multiarray", "_reconstruct"), _global4("numpy", "ndarray"), _lit((0,)), _lit(b"b")
    )
    return empty + MARK + _int(1) + _lit(shape) + _dtype(dtype) + b"\x89" + data + TUPLE + b"b"


MISUSES = {
    "calls a class": (
        _call(_global4("numpy", "ndarray"), MARK + _int(1 << 40) + TUPLE, _s("u1")),
        "calling numpy.ndarray",
    ),
    "calls DataFrame": (_call(_global4("pandas", "DataFrame")), "calling pandas"),
    "reconstructs a huge array": (
        _call(
            _global4("numpy._core.multiarray", "_reconstruct"),
            _global4("numpy", "ndarray"),
            MARK + _int(1 << 40) + TUPLE,
            b"C\x01b",
        ),
        "made other than numpy's own way",
    ),
    "a void dtype": (_call(_global4("numpy", "dtype"), _s("V100000000"), b"\x89\x88"), "dtype 'V100000000'"),
    "a shared dtype": (_call(_global4("numpy", "dtype"), _s("f8"), b"\x89\x89"), "not a copy"),
    "bytearray(n)": (_call(_global4("builtins", "bytearray"), _int(1 << 40)), "bytearray made from anything but bytes"),
    "bytes(n)": (_call(_global4("builtins", "bytes"), _int(1 << 40)), "bytes made from arguments"),
    "a codec": (_call(_global4("_codecs", "encode"), _s("x"), _s("rot13")), "latin1"),
    "an index of a foreign class": (
        _call(_global4("pandas.core.indexes.base", "_new_Index"), _global4("pandas", "DataFrame"), b"}"),
        "an index of type pandas",
    ),
    "a huge RangeIndex": (
        _call(
            _global4("pandas.core.indexes.base", "_new_Index"),
            _global4("pandas", "RangeIndex"),
            b"}(" + _s("stop") + _int(1 << 62) + b"u",
        ),
        "a RangeIndex of",
    ),
    "an Arrow array of other types": (
        _call(_global4("pyarrow.lib", "type_for_alias"), _s("int64")),
        "Arrow type other than string",
    ),
    "NEWOBJ with arguments": (_global4("pandas", "DataFrame") + MARK + b"}" + TUPLE + b"\x81", "creating pandas"),
    "BUILD on a class": (_global4("numpy", "dtype") + b"}b", "did not just create"),
    "BUILD twice": (_array_state((2,), "u1", _lit(b"\x01\x01")) + _lit((1,)) + b"b", "did not just create"),
    "SETITEMS on a DataFrame": (
        _global4("pandas", "DataFrame") + b")\x81" + MARK + _s("a") + _s("b") + b"u",
        "not a dict",
    ),
    "APPENDS on an array": (_array_state((1,), "u1", _lit(b"\x01")) + MARK + b"Ne", "not a list"),
    "a dtype given object flags": (
        _call(_global4("numpy", "dtype"), *map(_lit, ("U3", False, True)))
        + _lit((3, "<", None, None, None, 12, 4, 63))
        + b"b",
        "changes the size or flags of dtype <U3",
    ),
    "an object dtype made big-endian": (
        _call(_global4("numpy", "dtype"), *map(_lit, ("O8", False, True)))
        + _lit((3, ">", None, None, None, -1, -1, 63))
        + b"b",
        "byte order '>' for dtype |O",
    ),
    "a slice of strings": (_call(_global4("builtins", "slice"), _s("a")), "slice of anything but integers"),
}


@pytest.mark.parametrize("case", list(MISUSES))
def test_allowed_names_cannot_be_misused(tmp_path: Path, case: str) -> None:
    body, match = MISUSES[case]
    _refused(_write(tmp_path, PROTO4 + body + STOP), match)


# --- hostile content inside, before or around a genuine DataFrame ----------------------------


class _Touch:
    """Pickles as ``os.system(touch marker)``: what an attacker hides in a DataFrame cell."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (_touch(self.marker),)


def test_code_nested_in_a_real_dataframe_does_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "owned"
    df = _frame()
    df.loc[1, "waferMap"] = _Touch(marker)
    data = pickle.dumps(df, protocol=4)
    pickle.loads(data)
    assert marker.exists()  # a plain unpickler runs it
    marker.unlink()
    _refused(_write(tmp_path, data), "posix.system is not one of the 19 names")
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    ["os.system", "short object array", "block past the end", "memo index", "dtype changed under an array"],
)
def test_something_bad_then_a_genuine_dataframe(tmp_path: Path, payload: str) -> None:
    """The file first does its damage, then returns a real DataFrame so nothing looks wrong."""
    marker = tmp_path / "owned"
    bad = {
        "os.system": _call(_global4("posix", "system"), _s(_touch(marker))),
        # numpy writes past a short list and pandas past a block placed beyond the last column
        "short object array": _array_state((5,), "O8", b"]" + MARK + b"NNe"),
        "block past the end": _block_past_the_end(),
        "memo index": b"N" + b"r" + (0xFFFFFFF0).to_bytes(4, "little"),  # LONG_BINPUT
        "dtype changed under an array": _dtype_changed_under_an_array(),
    }[payload]
    genuine = pickle.dumps(_frame(), protocol=4)[2:]  # its opcodes after PROTO
    path = _write(tmp_path, PROTO4 + bad + POP + genuine)
    _refused(path, "refusing to load this pickle")
    assert not marker.exists()


def _block_past_the_end() -> bytes:
    """Two blocks for three columns, one placed at column 10**8 (pandas writes there unchecked)."""
    block = _global4("pandas._libs.internals", "_unpickle_block")
    locs = _array_state((2,), "i8", _lit(np.array([0, 10**8]).tobytes()))
    first = _call(block, _array_state((2, 3), "f8", _lit(bytes(48))), locs, _int(2))
    second = _call(
        block,
        _array_state((1, 3), "f8", _lit(bytes(24))),
        _call(_global4("builtins", "slice"), *map(_lit, (1, 2, 1))),
        _int(2),
    )
    index = _call(
        _global4("pandas.core.indexes.base", "_new_Index"),
        _global4("pandas", "RangeIndex"),
        b"}(" + _s("stop") + _int(3) + b"u",
    )
    manager = _global4("pandas.core.internals.managers", "BlockManager")
    return _call(manager, MARK + first + second + TUPLE, b"]" + MARK + index + index + b"e")


def _dtype_changed_under_an_array() -> bytes:
    """A 4-byte str dtype used by an array, then given a 4000-byte item size (reads past the buffer)."""
    dt = _call(_global4("numpy", "dtype"), *map(_lit, ("U1", False, True))) + b"\x94"  # MEMOIZE as 0
    arr = _call(_global4("numpy._core.numeric", "_frombuffer"), _lit(b"abcd"), b"h\x00", _lit((1,)), _lit("C"))
    return dt + POP + arr + POP + b"h\x00" + _lit((3, "<", None, None, None, 4000, 4, 8)) + b"b"


# --- memory: nothing allocates more than the file can justify -------------------------------


def _bombs(tmp_path: Path) -> dict[str, Path]:
    """Pickles that ask for gigabytes or crash numpy/pandas, each well under a megabyte."""
    # One kB of bytes and the parts of an array, memoized (0-5), then 20,000 arrays of 20
    # bytes each that numpy would fill with a copy of that kB: 20 MB from a 0.4 MB file.
    parts = [_lit(bytes(1000)), _global4("numpy._core.multiarray", "_reconstruct"), _global4("numpy", "ndarray")]
    parts += [_lit((0,)) + b"\x94" + _lit(b"b"), _lit((1000,)), _dtype("u1")]
    memo = b"".join(
        p + b"\x94" for p in parts
    )  # memo: 0 data, 1 _reconstruct, 2 ndarray, 3 (0,), 4 b'b', 5 shape, 6 dtype
    one = b"h\x01(h\x02h\x03h\x04tR(" + _int(1) + b"h\x05h\x06\x89h\x00tb0"
    cases = {
        "object array of 10^9": _array_state((10**9,), "O8", b"]" + MARK + b"Ne"),
        "LONG_BINPUT 2^32-16": b"N" + b"r" + (0xFFFFFFF0).to_bytes(4, "little"),
        "BINBYTES8 of 2^60": b"\x8e" + (1 << 60).to_bytes(8, "little"),
        "BYTEARRAY8 of 2^40": b"\x80\x05\x96" + (1 << 40).to_bytes(8, "little"),
        "FRAME of 2^60": b"\x95" + (1 << 60).to_bytes(8, "little") + b"N",
        "10^5 nested MARKs": MARK * 100_000,
        "dict of 5000 keys": b"}" + MARK + b"".join(_int(k << 61) + b"N" for k in range(5000)) + b"u",
        "20,000 copies of 1 kB": memo + one * 20_000,
        "empty lists": b"]" * 300_000,
        "bytearray of 2^40": _call(_global4("builtins", "bytearray"), _int(1 << 40)),
    }
    return {
        name: _write(tmp_path, PROTO4 + body + STOP, f"bomb{i}.pkl") for i, (name, body) in enumerate(cases.items())
    }


# Peak RSS from VmHWM, this process's own high-water mark: ru_maxrss survives exec on Linux, so a
# child of a big pytest process would report its parent's peak.
_READER = """
import json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
def peak_mb():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmHWM:")) / 1024
from fabsight.errors import FormatError
from fabsight.io import read_maps
unraisable = []  # errors numpy/pandas hit while freeing objects: internal damage
sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value}")
for path in sys.argv[1:]:
    t = time.perf_counter()
    try:
        read_maps(path)
        out = "read"
    except FormatError as exc:
        out = str(exc)
    except BaseException as exc:
        out = f"{type(exc).__name__}: {exc}"
    if unraisable:
        out = "unraisable " + unraisable.pop()
    print(json.dumps({"path": path, "out": out, "s": time.perf_counter() - t, "rss_mb": peak_mb()}), flush=True)
"""


def _read_in_child(paths: list[Path]) -> tuple[int, list[dict[str, object]]]:
    """Read each path in one subprocess under a 4 GiB address-space limit (a crash kills only it)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.run(
        [sys.executable, "-c", _READER, *map(str, paths)], capture_output=True, text=True, env=env, timeout=300
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()]


def test_bombs_are_refused_fast_and_small(tmp_path: Path) -> None:
    bombs = _bombs(tmp_path)
    warm = tmp_path / "warm.pkl"  # read first: imports pandas and pyarrow before the clock runs
    _frame().to_pickle(warm)
    rc, results = _read_in_child([warm, *bombs.values()])
    assert rc == 0, results
    by_path = {r["path"]: r for r in results}
    rss = 0.0
    for name, path in bombs.items():
        r = by_path[str(path)]
        assert str(r["out"]).startswith(f"{path}: "), (name, r)
        assert float(r["s"]) < 1.0, (name, r)
        rss = max(rss, float(r["rss_mb"]))
    assert rss < 250  # the whole process, numpy/pandas/pyarrow included (about 140 MB of it)


def test_single_byte_changes_never_crash_the_reader(tmp_path: Path) -> None:
    """Every byte of a small LSWMD pickle changed once: FormatError or a read, never a crash."""
    maps = [WaferMap(np.full((4, 5), 1 + i % 2, np.uint8), labels=("Center",) if i else ()) for i in range(3)]
    raw = write_lswmd(maps, tmp_path / "seed.pkl").read_bytes()
    rng = np.random.default_rng(0)
    paths = []
    for i, pos in enumerate(rng.choice(len(raw), size=min(300, len(raw)), replace=False)):
        data = bytearray(raw)
        data[pos] = (data[pos] + int(rng.integers(1, 256))) % 256
        paths.append(_write(tmp_path, bytes(data), f"m{i}.pkl"))
    rc, results = _read_in_child(paths)
    assert rc == 0 and len(results) == len(paths), results[-1:]
    outcomes = Counter("read" if r["out"] == "read" else "refused" for r in results)
    assert all(r["out"] == "read" or str(r["out"]).startswith(f"{r['path']}: ") for r in results)
    assert outcomes["refused"] > 100


def test_limits_are_settable(tmp_path: Path) -> None:
    path = tmp_path / "maps.pkl"
    _frame().to_pickle(path)
    assert len(read_lswmd(path)) == 3
    with pytest.raises(FormatError, match=r"limit 4×4: PickleLimits\.max_grid_side"):
        read_lswmd(path, limits=PickleLimits(max_grid_side=4))
    with pytest.raises(FormatError, match=r"more than 0\.5× its own size in memory"):
        read_lswmd(path, limits=PickleLimits(expansion=0.5, slack_bytes=0))


# --- the service's switch ---------------------------------------------------------------------


def test_allow_pickle_false_refuses_pickles_everywhere(tmp_path: Path) -> None:
    (tmp_path / "lot").mkdir()
    path = tmp_path / "lot" / "LSWMD.pkl"
    _frame().to_pickle(path)
    np.save(tmp_path / "map.npy", np.ones((3, 3), np.uint8))
    for read in (
        lambda: read_maps(path, allow_pickle=False),
        lambda: read_maps(path, "lswmd", allow_pickle=False),
        lambda: list(iter_maps([path], allow_pickle=False)),
        lambda: read_maps(tmp_path / "lot", allow_pickle=False),  # a folder holding the pickle
    ):
        with pytest.raises(FormatError) as info:
            read()
        assert str(info.value) == f"{path}: {PICKLE_REFUSED}"
    assert read_maps(tmp_path / "map.npy", allow_pickle=False)[0].grid.shape == (3, 3)
    assert len(read_maps(path)) == 3  # the CLI's default: a user's own file


# --- genuine files read as before ---------------------------------------------------------


class _OldPandas(pickle.Pickler):
    """Writes a DataFrame the way pandas 0.x did: empty objects given their state, not reduced."""

    def reducer_override(self, obj: object) -> object:
        if type(obj) is pd.DataFrame:
            return copyreg.__newobj__, (pd.DataFrame,), {"_data": obj._mgr, "_typ": "dataframe", "_metadata": []}
        if type(obj) is BlockManager:
            blocks = [{"values": b.values, "mgr_locs": b.mgr_locs.indexer} for b in obj.blocks]
            state = (
                list(obj.axes),
                [b["values"] for b in blocks],
                [],
                {"0.14.1": {"axes": list(obj.axes), "blocks": blocks}},
            )
            return copyreg.__newobj__, (BlockManager,), state
        return NotImplemented


def test_reads_the_pandas_0x_layout(tmp_path: Path) -> None:
    df = _frame().astype({"lotName": object})
    df.columns = pd.Index(list(df.columns), dtype=object)
    buf = io.BytesIO()
    _OldPandas(buf, protocol=2).dump(df)
    data = buf.getvalue()
    for new, old in {
        b"cpandas\nDataFrame\n": b"cpandas.core.frame\nDataFrame\n",
        b"cpandas.core.internals.managers\nBlockManager\n": b"cpandas.core.internals\nBlockManager\n",
        b"cpandas.core.indexes.base\n_new_Index\n": b"cpandas.indexes.base\n_new_Index\n",
        b"cpandas\nIndex\n": b"cpandas.indexes.base\nIndex\n",
        b"cnumpy._core.multiarray\n_reconstruct\n": b"cnumpy.core.multiarray\n_reconstruct\n",
    }.items():
        assert new in data
        data = data.replace(new, old)
    maps = read_maps(_write(tmp_path, data, "old.pkl"))
    assert [m.labels for m in maps] == [(), ("Center",), ()]
    assert [m.lot_id for m in maps] == ["lot0", "lot1", "lot2"]
    assert [m.grid.shape for m in maps] == [(3, 4), (4, 4), (5, 4)]


@pytest.mark.shared
def test_real_files_read_exactly_as_pandas_reads_them(shared: Path) -> None:
    path = shared / "data" / "wm811k" / "LSWMD_train_01.pkl"
    maps = read_maps(path)
    df = pd.read_pickle(path)  # a trusted file, so pandas' own reader is the reference
    assert len(maps) == len(df) == 623
    assert Counter(m.labels[0] for m in maps) == {
        "none": 368, "Edge-Ring": 97, "Edge-Loc": 52, "Center": 43, "Loc": 36,
        "Scratch": 12, "Random": 9, "Donut": 5, "Near-full": 1,
    }  # fmt: skip
    for m, grid, label in zip(maps, df["waferMap"], df["failureType"], strict=True):
        assert np.array_equal(m.grid, grid) and m.labels == (str(label[0][0]),)


@pytest.mark.shared
@pytest.mark.parametrize(
    ("name", "count"), [("train_10", 6225), ("train_20", 12449), ("train_29", 18051), ("val", 12450)]
)
def test_every_real_file_reads(shared: Path, name: str, count: int) -> None:
    maps = list(iter_maps([shared / "data" / "wm811k" / f"LSWMD_{name}.pkl"]))
    assert len(maps) == count
    assert (
        Counter(m.labels[0] for m in maps)["none"]
        == {"train_10": 3673, "train_20": 7345, "train_29": 10651, "val": 7346}[name]
    )


class _ArrowState:
    """Pickles as pyarrow's own ``_restore_array(state)`` call, with the state edited."""

    def __init__(self, state: tuple[object, ...]) -> None:
        self.state = state

    def __reduce__(self) -> tuple[object, ...]:
        import pyarrow.lib

        return pyarrow.lib._restore_array, (self.state,)


def _arrow_cases() -> dict[str, tuple[object, ...]]:
    import pyarrow as pa

    kind, length, nulls, offset, buffers, children, dictionary = pa.array(["ab", "c", None])._reduce_state() \
        if hasattr(pa.Array, "_reduce_state") else pa.array(["ab", "c", None]).__reduce__()[1][0]
    return {
        "no character buffer": (kind, length, nulls, offset, buffers[:2], children, dictionary),
        "two buffers missing": (kind, length, nulls, offset, buffers[:1], children, dictionary),
        "short offsets": (kind, 1000, nulls, offset, buffers, children, dictionary),
        "offset past the end": (kind, length, nulls, 500, buffers, children, dictionary),
        "more nulls than values": (kind, length, 99, offset, buffers, children, dictionary),
    }


def test_arrow_arrays_with_damaged_buffers_are_refused_not_crashing(tmp_path: Path) -> None:
    """Found by the long fuzz run: pyarrow restores a string array from buffers of any size and
    reads past a short one, which killed the process (SIGSEGV) before its validation ran."""
    paths = []
    for i, state in enumerate(_arrow_cases().values()):
        paths.append(_write(tmp_path, pickle.dumps(_ArrowState(state), protocol=4), f"arrow{i}.pkl"))
    rc, results = _read_in_child(paths)
    assert rc == 0, results
    for path, r in zip(paths, results, strict=True):
        assert str(r["out"]).startswith(f"{path}: refusing to load this pickle: an Arrow"), r
