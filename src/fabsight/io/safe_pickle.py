"""An unpickler that can build a WM-811K ``LSWMD.pkl`` DataFrame and nothing else.

A pickle is a small program: ``pickle.load`` imports whatever module and name the file
spells, calls it with whatever arguments the file gives, and sets any state on the result,
so one file can run ``os.system``, and a pandas or numpy object given a corrupt state can
crash the process (an object-array state with a short list, or a block placed past the end of
its DataFrame, both make numpy/pandas write out of bounds). This reader runs the opcodes in
Python (the standard library's pure-Python unpickler, its dispatch table cut down) and:

* **names**: resolves only the exact ``(module, name)`` pairs of :data:`ALLOWED`, after the
  renames of :data:`RENAMED` (older pandas/numpy locations); a name with a dot, a prefix, or
  any other pair is refused, and nothing is ever imported by a name the file spells;
* **calls** (REDUCE): calls only those functions, each through a guard that checks its
  arguments have the types and sizes the LSWMD layout gives them before the real function
  sees them; no class is called except BlockManager, through its guard, and NEWOBJ only
  creates an empty DataFrame, BlockManager or ArrowStringArray;
* **state** (BUILD): sets the state only of an object this load has just created and not yet
  given a state, and only after checking it (an array's list or bytes must hold exactly the
  elements its shape declares; a DataFrame's blocks must cover its columns exactly once);
* **opcodes and memory**: refuses the opcodes the layout never uses (INST, OBJ, EXT*,
  PERSID, sets, out-of-band buffers, NEWOBJ_EX), keeps the memo as a list filled in order (a
  pickle writer never skips an index, so a huge memo index cannot reserve memory), never
  reads past the end of the file whatever a length field says, caps MARK nesting and dict
  sizes, and charges arrays, byte strings and containers against :class:`PickleLimits`.

Everything refused raises :class:`fabsight.errors.FormatError` naming the file.
"""

from __future__ import annotations

import io
import math
import pickle
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.errors import FormatError

#: Every (module, name) an LSWMD pickle may name (as the installed libraries spell it), and why.
ALLOWED: dict[tuple[str, str], str] = {
    ("pandas", "DataFrame"): "the file's one object",
    ("pandas.core.internals.managers", "BlockManager"): "the DataFrame's columns, grouped in blocks",
    ("pandas._libs.internals", "_unpickle_block"): "one block of same-typed columns (pandas >= 1.4)",
    ("pandas.core.indexes.base", "_new_Index"): "rebuilds the row index and the column names",
    ("pandas", "Index"): "the row index (int64) and the column names",
    ("pandas", "RangeIndex"): "the row index of a DataFrame built without one (write_lswmd)",
    ("pandas.arrays", "ArrowStringArray"): "string columns and names under pandas 3 (lotName, column names)",
    ("pandas", "StringDtype"): "the dtype of an ArrowStringArray",
    ("pyarrow.lib", "_restore_array"): "the Arrow array inside an ArrowStringArray",
    ("pyarrow.lib", "type_for_alias"): "its type, 'large_string'",
    ("pyarrow.lib", "py_buffer"): "its offset and character buffers",
    ("builtins", "bytearray"): "the bytes of those buffers",
    ("numpy._core.multiarray", "_reconstruct"): "every ndarray: wafer maps, label arrays, column blocks",
    ("numpy", "ndarray"): "the class _reconstruct makes",
    ("numpy", "dtype"): "each array's dtype",
    ("numpy._core.numeric", "_frombuffer"): "numeric arrays in protocol-5 pickles (DataFrame.to_pickle)",
    ("builtins", "slice"): "the column positions of a block",
    ("builtins", "bytes"): "an empty bytes object in a protocol-2 pickle",
    ("_codecs", "encode"): "bytes in a protocol-2 pickle written by Python 3 (text + 'latin1')",
}

#: Locations older libraries wrote → the pair of :data:`ALLOWED` they mean (exact pairs only).
RENAMED: dict[tuple[str, str], tuple[str, str]] = {
    # pandas 1.x-2.x module paths of the same classes
    ("pandas.core.frame", "DataFrame"): ("pandas", "DataFrame"),
    ("pandas.core.indexes.base", "Index"): ("pandas", "Index"),
    ("pandas.core.indexes.range", "RangeIndex"): ("pandas", "RangeIndex"),
    ("pandas.core.arrays.string_arrow", "ArrowStringArray"): ("pandas.arrays", "ArrowStringArray"),
    ("pandas.core.arrays.string_", "StringDtype"): ("pandas", "StringDtype"),
    # pandas 0.x (the public LSWMD.pkl) and the numeric index classes pandas 2 removed
    ("pandas.indexes.base", "Index"): ("pandas", "Index"),
    ("pandas.indexes.base", "_new_Index"): ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.indexes.range", "RangeIndex"): ("pandas", "RangeIndex"),
    ("pandas.indexes.numeric", "Int64Index"): ("pandas", "Index"),
    ("pandas.indexes.numeric", "Float64Index"): ("pandas", "Index"),
    ("pandas.core.indexes.numeric", "Int64Index"): ("pandas", "Index"),
    ("pandas.core.indexes.numeric", "UInt64Index"): ("pandas", "Index"),
    ("pandas.core.indexes.numeric", "Float64Index"): ("pandas", "Index"),
    ("pandas.core.internals", "BlockManager"): ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.base", "FrozenNDArray"): ("numpy", "ndarray"),
    ("pandas.indexes.frozen", "FrozenNDArray"): ("numpy", "ndarray"),
    ("pandas.core.indexes.frozen", "FrozenNDArray"): ("numpy", "ndarray"),
    # numpy 1.x, and Python 2 names as protocol-2 pickles spell them
    ("numpy.core.multiarray", "_reconstruct"): ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"): ("numpy._core.numeric", "_frombuffer"),
    ("__builtin__", "slice"): ("builtins", "slice"),
    ("__builtin__", "bytearray"): ("builtins", "bytearray"),
    ("__builtin__", "bytes"): ("builtins", "bytes"),
}


