"""PNG pictures the dashboard and API serve: thumbnails, wafer maps with clusters, lot trends.

Thumbnails use :func:`fabsight.report.render.map_to_rgb` (a palette lookup, no matplotlib);
the cluster view and the lot trend chart draw with matplotlib's Agg canvas, which holds no
global state and is safe in the server's worker threads.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np

from fabsight.store.queries import LotSummary
from fabsight.types import WaferMap


def _png(fig_or_array: object, **savefig: object) -> bytes:
    buf = io.BytesIO()
    if isinstance(fig_or_array, np.ndarray):
        from PIL import Image

        Image.fromarray(fig_or_array).save(buf, format="PNG")
    else:
        fig_or_array.savefig(buf, format="png", **savefig)  # type: ignore[attr-defined]
    return buf.getvalue()


def thumbnail_png(grid: np.ndarray, size: int) -> bytes:
    from fabsight.report.render import map_to_rgb

    return _png(map_to_rgb(grid, size))


def cluster_grid(wmap: WaferMap) -> np.ndarray:
    """One cluster id per die (-1 for none) from :func:`fabsight.assist.clustering.cluster_dies`."""
    from fabsight.assist.clustering import cluster_dies
    from fabsight.assist.clustering import cluster_grid as grid_of

    return grid_of(wmap, cluster_dies(wmap))


def clusters_png(wmap: WaferMap) -> bytes:
    """The wafer drawn as in reports (outline, notch, legend) with its die clusters outlined."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fabsight.report.render import render_map

    fig = Figure(figsize=(4.2, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    render_map(wmap, fig.add_subplot(), clusters=cluster_grid(wmap))
    fig.subplots_adjust(left=0.02, right=0.98, top=0.92, bottom=0.14)
    return _png(fig)


def lot_trend_png(lots: Sequence[LotSummary]) -> bytes:
    """Mean wafer yield per lot and source, one line per source (top), and each lot's pattern mix over its
    results as stacked shares (bottom). Inspection and sort yields are different measurements, so
    they are never averaged into one line."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(5.0, 0.5 * len(lots) + 2.0), 5.2), dpi=100)
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1, 1.3]})
    x = np.arange(len(lots))
    sources = list(dict.fromkeys(src.source for s in lots for src in s.sources))
    for source in sources:
        per_lot = [{src.source: src.mean_yield for src in s.sources}.get(source) for s in lots]
        top.plot(x, [np.nan if y is None else 100 * y for y in per_lot], marker="o", label=source)
    top.set_ylabel("mean yield %")
    top.grid(alpha=0.3)
    if sources:
        top.legend(fontsize=7, loc="best")
    patterns = sorted({p for s in lots for p in s.patterns})
    palette = colormaps["tab10"]
    base = np.zeros(len(lots))
    for i, p in enumerate(patterns):
        share = np.array([s.patterns.get(p, 0) / s.results for s in lots])
        bottom.bar(x, share, bottom=base, color=palette(i % 10), label=p)
        base += share
    bottom.set_ylabel("share of results")
    bottom.set_ylim(0, 1)
    bottom.set_xticks(x, [s.name for s in lots], rotation=45, ha="right", fontsize=8)
    if patterns:
        bottom.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return _png(fig, bbox_inches="tight")  # the legend beside the axes is kept in the picture
