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
    from matplotlib.figure import Figure

    from fabsight.analytics.stack import StackedMap

ColorBy = Literal["auto", "state", "bins", "counts", "class"]
COLOR_MODES: tuple[str, ...] = ("auto", "state", "bins", "counts", "class")

#: RGB of each die state (index = :class:`DieState`): blank, light grey-blue, signal red.
STATE_RGB = np.array([[255, 255, 255], [214, 222, 232], [200, 30, 45]], dtype=np.uint8)
_OUTLINE = "#4a4a4a"
#: Failing bins: reds, oranges, browns and magentas only (red channel dominant), so a fail bin
#: never reads as a pass (greens) or as a good die (grey-blue).
FAIL_BIN_COLOURS: tuple[str, ...] = (
    "#d62728",
    "#ff7f0e",
    "#8c2d04",
    "#e377c2",
    "#a50f15",
    "#fdae6b",
    "#7a0177",
    "#f16913",
    "#c51b8a",
    "#8c564b",
    "#fb6a4a",
    "#dd3497",
    "#b15928",
    "#ff9896",
    "#67000d",
    "#f768a1",
)
#: Most legend entries drawn; the rest are summed into one "… more" entry so a legend always fits.
MAX_LEGEND = 12
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
    parts = [p for p in (wmap.lot_name, f"#{wmap.wafer_id}" if wmap.wafer_id else "") if p]
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
    if color_by == "class" and (wmap.defects is None or wmap.x_index is None):
        raise FabsightError(wmap.source or None, "this map has no KLARF defects to colour by class")
    if color_by not in COLOR_MODES[1:]:
        raise FabsightError(None, f"unknown colour mode {color_by!r}: use {', '.join(COLOR_MODES)}")
    return color_by


def _bin_picture(wmap: WaferMap) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """RGB by bin code, passing bins in greens and failing bins in distinct warm/other colours."""
    from matplotlib import colormaps

    bins = np.asarray(wmap.bins)
    rgb = np.full((*bins.shape, 3), 255, dtype=np.uint8)
    codes = [int(c) for c in np.unique(bins) if c >= 0]
    passing = [c for c in codes if _bin_passes(wmap, c)]
    failing = [c for c in codes if c not in passing]
    from matplotlib.colors import to_rgb

    greens = colormaps["Greens"](np.linspace(0.35, 0.75, max(len(passing), 1)))
    legend = []
    for i, code in enumerate(passing + failing):
        col = (
            greens[i][:3] if i < len(passing) else to_rgb(FAIL_BIN_COLOURS[(i - len(passing)) % len(FAIL_BIN_COLOURS)])
        )
        rgb[bins == code] = (np.asarray(col) * 255).round().astype(np.uint8)
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
    marks: np.ndarray | None = None,
    marks_label: str = "repeater",
) -> Axes:
    """Draw one wafer map on ``ax`` (a new 5-inch figure when ``None``) and return the axes.

    ``color_by``: ``auto`` uses bins when the map has them, else die states; ``counts``
    shades dies by defect count (with a colour bar); ``class`` draws each KLARF defect at its
    place in its die, coloured by class. ``clusters`` is one label per die (-1 for none)
    drawn as coloured outlines of the labelled dies with their number. ``marks`` is one
    flag per defect (e.g. repeaters), drawn as black crosses over everything else.
    """
    if ax is None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5, 5.3))
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
    grid = np.asarray(wmap.grid)
    mode = _resolve_mode(wmap, color_by)
    extent = (0, grid.shape[1], grid.shape[0], 0)
    if mode == "bins":
        rgb, entries = _bin_picture(wmap)
        handles = _patches(entries)
        ax.imshow(rgb, extent=extent, interpolation="nearest")
    elif mode == "counts":
        handles = []
        _draw_counts(ax, wmap, legend)
    elif mode == "class":
        ax.imshow(map_to_rgb(np.minimum(grid, DieState.GOOD), grid.shape), extent=extent, interpolation="nearest")
        handles = _draw_classes(ax, wmap)
    else:
        ax.imshow(map_to_rgb(grid, grid.shape), extent=extent, interpolation="nearest")
        handles = _patches(
            [
                (_hex(STATE_RGB[DieState.GOOD]), f"good ({wmap.n_good})"),
                (_hex(STATE_RGB[DieState.FAIL]), f"failing ({wmap.n_fail})"),
            ]
        )
    if clusters is not None:
        handles += _draw_clusters(ax, np.asarray(clusters), grid)
    if marks is not None:
        handles += _draw_marks(ax, wmap, np.asarray(marks, dtype=bool), marks_label)
    draw_wafer_frame(ax, grid, wmap.notch)
    # a fixed title position skips matplotlib's tick-bbox search (contact sheets ~1.6x faster)
    text = _title(wmap) if title is None else title
    small = 7 if max(map(len, text.splitlines() or [""])) <= 26 else 6  # a contact-sheet cell is ~2.4 in wide
    ax.set_title(text, fontsize=9 if legend else small, y=1.0, pad=3)
    if legend and handles:
        ax.legend(
            handles=_fit_legend(handles),
            loc="upper center",
            bbox_to_anchor=(0.5, 0.0),
            ncol=min(3, len(handles)),
            fontsize=7,
            frameon=False,
        )
    return ax