@dataclass(frozen=True)
class PickleLimits:
    """What one LSWMD pickle may make fabsight allocate; anything larger is refused unallocated.

    ``max_grid_side``: the largest wafer grid in dies per side. No array may hold more than
    ``max_grid_side ** 2`` elements (67 M by default): a map that size, or a column block of
    11 M wafers (WM-811K's largest map is 212×204 dies; the full file has 811,457 wafers).
    ``expansion`` and ``slack_bytes``: all arrays together may hold at most ``expansion`` bytes
    per byte of the file, plus ``slack_bytes`` (a real LSWMD file holds about one byte of
    arrays per byte: the arrays' data is in the file). This stops a small file from making
    many copies of one shared piece of data.
    """

    max_grid_side: int = 8192
    expansion: float = 8.0
    slack_bytes: int = 1 << 20

    @property
    def max_elements(self) -> int:
        return self.max_grid_side**2


#: Defaults for :func:`load_lswmd_frame` (pass ``limits=`` to change them for one call).
LIMITS = PickleLimits()

_ARRAY_OVERHEAD = 128  # bytes charged per array besides its data (the ndarray object itself)
_CONTAINER_COST = 64  # bytes charged per empty list or dict an opcode creates
_MAX_NESTING = 100  # open MARKs at once (an LSWMD pickle nests about 6 deep)
_MAX_DICT = 1024  # entries in one dict (an LSWMD pickle's largest has 6): no hash flooding
_DTYPE_SPEC = re.compile(r"[biufcOSU][1-9]\d{0,5}")  # bool/int/float/complex/object/bytes/str, as numpy pickles them
_DTYPE_KINDS = "biufcOSU"
_LABELS = (str, int, float, type(None))  # what the labels of an object index may be (pandas hashes them)


def _numpy_core() -> Any:
    """numpy's private core package (``numpy._core`` since 2.0, ``numpy.core`` before)."""
    return getattr(np, "_core", None) or np.core


@cache
def _objects() -> dict[tuple[str, str], Any]:
    """The objects the :data:`ALLOWED` pairs stand for in the installed libraries."""
    import pandas as pd
    import pyarrow.lib as pa_lib
    from pandas._libs.internals import _unpickle_block
    from pandas.arrays import ArrowStringArray
    from pandas.core.indexes.base import _new_Index
    from pandas.core.internals.managers import BlockManager

    core = _numpy_core()
    found = {
        ("pandas", "DataFrame"): pd.DataFrame,
        ("pandas.core.internals.managers", "BlockManager"): BlockManager,
        ("pandas._libs.internals", "_unpickle_block"): _unpickle_block,
        ("pandas.core.indexes.base", "_new_Index"): _new_Index,
        ("pandas", "Index"): pd.Index,
        ("pandas", "RangeIndex"): pd.RangeIndex,
        ("pandas.arrays", "ArrowStringArray"): ArrowStringArray,
        ("pandas", "StringDtype"): pd.StringDtype,
        ("pyarrow.lib", "_restore_array"): pa_lib._restore_array,
        ("pyarrow.lib", "type_for_alias"): pa_lib.type_for_alias,
        ("pyarrow.lib", "py_buffer"): pa_lib.py_buffer,
        ("builtins", "bytearray"): bytearray,
        ("numpy._core.multiarray", "_reconstruct"): core.multiarray._reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("numpy._core.numeric", "_frombuffer"): core.numeric._frombuffer,
        ("builtins", "slice"): slice,
        ("builtins", "bytes"): bytes,
        ("_codecs", "encode"): _latin1_encode,
    }
    assert found.keys() == ALLOWED.keys()
    return found


def _latin1_encode(text: str, encoding: str) -> bytes:
    """Stands for ``_codecs.encode``: the one use protocol-2 pickles make of it."""
    return text.encode("latin-1")


def _short(text: str, n: int = 80) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _is_int(value: Any) -> bool:
    return type(value) is int  # what BININT*/LONG* push; not bool, not an array


def _named(obj: Any) -> str:
    """What ``obj`` is, for messages: its pair in :data:`ALLOWED`, or its type (never its repr)."""
    names = {id(found): f"{module}.{name}" for (module, name), found in _objects().items()}
    return names.get(id(obj), f"a {type(obj).__name__}")


class _Done(Exception):
    """STOP: the pickle's value."""

    def __init__(self, value: Any) -> None:
        self.value = value


