"""``fabsight pareto`` and ``fabsight repeaters``: what dominates a lot, and what repeats."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, StrictOpt, emit, out, require_read
from fabsight.errors import FabsightError

if TYPE_CHECKING:
    from fabsight.io import ReadLog
    from fabsight.types import WaferMap

FilesArg = Annotated[list[str], typer.Argument(help="KLARF, STDF, G85 or other wafer files, folders or globs.")]
PngOpt = Annotated[Path | None, typer.Option("--out", help="PNG chart to write.")]


def _read(files: list[str], strict: bool) -> tuple[list[WaferMap], ReadLog]:
    from fabsight.io import ReadLog, iter_maps

    log = ReadLog(strict=strict)
    maps = list(iter_maps(files, log))
    require_read(bool(maps), log, files[0], "no wafer maps found")
    return maps, log


def _png(path: Path | None) -> None:
    if path is not None and path.suffix.lower() != ".png":
        raise FabsightError(path, "output picture must be a .png file")


def _numbers(option: str, text: str, sep: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(sep) if v]
    except ValueError:
        raise FabsightError(option, f"{text!r} is not a list of numbers separated by '{sep}'") from None


def pareto(
    files: FilesArg,
    by: Annotated[
        str,
        typer.Option(
            "--by",
            help="KLARF: class, size, wafer, lot, bin (ROUGHBINNUMBER) or step; sort: bin, softbin, wafer or lot.",
        ),
    ] = "class",
    size_bins: Annotated[
        str | None,
        typer.Option("--size-bins", help="DSIZE bin edges in µm, e.g. 0.5,1,2,5,10 (default 0.5,1,2,5,10,20,50,100)."),
    ] = None,
    top: Annotated[int, typer.Option("--top", min=1, help="Bars in the chart; the rest become one 'other' bar.")] = 15,
    png: PngOpt = None,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Rank defects (KLARF) or failing dies (STDF, G85) by class, size, bin, wafer, lot or step."""
    from fabsight.analytics.pareto import pareto as rank
    from fabsight.analytics.pareto import pareto_png

    _png(png)
    edges = None if size_bins is None else _numbers("--size-bins", size_bins, ",")
    maps, log = _read(files, strict)
    result = rank(maps, by, size_bins=edges)
    if png is not None:
        pareto_png(result, png, top=top)
    report = {**result.to_json(), "out": None if png is None else str(png)}

    def human(r: dict[str, Any]) -> None:
        loss = " yield loss" if "tested_dies" in r else ""
        out.print(
            f"{r['total']:,} {r['unit']} in {r['scope']}, by {r['by']}:", markup=False, highlight=False, soft_wrap=True
        )
        for row in r["rows"][:top]:
            extra = f" {100 * row['yield_loss']:6.2f} %{loss}" if row.get("yield_loss") is not None else ""
            out.print(
                f"  {row['label'][:40]:<40} {row['count']:>9,} {100 * row['share']:6.1f} %"
                f" (cum. {100 * row['cumulative']:5.1f} %){extra}",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if len(r["rows"]) > top:
            out.print(f"  … {len(r['rows']) - top} more (--top, --json)", markup=False, highlight=False, soft_wrap=True)
        if r["out"]:
            out.print(f"chart: {r['out']}", markup=False, highlight=False, soft_wrap=True)

    emit(report, as_json, human, log)


def parse_reticle(text: str | None) -> tuple[int, int] | None:
    """``"2x3"`` → (2, 3): a reticle of 2 die columns by 3 die rows."""
    if text is None:
        return None
    values = _numbers("--reticle", text.lower(), "x")
    if len(values) != 2 or any(v < 1 or not v.is_integer() for v in values):
        raise FabsightError("--reticle", f"{text!r} must be COLSxROWS in whole dies, e.g. 2x3")
    return int(values[0]), int(values[1])


def repeaters(
    files: FilesArg,
    tolerance: Annotated[
        float, typer.Option("--tolerance", help="Search radius in µm around a defect's die-relative position.")
    ] = 10.0,
    reticle: Annotated[
        str | None,
        typer.Option("--reticle", help="Reticle size in dies, COLSxROWS (e.g. 2x3): reticle-relative search."),
    ] = None,
    min_dies: Annotated[int, typer.Option("--min-dies", min=2, help="Dies (shots) of a wafer a repeater is on.")] = 3,
    min_wafers: Annotated[int, typer.Option("--min-wafers", min=2, help="Wafers of a lot a lot repeater is on.")] = 3,
    png: PngOpt = None,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Find defects repeating at one die- (or reticle-) relative position across dies and wafers."""
    from fabsight.analytics.repeaters import find_repeaters

    _png(png)
    maps, log = _read(files, strict)
    result = find_repeaters(
        maps, tolerance_um=tolerance, reticle=parse_reticle(reticle), min_dies=min_dies, min_wafers=min_wafers
    )
    if png is not None:
        from fabsight.report.render import render_png

        render_png(maps, png, color_by="class", marks=[w.flags for w in result.wafers])
    report = {**result.to_json(), "out": None if png is None else str(png)}

    def human(r: dict[str, Any]) -> None:
        where = f"reticle {r['reticle_dies'][0]}x{r['reticle_dies'][1]}" if r["reticle_dies"] else "die"
        out.print(
            f"{r['repeaters']:,} repeating defects on {r['wafers_with_repeaters']} of {len(r['wafers'])} wafers "
            f"({where}-relative, within {r['tolerance_um']:g} µm):",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )
        for w in r["wafers"]:
            out.print(
                f"  {w['wafer']:<24} {w['repeaters']:>6,} of {w['defects']:,} defects, {w['sites']} site(s) on "
                f"{w['dies']} die(s) (needing {w['dies_needed']}); in the lot {w['in_lot']:,}; "
                f"~{w['expected_by_chance']:g} by chance",
                markup=False,
                highlight=False,
                soft_wrap=True,
            )
        if r["out"]:
            out.print(f"map: {r['out']}", markup=False, highlight=False, soft_wrap=True)

    emit(report, as_json, human, log)


def register(app: typer.Typer) -> None:
    app.command("pareto")(pareto)
    app.command("repeaters")(repeaters)