def draw_wafer_frame(ax: Axes, grid: np.ndarray, notch: str) -> None:
    """The wafer edge (an ellipse holding every on-wafer die), the notch, and round axes limits."""
    from matplotlib.patches import Ellipse, Polygon

    cx, cy, rx, ry = _wafer_outline(grid)
    ax.add_patch(Ellipse((cx, cy), 2 * rx, 2 * ry, fill=False, lw=1.2, edgecolor=_OUTLINE))
    dx, dy = _NOTCH_DIRECTION.get(notch, _NOTCH_DIRECTION["down"])
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


def _patches(entries: Sequence[tuple[str, str]]) -> list:
    from matplotlib.patches import Patch

    return [Patch(color=c, label=text) for c, text in entries]


def _fit_legend(handles: list) -> list:
    """At most :data:`MAX_LEGEND` entries, so the legend stays inside the picture's margin."""
    if len(handles) <= MAX_LEGEND:
        return handles
    from matplotlib.patches import Patch

    rest = len(handles) - (MAX_LEGEND - 1)
    return [*handles[: MAX_LEGEND - 1], Patch(facecolor="none", edgecolor="none", label=f"… and {rest} more")]


def horizontal_colorbar(ax: Axes, image: object, label: str, ticks: Sequence[float], fmt: object = None) -> None:
    """A colour bar with tick values under the map, inside the axes' share of the picture
    (a side bar would fall off a picture laid out for the map alone)."""
    bar_ax = ax.inset_axes((0.2, -0.05, 0.6, 0.035))
    bar = ax.figure.colorbar(image, cax=bar_ax, orientation="horizontal", ticks=list(ticks), format=fmt)
    bar.ax.tick_params(labelsize=7, length=2, pad=1)
    bar.set_label(label, fontsize=7, labelpad=1)


def count_ticks(vmax: float) -> list[float]:
    """Readable tick values for a log scale from 1 to ``vmax``: 1, 2, 5, 10, ... over at most two
    decades, else the decades alone; ``vmax`` itself when it lies well beyond the last tick."""
    decades = int(math.log10(max(vmax, 1)))
    steps = (1, 2, 5) if decades < 2 else (1,)
    ticks = [float(m * 10**e) for e in range(decades + 1) for m in steps if m * 10**e <= vmax]
    if vmax >= ticks[-1] * (1.5 if decades < 2 else 3):
        ticks.append(float(vmax))
    return ticks


def _draw_counts(ax: Axes, wmap: WaferMap, legend: bool) -> None:
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, LogNorm

    grid = np.asarray(wmap.grid)
    extent = (0, grid.shape[1], grid.shape[0], 0)
    counts = np.asarray(wmap.counts, dtype=float)
    ax.imshow(map_to_rgb(np.minimum(grid, DieState.GOOD), grid.shape), extent=extent, interpolation="nearest")
    shaded = np.ma.masked_where((counts <= 0) | (grid == DieState.OFF), counts)
    if not shaded.count():
        return
    vmax = max(float(shaded.max()), 2.0)
    cmap = ListedColormap(colormaps["YlOrRd"](np.linspace(0.35, 1, 256)))  # no near-white shades
    image = ax.imshow(shaded, extent=extent, interpolation="nearest", cmap=cmap, norm=LogNorm(vmin=1, vmax=vmax))
    if legend:
        horizontal_colorbar(ax, image, "defects per die", count_ticks(vmax), "{x:,.0f}")