class _Unpickler(pickle._Unpickler):  # the pure-Python unpickler: its opcodes can be overridden one by one
    """Runs the opcodes of one file with the checks of the module docstring."""

    def __init__(self, path: Path, data: bytes, limits: PickleLimits) -> None:
        self._data = io.BytesIO(data)  # shares ``data``'s buffer: no copy
        super().__init__(self._data, encoding="latin1")
        self.path = path
        self.limits = limits
        # Reads go straight to the bytes (about twice as fast as through mmap or pickle's frame
        # buffers), clamped at their end: a length field claiming gigabytes reads what there is.
        self.read = self._data.read
        self.readline = self._data.readline
        self._size = len(data)
        self._budget = int(limits.expansion * len(data)) + limits.slack_bytes
        self._fresh: dict[int, Any] = {}  # objects created here whose state is not yet set
        self._blocks: dict[int, tuple[Any, np.ndarray, int]] = {}  # block → (block, column positions, rows)
        self._objects = _objects()
        # Plain functions, not bound methods: the unpickler holds no cycle through itself, so
        # everything it built is freed as soon as the caller drops it.
        self._calls = _guards()
        self._creatable = _creatable()
        self._builders = _builders()

    # --- the loop and the opcode table ---------------------------------------------------

    def load(self) -> Any:
        self.metastack: list[list[Any]] = []
        self.stack: list[Any] = []
        self.append = self.stack.append
        self.memo: list[Any] = []  # type: ignore[assignment]  # a list: indices come in order
        read, table, remember = self.read, _TABLE, self.memo.append
        try:
            while True:
                key = read(1)
                if key == b"\x94":  # MEMOIZE, a quarter of all opcodes: done here, not through _TABLE
                    remember(self.stack[-1])
                elif key:
                    table[key[0]](self)
                else:
                    raise EOFError("the pickle ends before its STOP opcode")
        except _Done as done:
            return self.built(done.value, "the pickle's object")

    def refuse(self, what: str) -> FormatError:
        """The error for anything an LSWMD pickle never does (raise it)."""
        return FormatError(self.path, f"refusing to load this pickle: {what}")

    def charge(self, nbytes: int) -> None:
        """Count ``nbytes`` against the file's memory budget (refused before it is allocated)."""
        self._budget -= nbytes
        if self._budget < 0:
            raise FormatError(
                self.path,
                f"the pickle asks for more than {self.limits.expansion:g}× its own size in memory "
                "(a corrupt or hostile file; the bound is PickleLimits.expansion)",
            )

    def fresh(self, obj: Any) -> Any:
        """Remember ``obj`` as just created: BUILD may set its state once."""
        self._fresh[id(obj)] = obj
        return obj

    def built(self, obj: Any, what: str) -> Any:
        """``obj``, refused if its state is not set yet: a later BUILD could change it under its user
        (say, a dtype's item size under an array that already uses it)."""
        if id(obj) in self._fresh:
            raise self.refuse(f"{what} used before its state is set")
        return obj

    def find_class(self, module: str, name: str) -> Any:
        pair = f"{_short(module)}.{_short(name)}"
        if "." in name:
            raise self.refuse(f"{pair} is a dotted name")
        key = RENAMED.get((module, name), (module, name))
        if key not in ALLOWED:
            raise self.refuse(f"{pair} is not one of the {len(ALLOWED)} names an LSWMD pickle needs")
        return self._objects[key]

    # --- opcodes replaced -----------------------------------------------------------------

    def op_refused(self) -> None:
        self._data.seek(-1, 1)
        code = self._data.read(1)
        name = _OPNAMES.get(code[0], f"0x{code[0]:02x}")
        raise self.refuse(f"opcode {name} (never used by an LSWMD pickle)")

    def op_frame(self) -> None:
        self.read(8)  # a frame is a buffering hint: its bytes follow inline

    def op_stop(self) -> None:
        raise _Done(self.stack.pop())

    def op_mark(self) -> None:
        if len(self.metastack) >= _MAX_NESTING:
            raise self.refuse(f"more than {_MAX_NESTING} nested MARKs")
        self.metastack.append(self.stack)
        self.stack = []
        self.append = self.stack.append

    def op_empty_list(self) -> None:
        self.charge(_CONTAINER_COST)
        self.append([])

    def op_list(self) -> None:
        items = self.pop_mark()
        self.charge(_CONTAINER_COST)
        self.append(items)

    def op_empty_dict(self) -> None:
        self.charge(_CONTAINER_COST)
        self.append({})

    def op_dict(self) -> None:
        items = self.pop_mark()
        self.charge(_CONTAINER_COST)
        self.append(self._to_dict({}, items))

    def op_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._to_dict(self.stack[-1], [key, value])

    def op_setitems(self) -> None:
        items = self.pop_mark()
        self._to_dict(self.stack[-1], items)

    def _to_dict(self, target: Any, items: list[Any]) -> dict[Any, Any]:
        if type(target) is not dict:
            raise self.refuse(f"SETITEMS on a {type(target).__name__}, not a dict")
        if len(target) + len(items) // 2 > _MAX_DICT:
            raise self.refuse(f"a dict of more than {_MAX_DICT} entries")
        for i in range(0, len(items) - 1, 2):
            target[items[i]] = items[i + 1]
        return target

    def op_append(self) -> None:
        value = self.stack.pop()
        self._to_list(self.stack[-1], [value])

    def op_appends(self) -> None:
        items = self.pop_mark()
        self._to_list(self.stack[-1], items)

    def _to_list(self, target: Any, items: list[Any]) -> None:
        if type(target) is not list:
            raise self.refuse(f"APPENDS on a {type(target).__name__}, not a list")
        target.extend(items)

    def _put(self, index: int) -> None:
        if index != len(self.memo):
            raise self.refuse(f"memo index {index} out of order (expected {len(self.memo)})")
        self.memo.append(self.stack[-1])

    def op_put(self) -> None:
        self._put(int(self.readline()[:-1]))

    def op_binput(self) -> None:
        self._put(self.read(1)[0])

    def op_long_binput(self) -> None:
        self._put(struct.unpack("<I", self.read(4))[0])

    def _get(self, index: int) -> None:
        if not 0 <= index < len(self.memo):
            raise self.refuse(f"memo index {index} was never set")
        self.append(self.memo[index])

    def op_get(self) -> None:
        self._get(int(self.readline()[:-1]))

    def op_binget(self) -> None:  # a tenth of all opcodes: _get written out
        index = self.read(1)[0]
        if index >= len(self.memo):
            raise self.refuse(f"memo index {index} was never set")
        self.append(self.memo[index])

    def op_long_binget(self) -> None:
        self._get(struct.unpack("<I", self.read(4))[0])

    def op_bytearray8(self) -> None:
        (n,) = struct.unpack("<Q", self.read(8))
        if n > self._size - self._data.tell():
            raise self.refuse(f"a {n}-byte bytearray in a shorter file")
        self.charge(n)
        self.append(bytearray(self.read(n)))

    def op_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        # Keyed by id: the table's objects are alive for the whole load, so no other object
        # on the stack can share their id.
        guard = self._calls.get(id(func))
        if guard is None:
            raise self.refuse(f"calling {_named(func)}")
        if type(args) is not tuple:
            raise self.refuse(f"calling {_named(func)} with a {type(args).__name__} of arguments")
        self.stack[-1] = guard(self, *args)

    def op_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        make = self._creatable.get(id(cls))
        if make is None or type(args) is not tuple or args:
            raise self.refuse(f"creating {_named(cls)} that way")
        self.append(self.fresh(make()))

    def op_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if self._fresh.pop(id(inst), None) is not inst:
            raise self.refuse(f"setting the state of a {type(inst).__name__} it did not just create")
        builder = self._builders.get(type(inst)) or (_build_dtype if isinstance(inst, np.dtype) else None)
        if builder is None:
            raise self.refuse(f"setting the state of a {type(inst).__name__}")
        builder(self, inst, state)

    # --- the calls the layout makes, each with its arguments checked ----------------------

    def call_reconstruct(self, subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        """An empty array that BUILD then fills: numpy always writes ``(ndarray, (0,), b'b')``."""
        empty = type(shape) is tuple and len(shape) == 1 and _is_int(shape[0]) and shape[0] == 0
        if (
            subtype is not np.ndarray
            or not empty
            or not ((type(dtype) is bytes and dtype == b"b") or _is_text(dtype, "b"))
        ):
            raise self.refuse("an ndarray made other than numpy's own way")
        self.charge(_ARRAY_OVERHEAD)
        return self.fresh(self._objects[("numpy._core.multiarray", "_reconstruct")](np.ndarray, (0,), b"b"))

    def call_dtype(self, spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
        if type(spec) is not str or not _DTYPE_SPEC.fullmatch(spec):
            raise self.refuse(f"dtype {_short(repr(spec))}")
        if type(align) not in (bool, int) or type(copy) not in (bool, int) or align or not copy:
            raise self.refuse("a dtype that is aligned or not a copy")
        return self.fresh(np.dtype(spec, False, True))

    def call_frombuffer(self, buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        if type(buf) not in (bytes, bytearray) or type(order) is not str or order not in ("C", "F"):
            raise self.refuse("a protocol-5 array whose buffer, dtype or order is not numpy's")
        size = self.check_shape(shape, dtype)
        if dtype.kind == "O" or size * dtype.itemsize != len(buf):
            raise self.refuse(f"a protocol-5 array of shape {shape} and {len(buf)} bytes")
        self.charge(len(buf) + _ARRAY_OVERHEAD)
        return self._objects[("numpy._core.numeric", "_frombuffer")](buf, dtype, shape, order)

    def check_shape(self, shape: Any, dtype: Any) -> int:
        """The number of elements of a declared array shape, within the limits."""
        # Written out for the two shapes a DataFrame of maps has: this runs once per array.
        if type(shape) is not tuple or not 0 < len(shape) <= 2 or type(shape[0]) is not int or shape[0] < 0:
            raise self.refuse("an array shape that is not one or two sizes")
        size = shape[0]
        if len(shape) == 2:
            if type(shape[1]) is not int or shape[1] < 0:
                raise self.refuse("an array shape that is not one or two sizes")
            size *= shape[1]
        if not isinstance(dtype, np.dtype) or dtype.kind not in _DTYPE_KINDS or dtype.fields or dtype.subdtype:
            raise self.refuse("an array dtype that is not a plain number, string or object")
        self.built(dtype, "a dtype")
        if size > self.limits.max_elements:
            side = self.limits.max_grid_side
            raise self.refuse(f"an array of {size} elements (limit {side}×{side}: PickleLimits.max_grid_side)")
        return size

    def call_block(self, values: Any, placement: Any, ndim: Any) -> Any:
        """One pandas block: its values and the column positions they fill."""
        if not _is_int(ndim) or ndim != 2:
            raise self.refuse("a block that is not two-dimensional")
        rows, width = self.block_values(values)
        locs = self.placement(placement, rows)
        block = self._objects[("pandas._libs.internals", "_unpickle_block")](values, placement, 2)
        self._blocks[id(block)] = (block, locs, width)
        return block

    def block_values(self, values: Any) -> tuple[int, int]:
        """(columns, rows) of a block's values: a 2-D ndarray or one Arrow string column."""
        self.built(values, "block values")
        if type(values) is np.ndarray and values.ndim == 2 and values.dtype.kind in "biufcO":
            return values.shape[0], values.shape[1]
        if type(values) is self._objects[("pandas.arrays", "ArrowStringArray")]:
            return 1, len(values)
        raise self.refuse(f"block values of type {type(values).__name__}")

    def placement(self, placement: Any, rows: int) -> np.ndarray:
        """The column positions of a block (a slice or an int array) as an array of ``rows`` ints."""
        self.built(placement, "a block placement")
        if type(placement) is slice:
            start, stop, step = placement.start, placement.stop, placement.step
            if not (_is_int(start) and _is_int(stop) and _is_int(step)) or start < 0 or step < 1:
                raise self.refuse("a block placement slice that is not increasing non-negative integers")
            if len(range(start, stop, step)) != rows:
                raise self.refuse("a block placement of another length than its values")
            return np.arange(start, stop, step, dtype=np.intp)
        if type(placement) is np.ndarray and placement.ndim == 1 and placement.dtype.kind in "iu":
            if placement.size != rows:
                raise self.refuse("a block placement of another length than its values")
            return placement.astype(np.intp)
        raise self.refuse(f"a block placement of type {type(placement).__name__}")

    def call_manager(self, blocks: Any, axes: Any) -> Any:
        """The DataFrame's block manager (pandas >= 1.4 pickles call it with its blocks and axes)."""
        if type(blocks) not in (tuple, list) or any(id(b) not in self._blocks for b in blocks):
            raise self.refuse("a block manager of blocks it did not just build")
        self.check_layout(axes, [self._blocks[id(b)][1:] for b in blocks])
        manager = self._objects[("pandas.core.internals.managers", "BlockManager")]
        return manager(tuple(blocks), list(axes))

    def check_layout(self, axes: Any, blocks: list[tuple[np.ndarray, int]]) -> None:
        """Blocks ``(column positions, rows)`` fill every column of ``axes`` exactly once."""
        index_types = (self._objects[("pandas", "Index")], self._objects[("pandas", "RangeIndex")])
        if type(axes) not in (list, tuple) or len(axes) != 2 or any(type(ax) not in index_types for ax in axes):
            raise self.refuse("a block manager whose axes are not two indexes")
        columns, rows = len(axes[0]), len(axes[1])
        if any(width != rows for _, width in blocks):
            raise self.refuse(f"a block whose length is not the DataFrame's {rows} rows")
        # Counted first: a RangeIndex can claim millions of columns without holding them.
        filled = np.sort(np.concatenate([locs for locs, _ in blocks])) if blocks else np.zeros(0, np.intp)
        if filled.size != columns or not np.array_equal(filled, np.arange(columns)):
            raise self.refuse(f"blocks that do not fill the {columns} columns exactly once")

    def call_index(self, cls: Any, d: Any) -> Any:
        """An Index from its data (or a RangeIndex from start/stop/step), as pandas pickles them."""
        index, range_index = self._objects[("pandas", "Index")], self._objects[("pandas", "RangeIndex")]
        if type(d) is not dict or (cls is not index and cls is not range_index):
            raise self.refuse(f"an index of type {_named(cls)}")
        if not (d.get("name") is None or type(d["name"]) in (str, int, float)):
            raise self.refuse("an index whose name is not text or a number")
        if cls is range_index:
            self.check_range(d)
        else:
            self.check_index_data(d)
        return self._objects[("pandas.core.indexes.base", "_new_Index")](cls, dict(d))

    def check_range(self, d: dict[Any, Any]) -> None:
        parts = [d.get(k, v) for k, v in (("start", 0), ("stop", None), ("step", 1))]
        if not set(d) <= {"start", "stop", "step", "name"} or not all(_is_int(p) for p in parts) or parts[2] == 0:
            raise self.refuse("a RangeIndex that is not start/stop/step integers")
        if len(range(*parts)) > self.limits.max_elements:
            raise self.refuse(f"a RangeIndex of {len(range(*parts))} rows")

    def check_index_data(self, d: dict[Any, Any]) -> None:
        data = self.built(d.get("data"), "index data")
        strings = self._objects[("pandas.arrays", "ArrowStringArray")]
        if not set(d) <= {"data", "name"} or not (
            (type(data) is np.ndarray and data.ndim == 1 and data.dtype.kind in "iufO") or type(data) is strings
        ):
            raise self.refuse("an index whose data is not one column of numbers or text")
        if type(data) is np.ndarray and data.dtype.kind == "O" and any(type(v) not in _LABELS for v in data):
            raise self.refuse("an index of objects that are not text or numbers")

    def call_string_dtype(self, storage: Any = "pyarrow", na_value: Any = np.nan) -> Any:
        if not _is_text(storage, "pyarrow") or type(na_value) is not float or not math.isnan(na_value):
            raise self.refuse("a string dtype other than pandas' Arrow-backed str")
        return self._objects[("pandas", "StringDtype")]("pyarrow", na_value)

    def call_arrow_type(self, alias: Any) -> Any:
        if type(alias) is not str or alias not in ("large_string", "string"):
            raise self.refuse("an Arrow type other than string")
        return self._objects[("pyarrow.lib", "type_for_alias")](alias)

    def call_arrow_buffer(self, data: Any) -> Any:
        if type(data) not in (bytes, bytearray):
            raise self.refuse(f"an Arrow buffer over a {type(data).__name__}")
        return self._objects[("pyarrow.lib", "py_buffer")](data)

    def call_arrow_array(self, state: Any) -> Any:
        """An Arrow string array from its buffers, checked in full before anything reads it."""
        import pyarrow as pa

        if type(state) is not tuple or len(state) != 7:
            raise self.refuse("an Arrow array state that is not pyarrow's")
        kind, length, nulls, offset, buffers, children, dictionary = state
        if not (isinstance(kind, pa.DataType) and (pa.types.is_string(kind) or pa.types.is_large_string(kind))):
            raise self.refuse("an Arrow array that is not strings")
        ints = all(_is_int(v) for v in (length, nulls, offset)) and length >= 0 and offset >= 0
        if not ints or length > self.limits.max_elements or type(children) is not list or children:
            raise self.refuse("an Arrow string array of another shape than pyarrow writes")
        if dictionary is not None:
            raise self.refuse("a dictionary-encoded Arrow array")
        if type(buffers) is not list or not all(b is None or isinstance(b, pa.Buffer) for b in buffers):
            raise self.refuse("Arrow buffers that are not buffers")
        self.check_string_buffers(buffers, length + offset, 8 if pa.types.is_large_string(kind) else 4)
        if not (nulls == -1 or 0 <= nulls <= length):
            raise self.refuse("an Arrow array with more nulls than values")
        array = self._objects[("pyarrow.lib", "_restore_array")](state)
        array.validate(full=True)  # offsets inside the data, lengths consistent: else ArrowInvalid
        return array

    def check_string_buffers(self, buffers: list[Any], slots: int, offset_bytes: int) -> None:
        """Validity, offsets and characters, each large enough for ``slots`` strings: pyarrow
        restores an array from its buffers without looking at their sizes (a short buffer is
        read past its end, which crashes the process before ``validate`` can run)."""
        if len(buffers) != 3 or buffers[1] is None or buffers[2] is None:
            raise self.refuse("an Arrow string array without its offset and character buffers")
        validity, offsets, _ = buffers
        if validity is not None and validity.size < (slots + 7) // 8:
            raise self.refuse("an Arrow validity buffer shorter than its array")
        if offsets.size < (slots + 1) * offset_bytes:
            raise self.refuse("an Arrow offset buffer shorter than its array")

    def call_bytearray(self, *args: Any) -> bytearray:
        if not args:
            data = b""
        elif len(args) == 1 and type(args[0]) is bytes:
            data = args[0]
        elif len(args) == 2 and type(args[0]) is str and (_is_text(args[1], "latin-1") or _is_text(args[1], "latin1")):
            data = args[0].encode("latin-1")  # how protocol 2 writes a bytearray
        else:
            raise self.refuse("a bytearray made from anything but bytes")
        self.charge(len(data))
        return bytearray(data)

    def call_bytes(self, *args: Any) -> bytes:
        if args:
            raise self.refuse("bytes made from arguments (protocol 2 writes only b'' that way)")
        return b""

    def call_slice(self, *args: Any) -> slice:
        if not 1 <= len(args) <= 3 or not all(a is None or _is_int(a) for a in args):
            raise self.refuse("a slice of anything but integers")
        return slice(*args)

    def call_encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        if type(text) is not str or not (_is_text(encoding, "latin1") or _is_text(encoding, "latin-1")):
            raise self.refuse("_codecs.encode of anything but text to latin1")
        self.charge(len(text))
        return _latin1_encode(text, encoding)


# --- BUILD: the state of each kind of object the layout creates -----------------------------


def _build_array(u: _Unpickler, arr: np.ndarray, state: Any) -> None:
    """An array's state ``(1, shape, dtype, fortran, data)``: data must hold exactly ``shape``."""
    if type(state) is not tuple or len(state) != 5 or type(state[0]) is not int or state[0] != 1:
        raise u.refuse("an array state that is not numpy's")
    if type(state[3]) is not bool:
        raise u.refuse("an array state that is not numpy's")
    _, shape, dtype, _, data = state
    size = u.check_shape(shape, dtype)
    if dtype.kind == "O":
        if type(data) is not list or len(data) != size:
            raise u.refuse(f"an object array of shape {shape} with {_count(data)} elements")
        u.charge(8 * size)
    else:
        if type(data) not in (bytes, str) or len(data) != size * dtype.itemsize:
            raise u.refuse(f"an array of shape {shape} and dtype {dtype.str} with {_count(data)} bytes")
        u.charge(len(data))
    arr.__setstate__(state)


def _is_text(value: Any, text: str) -> bool:
    return type(value) is str and value == text


def _count(data: Any) -> str:
    return str(len(data)) if type(data) in (list, bytes, str) else f"a {type(data).__name__} of"


def _build_dtype(u: _Unpickler, dtype: np.dtype, state: Any) -> None:
    """A dtype's state may set its byte order and nothing else.

    The dtype was made from its spec (``'U6'``, ``'O8'``), which fixes its size, alignment
    and flags; a state that changes them (an object flag on a str dtype, a bigger item size)
    would make numpy treat the array's bytes as something they are not.
    """
    if type(state) is not tuple or len(state) != 8 or any(type(v) is not int for v in (*state[:1], *state[5:])):
        raise u.refuse("a dtype state that is not numpy's")
    version, order, subarray, names, fields, size, alignment, flags = state
    if version != 3 or subarray is not None or names is not None or fields is not None:
        raise u.refuse("a dtype with fields or sub-arrays")
    orders = "|" if dtype.byteorder == "|" else "<>="
    if type(order) is not str or len(order) != 1 or order not in orders:
        raise u.refuse(f"byte order {_short(repr(order))} for dtype {dtype.str}")
    if size not in (-1, dtype.itemsize) or alignment not in (-1, dtype.alignment) or flags != dtype.flags:
        raise u.refuse(f"a state that changes the size or flags of dtype {dtype.str}")
    dtype.__setstate__(state)


def _build_frame(u: _Unpickler, frame: Any, state: Any) -> None:
    """The DataFrame's attributes: its block manager and pandas' bookkeeping, nothing else."""
    known = {"_mgr", "_data", "_typ", "_metadata", "attrs", "_attrs", "_flags"}
    if type(state) is not dict or not set(state) <= known or not _is_text(state.get("_typ"), "dataframe"):
        raise u.refuse("a DataFrame state with other attributes than pandas writes")
    manager = state.get("_mgr", state.get("_data"))
    if type(manager) is not u._objects[("pandas.core.internals.managers", "BlockManager")]:
        raise u.refuse("a DataFrame without a block manager")
    u.built(manager, "a block manager")
    plain = (str, int, float, bool, type(None))
    attrs = state.get("attrs", state.get("_attrs", {}))
    flags = state.get("_flags", {})
    if type(attrs) is not dict or not all(type(k) in plain and type(v) in plain for k, v in attrs.items()):
        raise u.refuse("DataFrame attrs that are not plain values")
    if (
        type(flags) is not dict
        or not set(flags) <= {"allows_duplicate_labels"}
        or not all(type(v) is bool for v in flags.values())
    ):
        raise u.refuse("DataFrame flags other than allows_duplicate_labels")
    if not (type(state.get("_metadata", [])) is list and all(type(m) is str for m in state.get("_metadata", []))):
        raise u.refuse("DataFrame metadata that is not a list of names")
    frame.__setstate__(state)


def _build_manager(u: _Unpickler, manager: Any, state: Any) -> None:
    """A pandas 0.14.1-1.x block manager state: ``(..., {'0.14.1': {'axes', 'blocks'}})``."""
    if type(state) is not tuple or len(state) < 4 or type(state[3]) is not dict:
        raise u.refuse("a block manager state that is not pandas' 0.14.1 layout")
    inner = state[3].get("0.14.1")
    if type(inner) is not dict or type(inner.get("blocks")) is not list:
        raise u.refuse("a block manager state without its 0.14.1 axes and blocks")
    layout = []
    for blk in inner["blocks"]:
        if type(blk) is not dict or set(blk) != {"values", "mgr_locs"} or type(blk["values"]) is not np.ndarray:
            raise u.refuse("a block that is not values and column positions")
        rows, width = u.block_values(blk["values"])
        layout.append((u.placement(blk["mgr_locs"], rows), width))
    u.check_layout(inner.get("axes"), layout)
    manager.__setstate__(state)


def _build_strings(u: _Unpickler, strings: Any, state: Any) -> None:
    """An ArrowStringArray: its checked Arrow array and its dtype."""
    import pyarrow as pa

    dtype = u._objects[("pandas", "StringDtype")]
    if type(state) is not dict or not {"_pa_array", "_dtype"} <= set(state) <= {"_pa_array", "_dtype", "_cache"}:
        raise u.refuse("an ArrowStringArray state with other attributes than pandas writes")
    if not isinstance(state["_pa_array"], pa.Array) or type(state["_dtype"]) is not dtype or state.get("_cache", {}):
        raise u.refuse("an ArrowStringArray that is not an Arrow array and a string dtype")
    strings.__setstate__(dict(state))


@cache
def _guards() -> dict[int, Callable[..., Any]]:
    """``id(object)`` → the check that stands between a REDUCE and that object."""
    o, u = _objects(), _Unpickler
    guards: dict[tuple[str, str], Callable[..., Any]] = {
        ("numpy._core.multiarray", "_reconstruct"): u.call_reconstruct,
        ("numpy", "dtype"): u.call_dtype,
        ("numpy._core.numeric", "_frombuffer"): u.call_frombuffer,
        ("pandas._libs.internals", "_unpickle_block"): u.call_block,
        ("pandas.core.internals.managers", "BlockManager"): u.call_manager,
        ("pandas.core.indexes.base", "_new_Index"): u.call_index,
        ("pandas", "StringDtype"): u.call_string_dtype,
        ("pyarrow.lib", "_restore_array"): u.call_arrow_array,
        ("pyarrow.lib", "type_for_alias"): u.call_arrow_type,
        ("pyarrow.lib", "py_buffer"): u.call_arrow_buffer,
        ("builtins", "bytearray"): u.call_bytearray,
        ("builtins", "bytes"): u.call_bytes,
        ("builtins", "slice"): u.call_slice,
        ("_codecs", "encode"): u.call_encode,
    }
    return {id(o[key]): guard for key, guard in guards.items()}


@cache
def _creatable() -> dict[int, Callable[[], Any]]:
    """``id(class)`` → how NEWOBJ makes an empty one (the only classes it may make)."""
    o = _objects()
    manager = o[("pandas.core.internals.managers", "BlockManager")]
    frame = o[("pandas", "DataFrame")]
    strings = o[("pandas.arrays", "ArrowStringArray")]
    return {
        id(frame): lambda: frame.__new__(frame),
        id(strings): lambda: strings.__new__(strings),
        # pandas' own compatibility unpickler makes an empty manager the same way
        id(manager): lambda: manager.__new__(manager, (), [], False),
    }


@cache
def _builders() -> dict[type, Callable[[_Unpickler, Any, Any], None]]:
    objects = _objects()
    return {
        np.ndarray: _build_array,
        objects[("pandas", "DataFrame")]: _build_frame,
        objects[("pandas.core.internals.managers", "BlockManager")]: _build_manager,
        objects[("pandas.arrays", "ArrowStringArray")]: _build_strings,
    }


#: Opcodes the stock pure-Python unpickler runs unchanged: they only push plain values
#: (bounded by the bytes they read), pop, or group items into tuples and lists.
_STOCK = (  # noqa: SIM905  (one word per opcode reads better than 34 quoted strings)
    "PROTO POP POP_MARK DUP NONE NEWTRUE NEWFALSE INT BININT BININT1 BININT2 LONG LONG1 LONG4 FLOAT BINFLOAT "
    "STRING BINSTRING SHORT_BINSTRING UNICODE BINUNICODE SHORT_BINUNICODE BINUNICODE8 BINBYTES SHORT_BINBYTES "
    "BINBYTES8 EMPTY_TUPLE TUPLE TUPLE1 TUPLE2 TUPLE3 GLOBAL STACK_GLOBAL"
).split()
_REPLACED = {
    "FRAME": _Unpickler.op_frame,
    "STOP": _Unpickler.op_stop,
    "MARK": _Unpickler.op_mark,
    "EMPTY_LIST": _Unpickler.op_empty_list,
    "LIST": _Unpickler.op_list,
    "EMPTY_DICT": _Unpickler.op_empty_dict,
    "DICT": _Unpickler.op_dict,
    "SETITEM": _Unpickler.op_setitem,
    "SETITEMS": _Unpickler.op_setitems,
    "APPEND": _Unpickler.op_append,
    "APPENDS": _Unpickler.op_appends,
    "PUT": _Unpickler.op_put,
    "BINPUT": _Unpickler.op_binput,
    "LONG_BINPUT": _Unpickler.op_long_binput,
    "GET": _Unpickler.op_get,
    "BINGET": _Unpickler.op_binget,
    "LONG_BINGET": _Unpickler.op_long_binget,
    "BYTEARRAY8": _Unpickler.op_bytearray8,
    "REDUCE": _Unpickler.op_reduce,
    "NEWOBJ": _Unpickler.op_newobj,
    "BUILD": _Unpickler.op_build,
}
_OPNAMES = {b[0]: name for name, b in vars(pickle).items() if isinstance(b, bytes) and len(b) == 1 and name.isupper()}
_TABLE: list[Callable[[_Unpickler], None]] = [_Unpickler.op_refused] * 256
for _name in _STOCK:
    _TABLE[getattr(pickle, _name)[0]] = pickle._Unpickler.dispatch[getattr(pickle, _name)[0]]
for _name, _op in _REPLACED.items():
    _TABLE[getattr(pickle, _name)[0]] = _op


def load_lswmd_frame(path: str | Path, limits: PickleLimits | None = None) -> Any:
    """The object an LSWMD pickle holds, built with the checks of this module.

    Raises :class:`FormatError` for anything refused (one line, naming the file); other
    exceptions (a corrupt file) are left to the caller to word.
    """
    path = Path(path)
    return _Unpickler(path, path.read_bytes(), limits or LIMITS).load()
