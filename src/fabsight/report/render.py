"""Wafer-map pictures as yield engineers expect them.

A round wafer outline with the notch where the map says, blank off-wafer cells, light good
dies and coloured failing dies; bin maps get one colour per bin with a legend, defect-count
maps a sequential shade with a colour bar. A cluster overlay (one label per die, -1 for
noise) is there for explanations that point at a region. Everything draws on a
matplotlib ``Figure`` with the Agg canvas (no pyplot state, safe in servers and workers).

:func:`map_to_rgb` is the fast path for galleries and thumbnails: a palette lookup with
no matplotlib at all.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from fabsight.errors import FabsightError
from fabsight.types import DieState, WaferMap
from fabsight.utils.atomic import atomic_path
from fabsight.utils.progress import track

if TYPE_CHECKING:
    from matplotlib.axes import Axes

ColorBy = Literal["auto", "state", "bins", "counts"]

#: RGB of each die state (index = :class:`DieState`): blank, light grey-blue, signal red.
STATE_RGB = np.array([[255, 255, 255], [214, 222, 232], [200, 30, 45]], dtype=np.uint8)
_OUTLINE = "#4a4a4a"
#: Unit direction of the notch from the wafer centre in grid coordinates (rows grow downwards).
_NOTCH_DIRECTION = {"down": (0.0, 1.0), "up": (0.0, -1.0), "left": (-1.0, 0.0), "right": (1.0, 0.0)}


def map_to_rgb(grid: np.ndarray, size: int | tuple[int, int]) -> np.ndarray:
    """(rows, cols, 3) uint8 picture of a 0/1/2 grid, nearest-neighbour scaled to ``size``.

    An int ``size`` gives a square picture, which also makes the wafer of a non-square die
    grid (non-square dies) round, as it is on silicon.
    """
    grid = np.asarray(grid)
    if grid.ndim != 2 or grid.size == 0:
        raise ValueError(f"wafer grid must be a non-empty 2-D array, got shape {grid.shape}")
    if grid.min() < 0 or grid.max() > DieState.FAIL:
        raise ValueError("wafer grid values must be 0 (off), 1 (good) or 2 (fail)")
    rows, cols = (size, size) if isinstance(size, int) else size
    if rows < 1 or cols < 1:
        raise ValueError(f"picture size must be positive, got {size!r}")
    r = np.arange(rows) * grid.shape[0] // rows
    c = np.arange(cols) * grid.shape[1] // cols
    return STATE_RGB[grid[r[:, None], c[None, :]]]


def _wafer_outline(grid: np.ndarray) -> tuple[float, float, float, float]:
    """Centre and semi-axes (grid units) of the wafer edge: the smallest ellipse, centred on the
    dies' bounding box with its aspect, that holds every on-wafer die whole (probed dies are
    whole dies, so the real edge lies at or beyond it)."""
    rows, cols = np.nonzero(grid != DieState.OFF)
    if rows.size == 0:
        h, w = grid.shape
        return w / 2, h / 2, w / 2, h / 2
    cx, cy = (cols.min() + cols.max() + 1) / 2, (rows.min() + rows.max() + 1) / 2
    rx, ry = (cols.max() + 1 - cols.min()) / 2, (rows.max() + 1 - rows.min()) / 2
    corner_x = np.concatenate([cols, cols + 1, cols, cols + 1]) - cx
    corner_y = np.concatenate([rows, rows, rows + 1, rows + 1]) - cy
    scale = float(np.sqrt((corner_x / rx) ** 2 + (corner_y / ry) ** 2).max())
    return float(cx), float(cy), rx * scale, ry * scale


def _title(wmap: WaferMap) -> str:
    parts = [p for p in (wmap.lot_id, f"#{wmap.wafer_id}" if wmap.wafer_id else "") if p]
    if wmap.n_dies:
        parts.append(f"yield {100 * wmap.yield_:.1f}%")
    line = " · ".join(parts)
    return f"{line}\n{'+'.join(wmap.labels)}" if wmap.labels else line  # labels get their own line


def _hex(rgb: np.ndarray) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def _resolve_mode(wmap: WaferMap, color_by: ColorBy) -> str:
    if color_by == "auto":
        return "bins" if wmap.bins is not None else "state"
    if color_by == "bins" and wmap.bins is None:
        raise FabsightError(wmap.source or None, "this map has no bin codes to colour by")
    if color_by == "counts" and wmap.counts is None:
        raise FabsightError(wmap.source or None, "this map has no per-die defect counts to shade by")
    if color_by not in ("state", "bins", "counts"):
        raise FabsightError(None, f"unknown colour mode {color_by!r}: use auto, state, bins or counts")
    return color_by


def _bin_picture(wmap: WaferMap) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """RGB by bin code, passing bins in greens and failing bins in distinct warm/other colours."""
    from matplotlib import colormaps

    bins = np.asarray(wmap.bins)
    rgb = np.full((*bins.shape, 3), 255, dtype=np.uint8)
    codes = [int(c) for c in np.unique(bins) if c >= 0]
    passing = [c for c in codes if _bin_passes(wmap, c)]
    failing = [c for c in codes if c not in passing]
    greens = colormaps["Greens"](np.linspace(0.35, 0.75, max(len(passing), 1)))
    others = colormaps["tab20"](np.linspace(0, 1, 20))
    others = [col for i, col in enumerate(others) if i not in (4, 5)]  # tab20's greens mean "pass" here
    legend = []
    for i, code in enumerate(passing + failing):
        col = greens[i] if i < len(passing) else others[(i - len(passing)) % len(others)]
        rgb[bins == code] = (np.asarray(col[:3]) * 255).astype(np.uint8)
        definition = wmap.bin_definitions.get(code)
        name = f" {definition.name}" if definition and definition.name else ""
        status = "pass" if code in passing else "fail"
        legend.append((_hex(rgb[bins == code][0]), f"bin {code}{name} ({status}, {int((bins == code).sum())})"))
    return rgb, legend


def _bin_passes(wmap: WaferMap, code: int) -> bool:
    """Whether a bin is a passing bin: its definition says so, else its dies are good on the grid."""
    definition = wmap.bin_definitions.get(code)
    if definition is not None:
        return definition.passed
    return bool((np.asarray(wmap.grid)[np.asarray(wmap.bins) == code] == DieState.GOOD).all())


def render_map(
    wmap: WaferMap,
    ax: Axes | None = None,
    *,
    clusters: np.ndarray | None = None,
    title: str | None = None,
    color_by: ColorBy = "auto",
    legend: bool = True,
) -> Axes:
    """Draw one wafer map on ``ax`` (a new 5-inch figure when ``None``) and return the axes.

    ``color_by``: ``auto`` uses bins when the map has them, else die states; ``counts``
    shades dies by defect count. ``clusters`` is one label per die (-1 for none) drawn as
    coloured outlines of the labelled dies with their number.
    """
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, LogNorm
    from matplotlib.patches import Ellipse, Patch, Polygon

    if ax is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5, 5.3))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    grid = np.asarray(wmap.grid)
    h, w = grid.shape
    mode = _resolve_mode(wmap, color_by)
    handles: list[Patch] = []
    extent = (0, w, h, 0)
    if mode == "bins":
        rgb, entries = _bin_picture(wmap)
        handles = [Patch(color=c, label=text) for c, text in entries]
        ax.imshow(rgb, extent=extent, interpolation="nearest")
    elif mode == "counts":
        counts = np.asarray(wmap.counts, dtype=float)
        ax.imshow(map_to_rgb(np.minimum(grid, DieState.GOOD), grid.shape), extent=extent, interpolation="nearest")
        shaded = np.ma.masked_where((counts <= 0) | (grid == DieState.OFF), counts)
        if shaded.count():
            norm = LogNorm(vmin=1, vmax=max(float(shaded.max()), 2.0))
            cmap = ListedColormap(colormaps["YlOrRd"](np.linspace(0.35, 1, 256)))  # no near-white shades
            image = ax.imshow(shaded, extent=extent, interpolation="nearest", cmap=cmap, norm=norm)
            if legend:
                ax.figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="defects per die")
    else:
        ax.imshow(map_to_rgb(grid, grid.shape), extent=extent, interpolation="nearest")
        handles = [
            Patch(color=_hex(STATE_RGB[DieState.GOOD]), label=f"good ({wmap.n_good})"),
            Patch(color=_hex(STATE_RGB[DieState.FAIL]), label=f"failing ({wmap.n_fail})"),
        ]
    if clusters is not None:
        handles += _draw_clusters(ax, np.asarray(clusters), grid)
    cx, cy, rx, ry = _wafer_outline(grid)
    ax.add_patch(Ellipse((cx, cy), 2 * rx, 2 * ry, fill=False, lw=1.2, edgecolor=_OUTLINE))
    dx, dy = _NOTCH_DIRECTION.get(wmap.notch, _NOTCH_DIRECTION["down"])
    depth, half = 0.07, 0.07  # notch size as a fraction of the wafer radius
    tip = (cx + dx * rx * (1 - depth), cy + dy * ry * (1 - depth))
    base = [
        (cx + (dx - dy * half) * rx, cy + (dy + dx * half) * ry),
        (cx + (dx + dy * half) * rx, cy + (dy - dx * half) * ry),
    ]
    ax.add_patch(Polygon([*base, tip], closed=True, facecolor=_OUTLINE, edgecolor=_OUTLINE))
    ax.set_xlim(cx - rx - 0.5, cx + rx + 0.5)
    ax.set_ylim(cy + ry + 0.5, cy - ry - 0.5)
    ax.set_aspect(rx / ry)  # equal displayed width and height: a round wafer even for non-square dies
    ax.set_axis_off()
    # a fixed title position skips matplotlib's tick-bbox search (contact sheets ~1.6x faster)
    text = _title(wmap) if title is None else title
    small = 7 if max(map(len, text.splitlines() or [""])) <= 26 else 6  # a contact-sheet cell is ~2.4 in wide
    ax.set_title(text, fontsize=9 if legend else small, y=1.0, pad=3)
    if legend and handles:
        ax.legend(
            handles=handles,
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=min(3, len(handles)),
            fontsize=7,
            frameon=False,
        )
    return ax


def _draw_clusters(ax: Axes, clusters: np.ndarray, grid: np.ndarray) -> list:
    """Outline each labelled cluster and number it; returns legend handles."""
    from matplotlib import colormaps
    from matplotlib.patches import Patch

    if clusters.shape != grid.shape:
        raise ValueError(f"clusters must have the grid's shape {grid.shape}, got {clusters.shape}")
    palette = colormaps["tab10"]
    handles = []
    for k in (int(c) for c in np.unique(clusters) if c >= 0):
        colour = palette(k % 10)
        inside = (clusters == k).astype(float)
        ax.contour(
            np.arange(grid.shape[1]) + 0.5,
            np.arange(grid.shape[0]) + 0.5,
            inside,
            levels=[0.5],
            colors=[colour],
            linewidths=1.5,
        )
        rows, cols = np.nonzero(clusters == k)
        ax.text(
            cols.mean() + 0.5,
            rows.mean() + 0.5,
            str(k),
            color=colour,
            fontsize=8,
            fontweight="bold",
            ha="center",
            va="center",
        )
        handles.append(Patch(facecolor="none", edgecolor=colour, label=f"cluster {k} ({rows.size} dies)"))
    return handles


def render_png(
    maps: WaferMap | Sequence[WaferMap],
    path: str | os.PathLike[str],
    *,
    clusters: np.ndarray | Sequence[np.ndarray | None] | None = None,
    cols: int | None = None,
    color_by: ColorBy = "auto",
) -> Path:
    """Write one map (with legend) or a contact sheet of many to a PNG, atomically.

    ``clusters`` is one label array for a single map, or a sequence with one entry (or
    ``None``) per map. The picture size depends only on the number of maps and ``cols``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    target = Path(path)
    if target.suffix.lower() != ".png":
        raise FabsightError(target, "output picture must be a .png file")
    maps = [maps] if isinstance(maps, WaferMap) else list(maps)
    if not maps:
        raise FabsightError(target, "nothing to render: no wafer maps")
    if clusters is None or isinstance(clusters, np.ndarray):
        per_map = [clusters] + [None] * (len(maps) - 1)
    else:
        per_map = list(clusters)
    if len(per_map) != len(maps):
        raise ValueError(f"got {len(per_map)} cluster arrays for {len(maps)} maps")
    n = len(maps)
    ncols = max(1, min(cols or math.ceil(math.sqrt(n)), n))
    nrows = math.ceil(n / ncols)
    cell = 5.0 if n == 1 else (2.4 if n <= 36 else 1.6)
    fig = Figure(figsize=(ncols * cell, nrows * cell * 1.1), dpi=100)
    FigureCanvasAgg(fig)
    for i, (m, c) in enumerate(track(list(zip(maps, per_map, strict=True)), "rendering wafer maps")):
        render_map(m, fig.add_subplot(nrows, ncols, i + 1), clusters=c, color_by=color_by, legend=n == 1)
    if n == 1:
        fig.subplots_adjust(left=0.02, right=0.98, top=0.93, bottom=0.1)
    else:  # fixed room in inches above each map for its two-line title, whatever the row count
        height, title, margin = nrows * cell * 1.1, 0.38, 0.05
        axes_height = (height - margin - nrows * title) / nrows
        fig.subplots_adjust(
            left=0.01,
            right=0.99,
            top=1 - title / height,
            bottom=margin / height,
            wspace=0.04,
            hspace=title / axes_height,
        )
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target
