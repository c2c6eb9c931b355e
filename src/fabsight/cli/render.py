"""``fabsight render``: wafer-map files → one PNG (a single map, a contact sheet or a stacked map)."""

from __future__ import annotations

from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, StrictOpt, emit, out, require_read, warn
from fabsight.errors import FabsightError

if TYPE_CHECKING:
    from fabsight.io import ReadLog
    from fabsight.types import WaferMap


def render(
    files: Annotated[list[str], typer.Argument(help="Wafer data files, folders or glob patterns (any format).")],
    png: Annotated[Path, typer.Option("--out", help="PNG to write.")],
    cols: Annotated[int | None, typer.Option("--cols", min=1, help="Maps per row of a contact sheet.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Draw at most this many maps.")] = 100,
    color_by: Annotated[
        str,
        typer.Option(
            "--color-by", help="auto (bins when present), state, bins, counts or class (KLARF defects by class)."
        ),
    ] = "auto",
    clusters: Annotated[
        bool,
        typer.Option("--clusters", help="Outline spatial clusters: of KLARF defects (µm), else of failing dies."),
    ] = False,
    stack: Annotated[
        bool,
        typer.Option(
            "--stack",
            help="Stack the maps (one die grid): how often each die position fails, and per bin for sort data.",
        ),
    ] = False,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Draw wafer maps: round outline, notch, failing dies, bin colours, defect counts or classes."""
    from fabsight.io import ReadLog, iter_maps
    from fabsight.report.render import COLOR_MODES, render_png

    if color_by not in COLOR_MODES:
        raise FabsightError("--color-by", f"{color_by!r} is not {', '.join(COLOR_MODES[:-1])} or {COLOR_MODES[-1]}")
    if stack and clusters:
        raise FabsightError("--stack", "a stacked map has no clusters to outline: drop --clusters")
    if png.suffix.lower() != ".png":
        raise FabsightError(png, "output picture must be a .png file")
    log = ReadLog(strict=strict)
    maps = list(islice(iter_maps(files, log), limit + 1))
    truncated = len(maps) > limit
    maps = maps[:limit]
    require_read(bool(maps), log, files[0], "no wafer maps found")
    if truncated:
        warn(f"{'stacking' if stack else 'drawing'} only the first {limit} maps (raise --limit to use more)")
    if stack:
        _render_stack(maps, png, cols, truncated, as_json, log)
        return
    labels = None
    if clusters:
        from fabsight.assist.clustering import cluster_defects, cluster_dies, cluster_grid, defect_cluster_grid

        labels = [
            defect_cluster_grid(m, cluster_defects(m.defects, die_pitch=m.die_pitch))
            if m.defects is not None and len(m.defects) and m.x_index is not None
            else cluster_grid(m, cluster_dies(m))
            for m in maps
        ]
    render_png(maps, png, cols=cols, color_by=color_by, clusters=labels)  # type: ignore[arg-type]
    from PIL import Image

    with Image.open(png) as im:
        width, height = im.size
    result: dict[str, Any] = {"out": str(png), "maps": len(maps), "truncated": truncated, "pixels": [width, height]}
    if labels is not None:
        result["clusters"] = [int(g.max()) + 1 for g in labels]

    def human(r: dict[str, Any]) -> None:
        more = " (more were left out)" if r["truncated"] else ""
        out.print(f"drew {r['maps']} maps{more} to {r['out']}", markup=False, highlight=False)

    emit(result, as_json, human, log)


def _render_stack(
    maps: list[WaferMap], png: Path, cols: int | None, truncated: bool, as_json: bool, log: ReadLog
) -> None:
    """The stacked map(s) of ``maps`` to ``png``, and their numbers."""
    from fabsight.analytics.stack import stack_by_bin
    from fabsight.report.render import render_stack_png

    stacks = stack_by_bin(maps)
    render_stack_png(stacks, png, cols=cols)
    result = {"out": str(png), "maps": len(maps), "truncated": truncated, "stacks": [s.to_json() for s in stacks]}

    def human(r: dict[str, Any]) -> None:
        first = r["stacks"][0]
        out.print(
            f"stacked {r['maps']} maps ({len(r['stacks'])} panel(s)) to {r['out']}: {first['what']} on "
            f"{100 * (first['mean_frequency'] or 0):.1f} % of wafers per die on average, "
            f"{first['always_failing']} position(s) failing on every wafer",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    emit(result, as_json, human, log)


def register(app: typer.Typer) -> None:
    app.command("render")(render)
