"""The main job on an embedded default: ``fabsight demo`` (what ``make demo`` runs).

It reads the example lots shipped with the package (KLARF, STDF and G85 files written by
fabsight's own writers), or the files a user names, renders every wafer and writes a
self-contained HTML report plus a JSON summary. Each step is an ordinary library call, so
the demo doubles as an end-to-end example of the API.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fabsight.errors import FabsightError
from fabsight.types import WaferMap
from fabsight.utils.atomic import atomic_dir, write_json
from fabsight.utils.progress import track

#: Where the example lots live inside the installed package.
EXAMPLES = "examples/demo_lot"


def example_files() -> list[Path]:
    """The example lot files shipped with fabsight (KLARF, STDF, G85), sorted by name."""
    root = Path(str(resources.files("fabsight").joinpath(EXAMPLES)))
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise FabsightError(root, "the packaged example lot is missing (broken install?)")
    return files


@dataclass
class WaferRow:
    """One wafer's line in the report."""

    wmap: WaferMap
    picture: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"source": Path(self.wmap.source).name, "format": self.wmap.format, **self.wmap.summary(), **self.facts}


def _png_data_url(wmap: WaferMap) -> str:
    """A small inline PNG so the report is one file that opens anywhere."""
    from PIL import Image

    from fabsight.report.render import map_to_rgb

    buf = io.BytesIO()
    Image.fromarray(map_to_rgb(wmap.grid, 120)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _read(files: Sequence[Path]) -> list[WaferMap]:
    from fabsight.io import iter_maps

    maps = list(iter_maps(track(files, "reading")))
    if not maps:
        raise FabsightError(files[0] if files else None, "no wafer maps in the given files")
    return maps


def _lots(rows: list[WaferRow]) -> list[dict[str, Any]]:
    by_lot: dict[tuple[str, str], list[WaferRow]] = {}
    for r in rows:
        by_lot.setdefault((r.wmap.lot_id or "?", r.wmap.format), []).append(r)
    out = []
    for (lot, fmt), members in by_lot.items():
        good = sum(r.wmap.n_good for r in members)
        dies = sum(r.wmap.n_dies for r in members)
        out.append({"lot": lot, "format": fmt, "wafers": len(members), "yield": good / dies if dies else None})
    return out


def run_demo(out_dir: str | Path, files: Sequence[str | Path] | None = None) -> dict[str, Any]:
    """Read, render and report; returns the summary also written to ``OUT/summary.json``."""
    import jinja2

    from fabsight.report.render import render_png

    paths = [Path(f) for f in files] if files else example_files()
    maps = _read(paths)
    rows = [WaferRow(m) for m in maps]
    for r in track(rows, "rendering"):
        r.picture = _png_data_url(r.wmap)
    summary = {
        "inputs": [str(p) for p in paths],
        "wafers": len(rows),
        "lots": _lots(rows),
        "results": [r.to_dict() for r in rows],
    }
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("fabsight.report", "templates"), autoescape=jinja2.select_autoescape()
    )
    html = env.get_template("demo.html").render(summary=summary, rows=rows)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        render_png(maps, tmp / "wafers.png")
        (tmp / "report.html").write_text(html, encoding="utf-8")
        write_json(tmp / "summary.json", summary)
    summary["report"] = str(out_dir / "report.html")
    return summary
