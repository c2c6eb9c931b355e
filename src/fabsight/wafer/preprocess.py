"""Wafer grids of any size → fixed-size model input that keeps OFF / GOOD / FAIL apart.

A wafer map is categorical: die state 2 is not "more" than state 1, so resizing the raw
codes with an image filter would invent half-failing dies and blur failing dies into
good ones. Instead each state gets its own channel (one-hot) and every channel is
*area*-resampled: an output pixel holds the fraction of its area covered by dies in that
state. The three channels therefore always sum to 1, a 300×300 map and a 26×26 map of
the same pattern look alike, and nothing is fitted (no statistics to carry in the model
card beyond the size).

Rows and columns are resampled independently, not padded to a square: a wafer map is the
wafer's bounding box on the die grid, so a non-square grid (non-square dies, e.g. 25×27
in WM-811K) holds a wafer that is round in millimetres and elliptical in cells. Stretching
each axis to ``size`` makes it round again, so a Center blob or an Edge-Ring looks the
same whatever the die aspect ratio.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from fabsight.errors import FabsightError
from fabsight.types import WaferMap
from fabsight.utils.threads import single_blas_thread

#: Channel order of the model input, one channel per :class:`fabsight.types.DieState`.
CHANNELS: tuple[str, ...] = ("off", "good", "fail")

#: What a user must reproduce to feed the model by hand (stored in every model card).
PREPROCESSING = (
    "one-hot channels (off, good, fail); area-resample rows and columns independently to "
    "size x size (pixel = fraction of its area in that state; the grid is the wafer's bounding box)"
)


def check_grid(grid: np.ndarray, source: str | None = None) -> np.ndarray:
    """Return ``grid`` as uint8 after checking it is a non-empty 2-D grid of 0/1/2.

    Raises :class:`FabsightError` naming ``source`` so a bad map in a folder of
    thousands is found from the one-line message.
    """
    a = np.asarray(grid)
    if a.ndim != 2 or a.size == 0:
        raise FabsightError(source, f"a wafer map must be a non-empty 2-D grid, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise FabsightError(source, f"wafer map values must be numbers 0/1/2, got dtype {a.dtype}")
    if a.dtype.kind == "u" and a.max() <= 2:  # the common case, checked without temporaries
        return a.astype(np.uint8, copy=False)
    bad = ~np.isin(a, (0, 1, 2))
    if bad.any():
        found = np.unique(a[bad])[:5].tolist()
        raise FabsightError(source, f"wafer map values must be 0 (off), 1 (good) or 2 (fail); found {found}")
    return a.astype(np.uint8, copy=False)


@lru_cache(maxsize=128)
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``n_out × n_in`` weights: overlap of each output cell with each input cell.

    Row ``i`` covers ``[i·n_in/n_out, (i+1)·n_in/n_out)`` in input units; weights are
    normalised so each row sums to 1. Works for up- and down-sampling alike, and
    ``R @ X @ R.T`` resamples a 2-D channel by exact area averaging.
    """
    edges = np.arange(n_out + 1, dtype=np.float64) * n_in / n_out
    cells = np.arange(n_in, dtype=np.float64)
    overlap = np.minimum(edges[1:, None], cells[None, :] + 1) - np.maximum(edges[:-1, None], cells[None, :])
    weights = (np.clip(overlap, 0.0, None) * (n_out / n_in)).astype(np.float32)
    weights.setflags(write=False)
    return weights


#: Grid cells per chunk of :func:`_resample` (about 1 MB of float32 one-hot channels):
#: chunks that stay in cache beat whole-batch products, whose temporaries (hundreds of MB
#: for 300×300 grids) cost more in page faults and memory traffic than the products.
_CHUNK_CELLS = 1 << 18


