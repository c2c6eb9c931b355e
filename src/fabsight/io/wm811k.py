"""WM-811K ``LSWMD.pkl``: a pandas DataFrame pickle with one wafer per row.

Columns: ``waferMap`` (2-D array, 0 off / 1 good / 2 fail), ``dieSize``, ``lotName``,
``waferIndex``, ``trianTestLabel`` and ``failureType``. The two label columns hold nested
arrays such as ``[['Center']]``, or an empty array for the ~78 % of wafers nobody labelled
(→ ``labels=()``). The public file was pickled by pandas 0.x, whose module paths no longer
exist (``pandas.indexes.*``, ``pandas.core.indexes.numeric.Int64Index``); the unpickler below
maps them to today's classes. It also refuses everything but numpy/pandas/pyarrow data
classes and a few plain builtins, so a hostile pickle cannot call ``os.system``, ``eval``
or a file reader; unpickling is still only as safe as the file's source.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.errors import FormatError
from fabsight.io._common import check_grid_values
from fabsight.types import WaferMap
from fabsight.utils.atomic import atomic_open
from fabsight.utils.progress import track

COLUMNS = ("waferMap", "dieSize", "lotName", "waferIndex", "trianTestLabel", "failureType")

#: Old pandas locations → (module, name) in the installed pandas.
_RENAMED: dict[tuple[str, str], tuple[str, str]] = {
    ("pandas.core.indexes.numeric", "Int64Index"): ("pandas", "Index"),
    ("pandas.core.indexes.numeric", "UInt64Index"): ("pandas", "Index"),
    ("pandas.core.indexes.numeric", "Float64Index"): ("pandas", "Index"),
    ("pandas.indexes.numeric", "Int64Index"): ("pandas", "Index"),
    ("pandas.indexes.numeric", "Float64Index"): ("pandas", "Index"),
    ("pandas.core.base", "FrozenNDArray"): ("numpy", "ndarray"),
    ("pandas.indexes.frozen", "FrozenNDArray"): ("numpy", "ndarray"),
    ("pandas.core.indexes.frozen", "FrozenNDArray"): ("numpy", "ndarray"),
    ("pandas.core.internals", "BlockManager"): ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.internals", "SingleBlockManager"): ("pandas.core.internals.managers", "SingleBlockManager"),
}
_LIBRARIES = ("numpy", "pandas", "pyarrow")
_SAFE_BUILTINS = {
    "builtins": {"object", "slice", "range", "complex", "set", "frozenset", "bytearray", "bytes", "list", "dict"}
    | {"tuple", "str", "int", "float", "bool"},
    "copyreg": {"_reconstructor"},
    "_codecs": {"encode"},
    "collections": {"OrderedDict"},
    "datetime": {"datetime", "date", "time", "timedelta", "timezone"},
}
_UNSAFE_MODULES = re.compile(r"^(numpy\.(f2py|distutils|testing|ctypeslib|lib\._?npyio)|pandas\.(io|testing|util))\b")
_UNSAFE_NAMES = re.compile(r"^(read_|to_|load|save|fromfile|tofile|eval|exec|system|popen|open)")


def _checked_class(module: str, name: str) -> tuple[str, str]:
    """The current location of an (old) class path, or UnpicklingError when it is not data."""
    module, name = _RENAMED.get((module, name), (module, name))
    if module.startswith("pandas.indexes"):
        module = "pandas.core.indexes" + module[len("pandas.indexes") :]
    if module == "__builtin__":
        module = "builtins"
    if module.split(".")[0] in _LIBRARIES:
        safe = not _UNSAFE_MODULES.match(module) and not _UNSAFE_NAMES.match(name)
    else:
        safe = name in _SAFE_BUILTINS.get(module, ())
    if not safe:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not a plain numpy/pandas object)")
    return module, name


class _FastUnpickler(pickle.Unpickler):
    """The C unpickler with the class checks: about 5× the pure-Python one on big files."""

    def find_class(self, module: str, name: str) -> Any:
        return super().find_class(*_checked_class(module, name))


def _compat_unpickler() -> type[pickle.Unpickler]:
    """pandas' pure-Python compatibility unpickler (it also rebuilds old internal states)."""
    from pandas.compat.pickle_compat import Unpickler

    class _Compat(Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            return super().find_class(*_checked_class(module, name))

    return _Compat


def _load_frame(path: Path) -> Any:
    import pandas as pd

    with open(path, "rb") as fh:
        head = fh.read(2)
        if not head:
            raise FormatError(path, "empty file")
        if head[:1] != b"\x80":
            raise FormatError(path, "not a pickle file (WM-811K LSWMD.pkl is a pandas pickle)")
        obj = None
        for unpickler in (_FastUnpickler, _compat_unpickler()):
            fh.seek(0)
            try:
                obj = unpickler(fh, encoding="latin1").load()
                break
            except MemoryError:
                raise FormatError(path, "corrupt pickle (asks for more memory than there is)") from None
            except pickle.UnpicklingError as exc:
                if "refusing" in str(exc):
                    raise FormatError(path, f"cannot unpickle ({exc})") from None
                error: Exception = exc
            except Exception as exc:  # a corrupt pickle can raise nearly anything from inside pickle/pandas
                error = exc
        else:
            raise FormatError(path, f"cannot unpickle ({type(error).__name__}: {str(error)[:120]})") from None
    if not isinstance(obj, pd.DataFrame):
        raise FormatError(path, f"pickle holds a {type(obj).__name__}, not a pandas DataFrame")
    if "waferMap" not in obj.columns:
        raise FormatError(path, "DataFrame has no 'waferMap' column: not WM-811K LSWMD")
    return obj


def _label(value: Any) -> str | None:
    """``[['Center']]`` → ``'Center'``; empty arrays / NaN → None."""
    arr = np.asarray(value, dtype=object).ravel()
    if arr.size == 0:
        return None
    item = arr[0]
    if item is None or (isinstance(item, float) and np.isnan(item)):
        return None
    return str(item).strip() or None


def iter_lswmd(path: str | Path) -> Iterator[WaferMap]:
    """Stream the wafers of an ``LSWMD.pkl`` one row at a time.

    The pickle itself must be loaded whole, but WaferMaps are made lazily so 811k maps
    never exist as objects at once.
    """
    path = Path(path)
    df = _load_frame(path)
    cols = {c: (df[c].to_numpy() if c in df.columns else None) for c in COLUMNS}
    lot = path.stem
    for i in range(len(df)):
        grid = check_grid_values(path, np.asarray(cols["waferMap"][i]), f"row {i} waferMap")
        failure = _label(cols["failureType"][i]) if cols["failureType"] is not None else None
        split = _label(cols["trianTestLabel"][i]) if cols["trianTestLabel"] is not None else None
        lot_name = str(cols["lotName"][i]) if cols["lotName"] is not None else lot
        index = cols["waferIndex"][i] if cols["waferIndex"] is not None else i
        try:
            wafer_id = str(int(float(index)))
        except (TypeError, ValueError):
            wafer_id = str(index)
        extras: dict[str, Any] = {"row": i, "split": split}
        if cols["dieSize"] is not None:
            extras["die_size"] = float(cols["dieSize"][i])
        yield WaferMap(
            grid=grid,
            lot_id=lot_name,
            wafer_id=wafer_id,
            source=str(path),
            format="lswmd",
            labels=() if failure is None else (failure,),
            extras=extras,
        )


def read_lswmd(path: str | Path) -> list[WaferMap]:
    """All wafers of an ``LSWMD.pkl`` (use :func:`iter_lswmd` for the full 811k file)."""
    return list(iter_lswmd(path))


def _nested(text: str | None) -> np.ndarray:
    return np.zeros((0, 0)) if text is None else np.array([[text]])


def write_lswmd(maps: Sequence[WaferMap], path: str | Path) -> Path:
    """Write maps in the public ``LSWMD.pkl`` layout (a pickled pandas DataFrame).

    ``failureType`` is the map's single label (``[['Center']]``) or an empty array when it
    has none; ``trianTestLabel`` comes from ``extras['split']``; ``dieSize`` from
    ``extras['die_size']`` or the number of on-wafer dies.
    """
    import pandas as pd

    if not maps:
        raise FormatError(path, "nothing to write: no wafer maps")
    rows = []
    for i, m in enumerate(track(maps, f"packing {Path(path).name}")):
        if len(m.labels) > 1:
            raise FormatError(path, f"wafer '{m.wafer_id}' has {len(m.labels)} labels; WM-811K holds one per wafer")
        try:
            index = float(m.wafer_id)
        except ValueError:
            index = float(i + 1)
        rows.append(
            {
                "waferMap": np.asarray(m.grid, np.uint8),
                "dieSize": float(m.extras.get("die_size", m.n_dies)),
                "lotName": m.lot_id or "lot1",
                "waferIndex": index,
                "trianTestLabel": _nested(m.extras.get("split")),
                "failureType": _nested(m.labels[0] if m.labels else None),
            }
        )
    df = pd.DataFrame(rows, columns=list(COLUMNS))
    with atomic_open(path, "wb") as fh:
        pickle.dump(df, fh, protocol=4)
    return Path(path)
