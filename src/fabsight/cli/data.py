"""``fabsight info`` and ``fabsight convert``: look at and translate wafer data files."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, StrictOpt, emit, out, require_read, warn

_HUMAN_ROWS = 50  # per file; --json always lists every wafer


def info(
    files: Annotated[
        list[Path],
        typer.Argument(help="Wafer data files or folders (KLARF, STDF, G85, LSWMD.pkl, .npz, PNG/NPY, ROOT/CLASS/)."),
    ],
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Per file: detected format, number of wafers and per wafer ids, grid, good/failing/off dies, yield, defects."""
    from fabsight.io import ReadLog, iter_maps
    from fabsight.utils.progress import track

    log = ReadLog(strict=strict)
    results: list[dict[str, Any]] = []
    for path in files:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            maps = track(iter_maps([path], log), f"reading {path.name}")
            wafers = [{"format": m.format, **m.summary()} for m in maps]
        for w in caught:
            warn(str(w.message))
        fmt = "folder" if path.is_dir() else (wafers[0]["format"] if wafers else None)
        results.append({"file": str(path), "format": fmt, "wafers": len(wafers), "maps": wafers})
    require_read(log.files_read > 0, log, files[0], "nothing to read")
    emit({"files": results}, as_json, lambda _: _print_info(results), log)


def _print_info(results: list[dict[str, Any]]) -> None:
    from rich.table import Table

    for res in results:
        if res["format"] is None:  # nothing read: its error line follows
            continue
        table = Table(title=f"{res['file']}  ({res['format']}, {res['wafers']} wafer(s))", title_justify="left")
        for col in ("lot", "wafer", "grid", "good", "failing", "off", "yield", "defects", "labels"):
            table.add_column(col, justify="left" if col in ("lot", "wafer", "labels") else "right", overflow="fold")
        for w in res["maps"][:_HUMAN_ROWS]:
            table.add_row(
                w["lot_id"],
                w["wafer_id"],
                "×".join(map(str, w["shape"])),
                str(w["good"]),
                str(w["failing"]),
                str(w["off"]),
                "-" if w["yield"] is None else f"{w['yield']:.2%}",
                "-" if w["defects"] is None else str(w["defects"]),
                ", ".join(w["labels"]),
            )
        if res["wafers"] > _HUMAN_ROWS:
            table.caption = f"… and {res['wafers'] - _HUMAN_ROWS} more wafers (--json lists all)"
        out.print(table)


def convert(
    input: Annotated[Path, typer.Argument(help="A wafer data file or folder in any readable format.")],
    to: Annotated[str, typer.Option("--to", help="Target: g85, folder, klarf, stdf, npz (MixedWM38) or lswmd.")],
    out_path: Annotated[Path, typer.Option("--out", help="Output file (folder for --to folder).")],
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Read every wafer of INPUT and write them in another format (written atomically)."""
    from fabsight.errors import FabsightError
    from fabsight.io import WRITERS, ReadLog, iter_maps
    from fabsight.utils.progress import track

    if to not in WRITERS:
        raise FabsightError(None, f"--to must be one of {', '.join(WRITERS)}, not {to!r}")
    log = ReadLog(strict=strict)
    maps = list(track(iter_maps([input], log), f"reading {input.name}"))
    require_read(bool(maps), log, input, "no wafer maps found")
    WRITERS[to](maps, out_path)
    result = {"input": str(input), "format": maps[0].format, "to": to, "out": str(out_path), "wafers": len(maps)}
    emit(result, as_json, lambda r: out.print(f"wrote {r['wafers']} wafer(s) from {r['input']} to {r['out']} ({to})"),
         log)


def register(app: typer.Typer) -> None:
    app.command("info", rich_help_panel="Data")(info)
    app.command("convert", rich_help_panel="Data")(convert)