def defect_positions(wmap: WaferMap) -> tuple[np.ndarray, np.ndarray]:
    """Grid coordinates (x = column, y = row, as the map is drawn) of each defect of ``wmap``:
    its die's cell plus its place inside the die (``XREL``/``YREL`` over the die pitch; the die
    centre when unknown)."""
    d = wmap.defects
    assert d is not None and wmap.x_index is not None and wmap.y_index is not None
    cols = _cell_of(np.asarray(wmap.x_index), d.xindex)
    rows = _cell_of(np.asarray(wmap.y_index), d.yindex)
    pitch = wmap.die_pitch or (float("nan"), float("nan"))
    fx = np.clip(np.nan_to_num(d.xrel / pitch[0], nan=0.5), 0, 1)
    fy = np.clip(np.nan_to_num(d.yrel / pitch[1], nan=0.5), 0, 1)
    x_left = len(wmap.x_index) < 2 or wmap.x_index[1] > wmap.x_index[0]  # x index grows to the right
    y_up = len(wmap.y_index) < 2 or wmap.y_index[1] < wmap.y_index[0]  # row 0 holds the largest y index
    return cols + (fx if x_left else 1 - fx), rows + (1 - fy if y_up else fy)


def _cell_of(index: np.ndarray, values: np.ndarray) -> np.ndarray:
    order = np.argsort(index, kind="stable")
    pos = np.clip(np.searchsorted(index[order], values), 0, len(index) - 1)
    return order[pos].astype(np.float64)


def _draw_classes(ax: Axes, wmap: WaferMap) -> list:
    """Each defect as a dot at its place, one colour per class (the most frequent first)."""
    from matplotlib import colormaps
    from matplotlib.lines import Line2D

    d = wmap.defects
    assert d is not None
    if not len(d):
        return []
    xs, ys = defect_positions(wmap)
    codes, counts = np.unique(d.class_number, return_counts=True)
    order = np.argsort(-counts, kind="stable")
    names = wmap.extras.get("class_names") or {}
    palette = colormaps["tab10"]
    handles = []
    size = 4 if len(d) > 2000 else 9
    for rank, i in enumerate(order):
        code = int(codes[i])
        colour = palette(rank % 10) if rank < MAX_LEGEND - 1 else "#555555"
        pick = d.class_number == code
        ax.scatter(xs[pick], ys[pick], s=size, color=colour, linewidths=0, zorder=3)
        name = names.get(code, "unclassified" if code < 0 else f"class {code}")
        label = f"{code} {name}" if code >= 0 and code in names else name
        handles.append(Line2D([], [], ls="", marker="o", color=colour, label=f"{label} ({int(counts[i])})"))
    return handles


def _draw_marks(ax: Axes, wmap: WaferMap, marks: np.ndarray, label: str) -> list:
    """Black crosses on the flagged defects; one legend entry with how many there are."""
    from matplotlib.lines import Line2D

    if wmap.defects is None or marks.shape != (len(wmap.defects),):
        raise ValueError("marks must hold one flag per defect of the map")
    if not marks.any():
        return []
    xs, ys = defect_positions(wmap)
    ax.scatter(xs[marks], ys[marks], s=28, marker="x", color="black", linewidths=1.2, zorder=4)
    return [Line2D([], [], ls="", marker="x", color="black", label=f"{label} ({int(marks.sum())})")]


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