def _fractions(grids: np.ndarray, size: int, out: np.ndarray) -> None:
    """Good and fail fractions of ``(n, H, W)`` checked grids, written into ``out``
    (``(n, 2, size, size)``, a view of the model input). The caller holds
    :func:`single_blas_thread`: entering it costs about as much as resampling one small map,
    so a batch of many grid shapes enters it once, not once per shape.

    Columns then rows, each a product with :func:`_area_matrix`, on chunks of maps that fit
    in cache, written straight into ``out`` (no whole-batch temporaries or transposes).
    """
    n, h, w = grids.shape
    rows, cols_t = _area_matrix(h, size), _area_matrix(w, size).T
    step = max(1, _CHUNK_CELLS // (h * max(w, size)))
    states = np.empty((min(step, n), 2, h, w), dtype=np.float32)
    for s in range(0, n, step):
        g = grids[s : s + step]
        m = len(g)
        np.equal(g, 1, out=states[:m, 0])
        np.equal(g, 2, out=states[:m, 1])
        cols = (states[:m].reshape(m * 2 * h, w) @ cols_t).reshape(m, 2, h, size)
        np.matmul(rows, cols, out=out[s : s + m])


def _fill_off(out: np.ndarray) -> None:
    """Channel 0 (off) of ``(n, 3, size, size)`` model inputs from the other two: the three
    fractions sum to 1, so it is what good and fail leave (one pass over the whole batch)."""
    off = out[:, 0]
    np.add(out[:, 1], out[:, 2], out=off)
    np.subtract(1.0, off, out=off)
    np.clip(off, 0.0, 1.0, out=off)


def _resample(grids: np.ndarray, size: int) -> np.ndarray:
    """``(n, H, W)`` checked grids of one shape → ``(n, 3, size, size)`` state fractions."""
    out = np.empty((len(grids), 3, size, size), dtype=np.float32)
    with single_blas_thread():
        _fractions(grids, size, out[:, 1:])
    _fill_off(out)
    return out


def to_model_input(grid: np.ndarray, size: int, *, source: str | None = None) -> np.ndarray:
    """Turn one ``H×W`` grid (values 0/1/2) into a ``3×size×size`` float32 array.

    Channel ``k`` is the fraction of each output pixel covered by dies in state ``k``
    (:data:`CHANNELS`); see the module docstring for why.
    """
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    return _resample(check_grid(grid, source)[None], size)[0]


def _source(item: WaferMap | np.ndarray, index: int) -> str:
    """How an error names a map: its file and lot/wafer, or its position."""
    if isinstance(item, WaferMap):
        ident = "/".join(p for p in (item.lot_id, item.wafer_id) if p)
        name = item.source or f"map {index}"
        return f"{name} ({ident})" if ident else name
    return f"map {index}"


def maps_to_array(maps: Sequence[WaferMap | np.ndarray], size: int, *, start: int = 0) -> np.ndarray:
    """:func:`to_model_input` of every map as one ``N×3×size×size`` float32 array.

    Maps sharing a grid shape (a lot, a data set) are resampled together in one batched
    product, which is most of the end-to-end speed of prediction. ``start``: the position
    of ``maps[0]`` in the caller's list (a batch of a longer one), for naming a bad map.
    """
    if len(maps) == 0:
        raise FabsightError(None, "no wafer maps given")
    grids = []
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, item in enumerate(maps):
        grid = item.grid if isinstance(item, WaferMap) else np.asarray(item)
        try:
            grids.append(check_grid(grid))
        except FabsightError as exc:  # name the map only when there is something to say
            raise FabsightError(_source(item, start + i), exc.message) from None
        by_shape.setdefault(grids[-1].shape, []).append(i)
    out = np.empty((len(maps), 3, size, size), dtype=np.float32)
    with single_blas_thread():
        for idx in by_shape.values():
            stack = np.stack([grids[i] for i in idx])
            if idx[-1] - idx[0] + 1 == len(idx):  # consecutive maps (one lot, or a lone map): no scatter
                _fractions(stack, size, out[idx[0] : idx[-1] + 1, 1:])
            else:
                part = np.empty((len(idx), 2, size, size), dtype=np.float32)
                _fractions(stack, size, part)
                out[idx, 1:] = part
    _fill_off(out)
    return out
