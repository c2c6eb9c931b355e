"""Helpers every reader and writer shares: grids from die indices, bounded array reads, safe names."""

from __future__ import annotations

import io
import math
import re
import zipfile
import zlib
from collections.abc import Collection, Sequence
from datetime import datetime
from pathlib import Path
from tokenize import TokenError
from typing import IO

import numpy as np

from fabsight.errors import FormatError
from fabsight.io.limits import check_array_bytes, check_grid, check_span
from fabsight.types import DieState, WaferMap

#: Notch positions in the order of the clockwise angle from the bottom used by
#: SEMI G85 ``Orientation`` and KLARF 1.8 ``OrientationMarkLocation`` (0 = down).
NOTCH_BY_ANGLE: dict[int, str] = {0: "down", 90: "left", 180: "up", 270: "right"}
ANGLE_BY_NOTCH: dict[str, int] = {v: k for k, v in NOTCH_BY_ANGLE.items()}


def notch_from_angle(path: str | Path, value: str) -> str:
    """Map an orientation angle in degrees (a multiple of 90) to a notch name."""
    try:
        degrees = float(value)
    except ValueError:
        degrees = math.nan
    if not math.isfinite(degrees):
        raise FormatError(path, f"orientation {value[:40]!r} is not an angle in degrees")
    angle = round(degrees) % 360
    if angle not in NOTCH_BY_ANGLE:
        raise FormatError(path, f"orientation {angle}° is not one of 0, 90, 180, 270")
    return NOTCH_BY_ANGLE[angle]


