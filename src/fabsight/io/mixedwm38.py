"""MixedWM38 ``.npz``: ``arr_0`` N×52×52 maps (0/1/2) and ``arr_1`` N×8 multi-hot labels.

The label columns follow :data:`fabsight.types.MIXEDWM38_LABELS`; an all-zero row is the
``none`` (normal) class. The vector itself is kept in ``extras['label_vector']``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fabsight.errors import FormatError
from fabsight.io._common import check_grid_values, load_npz
from fabsight.types import MIXEDWM38_LABELS, WaferMap
from fabsight.utils.atomic import atomic_open


def read_mixedwm38(path: str | Path) -> list[WaferMap]:
    """All maps of a MixedWM38 ``.npz`` with their multi-label tuples."""
    path = Path(path)
    names, arrays = load_npz(path, ("arr_0", "arr_1"), grids=("arr_0",))
    if len(arrays) < 2:
        raise FormatError(path, f"needs arrays arr_0 (maps) and arr_1 (labels), has {names}")
    maps, labels = arrays["arr_0"], arrays["arr_1"]
    if maps.ndim != 3:
        raise FormatError(path, f"arr_0 must be N×H×W maps, has shape {maps.shape}")
    if labels.ndim != 2 or labels.shape != (maps.shape[0], len(MIXEDWM38_LABELS)):
        raise FormatError(
            path, f"arr_1 must be {maps.shape[0]}×{len(MIXEDWM38_LABELS)} multi-hot labels, has {labels.shape}"
        )
    if labels.size and not np.isin(labels, (0, 1)).all():
        raise FormatError(path, "arr_1 must hold only 0/1")
    n, rows, cols = maps.shape
    grids = check_grid_values(path, maps.reshape(n * rows, cols), "arr_0").reshape(maps.shape)
    out = []
    for i in range(maps.shape[0]):
        vec = labels[i].astype(np.uint8)
        names = tuple(n for n, on in zip(MIXEDWM38_LABELS, vec, strict=True) if on) or ("none",)
        out.append(
            WaferMap(
                grid=grids[i],
                lot_id=path.stem,
                wafer_id=str(i),
                source=str(path),
                format="mixedwm38",
                labels=names,
                extras={"label_vector": vec},
            )
        )
    return out


def write_mixedwm38(maps: Sequence[WaferMap], path: str | Path) -> Path:
    """Write maps as a MixedWM38 ``.npz`` (``np.savez``: ``arr_0`` maps, ``arr_1`` labels).

    All maps must share one grid shape (the public set is 52×52). Labels must be
    MixedWM38 pattern names or ``none``; unlabelled maps get the all-zero (``none``) row.
    """
    if not maps:
        raise FormatError(path, "nothing to write: no wafer maps")
    shapes = {m.shape for m in maps}
    if len(shapes) > 1:
        raise FormatError(path, f"MixedWM38 needs one grid shape for all maps, got {sorted(shapes)}")
    vectors = np.zeros((len(maps), len(MIXEDWM38_LABELS)), np.int64)
    for i, m in enumerate(maps):
        for name in m.labels:
            if name == "none":
                continue
            if name not in MIXEDWM38_LABELS:
                raise FormatError(path, f"wafer '{m.wafer_id}': label {name!r} is not a MixedWM38 pattern")
            vectors[i, MIXEDWM38_LABELS.index(name)] = 1
    grids = np.stack([np.asarray(m.grid, np.int64) for m in maps])
    with atomic_open(path, "wb") as fh:
        np.savez(fh, grids, vectors)
    return Path(path)