def render_figure(
    maps: WaferMap | Sequence[WaferMap],
    *,
    clusters: np.ndarray | Sequence[np.ndarray | None] | None = None,
    cols: int | None = None,
    color_by: ColorBy = "auto",
    marks: Sequence[np.ndarray | None] | None = None,
) -> Figure:
    """One map (with legend or colour bar) or a contact sheet of many, on an Agg figure.

    ``clusters`` is one label array for a single map, or a sequence with one entry (or
    ``None``) per map; ``marks`` one per-defect flag array (or ``None``) per map. The figure
    size depends only on the number of maps and ``cols``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    maps = [maps] if isinstance(maps, WaferMap) else list(maps)
    if not maps:
        raise FabsightError(None, "nothing to render: no wafer maps")
    per_map = _per_map(clusters, len(maps))
    per_marks = list(marks) if marks is not None else [None] * len(maps)
    if len(per_map) != len(maps) or len(per_marks) != len(maps):
        raise ValueError(f"got {len(per_map)} cluster and {len(per_marks)} mark arrays for {len(maps)} maps")
    n = len(maps)
    ncols = max(1, min(cols or math.ceil(math.sqrt(n)), n))
    nrows = math.ceil(n / ncols)
    cell = 5.0 if n == 1 else (2.4 if n <= 36 else 1.6)
    fig = Figure(figsize=(ncols * cell, nrows * cell * 1.1), dpi=100)
    FigureCanvasAgg(fig)
    items = list(zip(maps, per_map, per_marks, strict=True))
    for i, (m, c, k) in enumerate(track(items, "rendering wafer maps")):
        render_map(m, fig.add_subplot(nrows, ncols, i + 1), clusters=c, color_by=color_by, legend=n == 1, marks=k)
    if n == 1:  # the bottom 0.77 in hold the legend (4 rows) or the colour bar with its ticks and label
        fig.subplots_adjust(left=0.02, right=0.98, top=0.93, bottom=0.14)
    else:
        _sheet_layout(fig, nrows, cell)
    return fig


def _per_map(clusters: np.ndarray | Sequence[np.ndarray | None] | None, n: int) -> list[np.ndarray | None]:
    if clusters is None or isinstance(clusters, np.ndarray):
        return [clusters] + [None] * (n - 1)
    return list(clusters)


def _sheet_layout(fig: Figure, nrows: int, cell: float) -> None:
    """Fixed room in inches above each map for its two-line title, whatever the row count."""
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


def render_png(
    maps: WaferMap | Sequence[WaferMap],
    path: str | os.PathLike[str],
    *,
    clusters: np.ndarray | Sequence[np.ndarray | None] | None = None,
    cols: int | None = None,
    color_by: ColorBy = "auto",
    marks: Sequence[np.ndarray | None] | None = None,
) -> Path:
    """Write :func:`render_figure` of ``maps`` to a PNG, atomically."""
    target = Path(path)
    if target.suffix.lower() != ".png":
        raise FabsightError(target, "output picture must be a .png file")
    if isinstance(maps, WaferMap) or maps:
        fig = render_figure(maps, clusters=clusters, cols=cols, color_by=color_by, marks=marks)
    else:
        raise FabsightError(target, "nothing to render: no wafer maps")
    return save_png(fig, target)


def save_png(fig: Figure, target: Path) -> Path:
    """Write a figure to a PNG atomically (a crash leaves the old file, never half a picture)."""
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png")
    return target


# ----------------------------------------------------------------------------- stacked maps


def render_stack(stack: StackedMap, ax: Axes, *, legend: bool = True) -> Axes:
    """A stacked map: each die position shaded by how often it fails, with a colour bar in %."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    freq = np.ma.masked_invalid(stack.frequency)
    vmax = max(float(freq.max()) if freq.count() else 0.0, 1.0 / max(stack.n_wafers, 1))
    cmap = ListedColormap(colormaps["YlOrRd"](np.linspace(0.05, 1, 256)))
    h, w = freq.shape
    image = ax.imshow(freq, extent=(0, w, h, 0), interpolation="nearest", cmap=cmap, norm=Normalize(0, vmax))
    on = stack.on_wafer.astype(np.uint8)  # DieState: 0 off, 1 on-wafer (GOOD) for the outline
    draw_wafer_frame(ax, on, stack.notch)
    ax.set_title(f"{stack.scope} · {stack.what}", fontsize=9, y=1.0, pad=3)
    if legend:
        ticks = MaxNLocator(nbins=5).tick_values(0, vmax)
        ticks = [t for t in ticks if 0 <= t <= vmax + 1e-12]
        horizontal_colorbar(
            ax,
            image,
            "share of the 1 wafer" if stack.n_wafers == 1 else f"share of the {stack.n_wafers} wafers",
            ticks,
            PercentFormatter(1.0, decimals=0),
        )
    return ax


def render_stack_png(stacks: Sequence[StackedMap], path: str | os.PathLike[str], *, cols: int | None = None) -> Path:
    """Stacked maps side by side (the fail stack, then one per bin), each with its colour bar."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    target = Path(path)
    if target.suffix.lower() != ".png":
        raise FabsightError(target, "output picture must be a .png file")
    n = len(stacks)
    ncols = max(1, min(cols or math.ceil(math.sqrt(n)), n))
    nrows = math.ceil(n / ncols)
    cell = 5.0 if n == 1 else 3.6
    fig = Figure(figsize=(ncols * cell, nrows * cell * 1.1), dpi=100)
    FigureCanvasAgg(fig)
    for i, stack in enumerate(stacks):
        render_stack(stack, fig.add_subplot(nrows, ncols, i + 1))
    fig.subplots_adjust(
        left=0.02,
        right=0.98,
        top=1 - 0.35 / (nrows * cell * 1.1),
        bottom=0.75 / (nrows * cell * 1.1),
        wspace=0.06,
        hspace=1.1 / cell,
    )
    return save_png(fig, target)
