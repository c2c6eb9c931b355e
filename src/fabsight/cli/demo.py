"""``fabsight demo``: the main job on the embedded example lot (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, emit, out


def demo(
    files: Annotated[list[str] | None, typer.Argument(help="Wafer files to use instead of the example lot.")] = None,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the report (replaced atomically).")] = Path(
        "demo_out"
    ),
    as_json: JsonOpt = False,
) -> None:
    """Read the example lot (or FILES), render every wafer and write an HTML report."""
    from fabsight.demo import run_demo

    summary = run_demo(out_dir, files)

    def human(s: dict[str, Any]) -> None:
        for lot in s["lots"]:
            y = "–" if lot["yield"] is None else f"{100 * lot['yield']:.1f} %"
            out.print(f"lot {lot['lot']} ({lot['format']}): {lot['wafers']} wafers, yield {y}")
        out.print(f"report: {s['report']}")

    emit(summary, as_json, human)


def register(app: typer.Typer) -> None:
    app.command()(demo)
