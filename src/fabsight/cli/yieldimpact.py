"""``fabsight killratio`` and ``fabsight commonality``: the yield impact of defects and the
history the flagged wafers share.

One module for both because they are the two commands that join fabsight's results with data
from elsewhere in the fab (sort results, the wafer history); the Pareto, stacked-map and
repeater commands describe one data source and live with the other analytics commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, StrictOpt, emit, out, warn

if TYPE_CHECKING:
    from fabsight.analytics.commonality import CommonalityReport
    from fabsight.analytics.killratio import ImpactRow


def _impact_table(title: str, rows: list[ImpactRow]) -> None:
    from rich.table import Table

    table = Table("group", "defects", "dies", "failing", "fail rate", "kill ratio (95 % CI)", "kill prob.",
                  "yield loss", title=title)
    for r in rows:
        table.add_row(r.name, str(r.defects), str(r.dies_with), str(r.failing_with), f"{r.fail_rate:.3f}",
                      f"{r.kill_ratio:+.3f} ({r.kill_ratio_low:+.3f}, {r.kill_ratio_high:+.3f})",
                      f"{r.kill_probability:.3f}", f"{r.yield_loss:.2%}")
    out.print(table)


def _print_killratio(result: dict[str, Any]) -> None:
    from fabsight.analytics.killratio import ImpactRow

    out.print(
        f"{len(result['wafers'])} wafers paired, {result['dies']} dies, clean dies fail "
        f"{result['clean_failing']} of {result['clean_dies']} ({result['clean_fail_rate']:.3f}); "
        f"alignment {result['alignment']['options']}", markup=False, soft_wrap=True)
    _impact_table("by defect class", [ImpactRow(**r) for r in result["by_class"]])
    _impact_table("by defect size", [ImpactRow(**r) for r in result["by_size"]])
    for side in ("inspection_only", "sort_only"):
        if result[side]:
            out.print(f"{side.replace('_', ' ')} (not counted): {', '.join(result[side])}", markup=False)


def _print_commonality(result: dict[str, Any]) -> None:
    from rich.table import Table

    out.print(f"{result['flagged']} of {result['wafers']} wafers have {result['criterion']} "
              f"(correction: {result['correction']})", markup=False)
    table = Table("step", "factor", "level", "flagged at", "flagged elsewhere", "odds ratio", "p", "corrected p")
    for f in result["findings"][:15]:
        table.add_row(f["step"], f["factor"], f["level"], f"{f['flagged_at']}/{f['wafers_at']}",
                      f"{f['flagged_elsewhere']}/{f['wafers_elsewhere']}", f"{f['odds_ratio']:.2f}",
                      f"{f['p_value']:.2g}", f"{f['q_value']:.2g}")
    out.print(table)
    if result["not_in_history"]:
        out.print(f"{len(result['not_in_history'])} wafers of the results are not in the history", markup=False)


def _size_edges(text: str | None) -> tuple[float, ...]:
    from fabsight.analytics.killratio import SIZE_EDGES_UM
    from fabsight.errors import FabsightError

    if not text:
        return SIZE_EDGES_UM
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        message = f"--size-bins {text!r}: expected µm edges separated by commas, e.g. 1,2,5,10"
        raise FabsightError(None, message) from None


ColOpt = Annotated[str | None, typer.Option(help="History column of this field (default: its own name).")]


def register(app: typer.Typer) -> None:
    @app.command("killratio")
    def killratio(
        inspection: Annotated[list[str], typer.Option("--inspection", help="KLARF inspection files, folders or "
                                                      "globs (repeat the option for more).")],
        sort: Annotated[list[str], typer.Option("--sort", help="STDF or G85 sort files of the same wafers "
                                                "(repeat the option for more).")],
        offset: Annotated[str | None, typer.Option("--offset", help="DX,DY added to inspection die indices "
                                                   "(after --flip) to give sort die indices.")] = None,
        flip: Annotated[str | None, typer.Option("--flip", help="Negate inspection die X (x), Y (y) or both (xy) "
                                                 "before the offset.")] = None,
        size_bins: Annotated[str | None, typer.Option("--size-bins", help="Upper edges of the defect size bins "
                                                      "in µm, e.g. 1,2,5,10 (default 0.5,1,2,5,10,20,50,100).")] = None,
        strict: StrictOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Kill ratio and yield loss per defect class and size: which inline defects fail dies at sort."""
        from fabsight.analytics.align import Alignment
        from fabsight.analytics.killratio import kill_ratios
        from fabsight.cli.monitor import read_wafers
        from fabsight.io import ReadLog

        alignment = Alignment.parse(offset, flip)
        edges = _size_edges(size_bins)
        log = ReadLog(strict=strict)
        insp = read_wafers(inspection, log, what="inspection files")
        srt = read_wafers(sort, log, what="sort files")
        report = kill_ratios(insp, srt, alignment, edges)
        for message in report.warnings:
            warn(message)
        emit(report.to_dict(), as_json, _print_killratio, log)

    @app.command("commonality")
    def commonality_cmd(
        results: Annotated[Path, typer.Argument(help="Per-wafer results: 'wafer predict --json' output, or a CSV / "
                                                "JSON of records with lot, wafer and label / yield / defect_class.")],
        history: Annotated[Path, typer.Option("--history", help="Wafer history CSV: one row per wafer and step.")],
        pattern: Annotated[str | None, typer.Option("--pattern", help="Flag wafers with this pattern label.")] = None,
        yield_below: Annotated[float | None, typer.Option("--yield-below", help="Flag wafers with a yield below "
                                                          "this (0–1).")] = None,
        defect_class: Annotated[str | None, typer.Option("--defect-class", help="Flag wafers with this defect "
                                                         "class.")] = None,
        lot_col: ColOpt = None,
        wafer_col: ColOpt = None,
        step_col: ColOpt = None,
        tool_col: ColOpt = None,
        chamber_col: ColOpt = None,
        slot_col: ColOpt = None,
        time_col: ColOpt = None,
        time_windows: Annotated[int, typer.Option("--time-windows", help="Equal-size time windows per step "
                                                  "(0 or 1: none).")] = 4,
        correction: Annotated[str, typer.Option("--correction", help="bh (Benjamini–Hochberg) or holm.")] = "bh",
        as_json: JsonOpt = False,
    ) -> None:
        """Which tool, chamber, slot or time window the flagged wafers share more than chance."""
        from fabsight.analytics.commonality import Flag, commonality, read_history, read_results

        flag = Flag(pattern, yield_below, defect_class)
        named = {"lot": lot_col, "wafer": wafer_col, "step": step_col, "tool": tool_col, "chamber": chamber_col,
                 "slot": slot_col, "time": time_col}
        rows = read_history(history, named, [k for k, v in named.items() if v])
        report: CommonalityReport = commonality(read_results(results), rows, flag, correction=correction,
                                                time_windows=time_windows, history_source=str(history))
        emit(report.to_dict(), as_json, _print_commonality)
