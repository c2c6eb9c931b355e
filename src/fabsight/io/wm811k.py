"""WM-811K ``LSWMD.pkl``: a pandas DataFrame pickle with one wafer per row.

Columns: ``waferMap`` (2-D array, 0 off / 1 good / 2 fail), ``dieSize``, ``lotName``,
``waferIndex``, ``trianTestLabel`` and ``failureType``. The two label columns hold nested
arrays such as ``[['Center']]``, or an empty array for the ~78 % of wafers nobody labelled
(→ ``labels=()``). The public file was pickled by pandas 0.x, whose module paths no longer
exist (``pandas.indexes.*``, ``pandas.core.indexes.numeric.Int64Index``).

A pickle can name any function for the unpickler to call, so the file is never given to
``pickle.load``: :mod:`fabsight.io.safe_pickle` builds the DataFrame from an exact list of
pandas/numpy/pyarrow names, checks every call's arguments and every object's state, and
bounds the memory the file can make it allocate (:class:`PickleLimits`, settable per call).
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.errors import FormatError
from fabsight.io._common import check_grid_values
from fabsight.io.safe_pickle import PickleLimits, load_lswmd_frame
from fabsight.types import WaferMap
from fabsight.utils.atomic import atomic_open
from fabsight.utils.progress import track

COLUMNS = ("waferMap", "dieSize", "lotName", "waferIndex", "trianTestLabel", "failureType")


def _load_frame(path: Path, limits: PickleLimits | None) -> Any:
    import pandas as pd

    with open(path, "rb") as fh:
        head = fh.read(2)
    if not head:
        raise FormatError(path, "empty file")
    if head[:1] != b"\x80":
        raise FormatError(path, "not a pickle file (WM-811K LSWMD.pkl is a pandas pickle)")
    try:
        obj = load_lswmd_frame(path, limits)
    except FormatError:
        raise
    except MemoryError:
        raise FormatError(path, "corrupt pickle (asks for more memory than there is)") from None
    except Exception as exc:  # a corrupt pickle can raise nearly anything from inside pickle/numpy/pandas
        raise FormatError(path, f"cannot unpickle ({type(exc).__name__}: {str(exc)[:120]})") from None
    if not isinstance(obj, pd.DataFrame):
        raise FormatError(path, f"pickle holds a {type(obj).__name__}, not a pandas DataFrame")
    if "waferMap" not in obj.columns:
        raise FormatError(path, "DataFrame has no 'waferMap' column: not WM-811K LSWMD")
    if not obj.columns.is_unique:
        raise FormatError(path, "DataFrame has repeated column names")
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


def _die_size(path: Path, value: Any, row: int) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise FormatError(path, f"row {row} dieSize is not a number") from None


def iter_lswmd(path: str | Path, limits: PickleLimits | None = None) -> Iterator[WaferMap]:
    """Stream the wafers of an ``LSWMD.pkl`` one row at a time.

    The pickle itself must be loaded whole, but WaferMaps are made lazily so 811k maps
    never exist as objects at once. ``limits`` bounds what the file may make fabsight
    allocate (default :data:`fabsight.io.safe_pickle.LIMITS`).
    """
    path = Path(path)
    df = _load_frame(path, limits)
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
        except (TypeError, ValueError, OverflowError):  # a non-number, NaN or infinity: keep its text
            wafer_id = str(index)
        extras: dict[str, Any] = {"row": i, "split": split}
        if cols["dieSize"] is not None:
            extras["die_size"] = _die_size(path, cols["dieSize"][i], i)
        yield WaferMap(
            grid=grid,
            lot_id=lot_name,
            wafer_id=wafer_id,
            source=str(path),
            format="lswmd",
            labels=() if failure is None else (failure,),
            extras=extras,
        )


def read_lswmd(path: str | Path, limits: PickleLimits | None = None) -> list[WaferMap]:
    """All wafers of an ``LSWMD.pkl`` (use :func:`iter_lswmd` for the full 811k file)."""
    return list(iter_lswmd(path, limits))


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