def grid_from_dies(
    path: str | Path, on_x: np.ndarray, on_y: np.ndarray, fail_x: np.ndarray, fail_y: np.ndarray, *, y_up: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A die grid from the file's die indices of on-wafer dies and failing dies.

    Failing dies are always on-wafer (a defect or a failing part proves the die exists).
    ``y_up`` says whether the file's Y index grows towards the top of the wafer (KLARF)
    or towards the bottom (most wafer-sort testers); row 0 is the top either way.
    A span beyond :mod:`fabsight.io.limits` is refused before the grid is allocated.
    Returns ``(grid, x_index, y_index)``.
    """
    all_x = np.concatenate([on_x, fail_x]).astype(np.int64, copy=False)
    all_y = np.concatenate([on_y, fail_y]).astype(np.int64, copy=False)
    if all_x.size == 0:
        return np.zeros((0, 0), np.uint8), np.zeros(0, np.int64), np.zeros(0, np.int64)
    x0, x1 = int(all_x.min()), int(all_x.max())
    y0, y1 = int(all_y.min()), int(all_y.max())
    check_span(path, x0, x1, y0, y1)
    x_index = np.arange(x0, x1 + 1, dtype=np.int64)
    y_index = np.arange(y1, y0 - 1, -1, dtype=np.int64) if y_up else np.arange(y0, y1 + 1, dtype=np.int64)
    grid = np.zeros((y_index.size, x_index.size), np.uint8)
    rows, cols = index_to_cell(all_y, all_x, x0, y0, y1, y_up=y_up)
    grid[rows, cols] = DieState.GOOD
    rows, cols = index_to_cell(fail_y.astype(np.int64), fail_x.astype(np.int64), x0, y0, y1, y_up=y_up)
    grid[rows, cols] = DieState.FAIL
    return grid, x_index, y_index


def index_to_cell(
    y: np.ndarray, x: np.ndarray, x0: int, y0: int, y1: int, *, y_up: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Row/column of die indices in a grid built by :func:`grid_from_dies`."""
    rows = (y1 - y) if y_up else (y - y0)
    return rows.astype(np.intp), (x - x0).astype(np.intp)


def file_indices(wmap: WaferMap, *, y_up: bool) -> tuple[np.ndarray, np.ndarray]:
    """Die indices to write for each column/row of ``wmap`` in a file's convention.

    Keeps the map's own indices when they already run the way the target format needs
    (x growing to the right; y growing up for ``y_up`` formats, down otherwise), and
    negates them when they run the other way, so the picture is never mirrored.
    """
    rows, cols = wmap.shape
    xs = np.arange(cols, dtype=np.int64) if wmap.x_index is None else np.asarray(wmap.x_index, np.int64)
    if wmap.y_index is None:
        ys = np.arange(rows - 1, -1, -1, dtype=np.int64) if y_up else np.arange(rows, dtype=np.int64)
    else:
        ys = np.asarray(wmap.y_index, np.int64)
    if xs.size > 1 and xs[1] < xs[0]:
        xs = -xs
    if ys.size > 1 and (ys[1] > ys[0]) == y_up:
        ys = -ys
    return xs, ys


def parse_timestamp(parts: Sequence[str]) -> datetime | None:
    """Best-effort date/time from the text forms inspection tools write; None if unknown."""
    text = " ".join(p.strip() for p in parts if p.strip())
    formats = (
        "%m-%d-%y %H:%M:%S",
        "%m-%d-%Y %H:%M:%S",
        "%Y-%m-%d %H:%M:%S",
        "%m/%d/%Y %H:%M:%S",
        "%Y%m%d%H%M%S",
        "%Y-%m-%dT%H:%M:%S",
    )
    for fmt in formats:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    return None


def safe_name(text: str, default: str) -> str:
    """A file/folder name made of the safe characters of ``text``."""
    cleaned = re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("._")
    return cleaned or default


def check_grid_values(path: str | Path, grid: np.ndarray, what: str) -> np.ndarray:
    """A 2-D uint8 die-state grid, or a FormatError when it holds other values."""
    arr = np.asarray(grid)
    if arr.ndim != 2:
        raise FormatError(path, f"{what} is not a 2-D map (shape {arr.shape})")
    if arr.dtype.kind not in "biuf":
        raise FormatError(path, f"{what} is not numeric (dtype {arr.dtype})")
    if arr.dtype.kind == "f":
        bad = arr.size and (not np.all(np.isfinite(arr)) or np.any(arr != np.round(arr)) or arr.min() < 0)
    else:  # integers: the common case (millions of WM-811K maps), two cheap reductions at most
        bad = arr.dtype.kind == "i" and arr.size and arr.min() < 0
    if bad or (arr.size and arr.max() > 2):
        raise FormatError(path, f"{what} has values other than 0/1/2 (off/good/fail)")
    return arr.astype(np.uint8)


#: Zip compression methods numpy writes (``savez``: stored, ``savez_compressed``: deflated).
#: Others (bzip2, lzma) are refused: their decoders inflate a whole chunk at once, unbounded.
_NPZ_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflated"}
#: What a damaged ``.npy`` header or zip archive raises from numpy and zipfile: numpy parses the
#: header with the tokenizer (an unclosed bracket is a TokenError); an encrypted member is a
#: RuntimeError.
_ARRAY_ERRORS = (
    *(ValueError, TypeError, SyntaxError, TokenError, RuntimeError),
    *(OSError, EOFError, zipfile.BadZipFile, zlib.error),
)


#: Longest ``.npy`` header accepted (numpy itself refuses headers over 10,000 bytes).
_MAX_NPY_HEADER = 1 << 16
#: Bytes per read of array data: a file or zip member that is shorter than its header or
#: directory says never has the full declared size reserved up front.
_READ_CHUNK = 1 << 24


def _npy_header(fh: IO[bytes], what: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """Shape, Fortran order, dtype and byte size of an ``.npy`` header; its length is checked
    before the header is read (numpy would read whatever length the file claims)."""
    from numpy.lib import format as npy_format

    prefix = fh.read(8)
    version = npy_format.read_magic(io.BytesIO(prefix))
    if version not in ((1, 0), (2, 0)):
        raise ValueError(f"{what}: .npy format version {version[0]}.{version[1]} is not supported")
    size_field = fh.read(2 if version == (1, 0) else 4)
    length = int.from_bytes(size_field, "little")
    if length > _MAX_NPY_HEADER:
        raise ValueError(f"{what}: a header of {length} bytes")
    header = io.BytesIO(size_field + fh.read(length))
    read = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, fortran, dtype = read(header)
    return shape, fortran, dtype, len(prefix) + len(size_field) + length


def load_npy_stream(path: str | Path, fh: IO[bytes], size: int, what: str, *, grids: bool = False) -> np.ndarray:
    """One array from an ``.npy`` stream of ``size`` bytes, its header checked before any data is read.

    The shape and dtype come from the header alone; numeric dtypes only (no pickled
    objects), and the data it declares must fit both the file and the array-byte limit,
    so a damaged shape cannot allocate more than the file holds. ``grids``: the last two
    axes are die grids, held to the grid limits too. A damaged header or short data raises
    ValueError (the caller words it); a size over a limit, FormatError.
    """
    shape, fortran, dtype, header_size = _npy_header(fh, what)
    if dtype.kind not in "biuf" or any(d < 0 for d in shape):
        raise FormatError(path, f"{what}: holds {dtype} values of shape {shape}, not a numeric array")
    if grids and len(shape) >= 2:
        check_grid(path, shape[-2], shape[-1], f"{what}: a map")
    nbytes = math.prod(shape) * dtype.itemsize
    check_array_bytes(path, nbytes, what)
    if nbytes > size - header_size:
        raise ValueError(f"{what}: the header declares {nbytes} bytes of data, the file holds {size - header_size}")
    data = bytearray()
    while len(data) < nbytes and (chunk := fh.read(min(_READ_CHUNK, nbytes - len(data)))):
        data += chunk
    if len(data) != nbytes:
        raise ValueError(f"{what}: data ends after {len(data)} of {nbytes} bytes")
    arr = np.frombuffer(data, dtype=dtype)
    return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def load_npy(path: str | Path, *, grids: bool = False) -> np.ndarray:
    """The array of an ``.npy`` file, read as :func:`load_npy_stream` does."""
    try:
        with open(path, "rb") as fh:
            if fh.read(4) == b"PK\x03\x04":
                raise FormatError(path, "an .npz archive, not a single .npy array")
            fh.seek(0)
            return load_npy_stream(path, fh, Path(path).stat().st_size, "the .npy array", grids=grids)
    except _ARRAY_ERRORS as exc:
        raise FormatError(path, f"not a readable .npy array ({str(exc)[:100]})") from None


def load_npz(
    path: str | Path, names: Sequence[str], *, grids: Collection[str] = ()
) -> tuple[list[str], dict[str, np.ndarray]]:
    """The archive's array names, and the arrays ``names`` when it has them all (else none);
    those in ``grids`` hold die grids in their last two axes (see :func:`load_npy_stream`).

    Sizes are checked before anything is inflated: the members' uncompressed sizes from the
    zip directory against the array-byte limit, then each ``.npy`` header against its
    member (zipfile never inflates past a member's declared size).
    """
    try:
        with zipfile.ZipFile(path) as zf:
            members = {i.filename.removesuffix(".npy"): i for i in zf.infolist()}
            found = [members[n] for n in names if n in members]
            if len(found) < len(names):
                return sorted(members), {}
            check_array_bytes(path, sum(i.file_size for i in found), "the arrays " + ", ".join(names))
            arrays: dict[str, np.ndarray] = {}
            for info in found:
                name = info.filename.removesuffix(".npy")
                if info.compress_type not in _NPZ_METHODS:
                    raise FormatError(
                        path, f"{info.filename}: zip compression method {info.compress_type} is not stored or deflated"
                    )
                with zf.open(info) as fh:
                    arrays[name] = load_npy_stream(path, fh, info.file_size, info.filename, grids=name in grids)
    except _ARRAY_ERRORS as exc:
        raise FormatError(path, f"not a readable .npz ({type(exc).__name__}: {str(exc)[:100]})") from None
    return sorted(members), arrays
