"""Self-contained HTML lot report: control charts, alarms, and thumbnails of each lot.

Everything is embedded (charts and thumbnails as base64 PNG) so the file can be mailed
or attached to a ticket and still open offline. It is written atomically: a report that
is being regenerated never appears half-written to someone who has it open.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.monitor.charts import ControlChart
from fabsight.monitor.lots import MonitorResult
from fabsight.types import WaferMap
from fabsight.utils.atomic import write_text

#: Thumbnails per lot (worst wafers first): enough to see the pattern, small enough to mail.
THUMBNAILS_PER_LOT = 8
_THUMB_PX = 96



def _png_b64(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _chart_png(ch: ControlChart) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = np.arange(len(ch.lots))
    ax.axvspan(-0.5, ch.n_baseline - 0.5, color="#eeeeee", label="baseline")
    ax.step(x, ch.ucl, where="mid", color="#c8102e", lw=1, label="UCL / LCL")
    ax.step(x, ch.lcl, where="mid", color="#c8102e", lw=1)
    ax.axhline(ch.center, color="#555555", lw=1, ls="--", label="centre")
    ax.plot(x, ch.value, "o-", color="#1f4e79", ms=4)
    out = (ch.value > ch.ucl) | (ch.value < ch.lcl)
    out[: ch.n_baseline] = False
    ax.plot(x[out], ch.value[out], "o", color="#c8102e", ms=7, label="beyond limits")
    if len(ch.lots) <= 40:
        ax.set_xticks(x, ch.lots, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel(ch.name)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _png_b64(fig)


def _thumb_png(grid: np.ndarray) -> str:
    from PIL import Image

    from fabsight.report.render import map_to_rgb

    buf = io.BytesIO()
    Image.fromarray(map_to_rgb(grid, _THUMB_PX)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def write_report(result: MonitorResult, maps: Sequence[WaferMap], path: str | Path) -> Path:
    """Render ``result`` (from :func:`monitor_lots` on ``maps``) as one HTML file."""
    from jinja2 import Environment, PackageLoader

    lots = []
    for lot in result.lots:
        row = result.lot_summary(lot, maps)
        worst = sorted(lot.wafers, key=lambda i: -maps[i].n_fail / max(maps[i].n_dies, 1))[:THUMBNAILS_PER_LOT]
        row["thumbs"] = [
            {
                "wafer": maps[i].wafer_id or str(i),
                "fail": maps[i].n_fail / max(maps[i].n_dies, 1),
                "png": _thumb_png(maps[i].grid),
            }
            for i in worst
        ]
        lots.append(row)
    charts = [
        {"name": c.name, "kind": c.kind, "center": c.center, "sigma_z": c.sigma_z, "png": _chart_png(c)}
        for c in result.charts
    ]
    env = Environment(loader=PackageLoader("fabsight.monitor", "templates"), autoescape=True)
    html = env.get_template("lot_report.html").render(
        n_lots=len(lots),
        n_wafers=len(maps),
        n_baseline=result.n_baseline,
        time_sources=sorted({lot.time_source for lot in result.lots}),
        alarms=result.alarms,
        alarm_lots=len({a.lot for a in result.alarms}),
        charts=charts,
        lots=lots,
    )
    write_text(path, html)
    return Path(path)
