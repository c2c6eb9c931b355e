"""``fabsight autolabel`` and ``fabsight review``: label with a model, let a person fix the rest."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, StrictOpt, emit, err, out
from fabsight.cli.deploy import RuntimeOpt
from fabsight.errors import FabsightError

if TYPE_CHECKING:
    import numpy as np

    from fabsight.labeling import QueueItem

#: Terminal preview: off-wafer blank, good dies dim, failing dies bold.
_GLYPHS = (" ", "·", "█")
_PREVIEW_COLS = 40


def autolabel(
    unlabeled: Annotated[list[str], typer.Argument(help="Maps to label: files, folders or quoted globs.")],
    model: Annotated[Path, typer.Option("--model", help="Wafer classifier directory.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder (labeled/, pending/, queue.sqlite).")],
    threshold: Annotated[float, typer.Option("--threshold", help="Least calibrated probability to auto-label.")] = 0.9,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output folder.")] = False,
    runtime: RuntimeOpt = "torch",
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Label maps with a calibrated model; queue uncertain and novel maps for review, most useful first."""
    from fabsight.cli.monitor import load_classifier, read_wafers
    from fabsight.io import ReadLog
    from fabsight.labeling import autolabel as run

    clf = load_classifier(model, runtime)
    log = ReadLog(strict=strict)
    maps = read_wafers(unlabeled, log, what="unlabeled maps")
    res = asdict(run(maps, clf, out_dir, threshold=threshold, overwrite=overwrite))

    def human(r: dict[str, Any]) -> None:
        out.print(
            f"{r['labeled']} of {r['total']} maps auto-labelled (p ≥ {r['threshold']}) into "
            f"{r['out']}/labeled; {r['review']} queued for review: fabsight review {r['out']} --list",
            highlight=False,
            markup=False,
        )

    emit(res, as_json, human, log)


def _preview(grid: np.ndarray) -> str:
    import numpy as np

    rows = max(1, round(grid.shape[0] * min(1.0, _PREVIEW_COLS / grid.shape[1]) / 2))  # glyphs are ~2:1
    cols = min(_PREVIEW_COLS, grid.shape[1])
    r = (np.arange(rows) * grid.shape[0]) // rows
    c = (np.arange(cols) * grid.shape[1]) // cols
    return "\n".join("".join(_GLYPHS[v] for v in line) for line in grid[r[:, None], c[None, :]])


def _describe(item: QueueItem) -> str:
    top = ", ".join(f"{c} {p:.2f}" for c, p in item.top3)
    return f"#{item.id} {item.lot_id}/{item.wafer_id} → {item.predicted} ({top}); {item.reason or ''}"


def _interactive(root: Path) -> dict[str, Any]:
    """One map at a time on stderr (stdout stays clean for --json)."""
    from fabsight.labeling import accept, classes, correct, list_queue, load_map

    known = classes(root)
    done = {"accepted": 0, "corrected": 0, "skipped": 0}
    err.print(f"classes: {', '.join(known)}", markup=False)
    for item in list_queue(root):
        err.print(_preview(load_map(root, item)), markup=False, highlight=False)
        err.print(_describe(item), markup=False, highlight=False)
        answer = typer.prompt(
            f"[Enter] accept '{item.predicted}' / a class / s skip / q quit", default="", show_default=False, err=True
        ).strip()
        if answer == "q":
            break
        if answer == "s":
            done["skipped"] += 1
        elif answer in ("", item.predicted):
            accept(root, item.id)
            done["accepted"] += 1
        else:
            if answer not in known:
                err.print(f"note: '{answer}' is a new class", markup=False)
            correct(root, item.id, answer)
            done["corrected"] += 1
    done["pending"] = len(list_queue(root))
    return done


def review(
    root: Annotated[Path, typer.Argument(help="Output folder of `fabsight autolabel`.")],
    show: Annotated[bool, typer.Option("--list", help="List pending maps, most useful first.")] = False,
    accept_id: Annotated[int | None, typer.Option("--accept", help="Decide on this item.")] = None,
    label: Annotated[str | None, typer.Option("--label", help="The right class (default: the model's).")] = None,
    interactive: Annotated[bool, typer.Option("--interactive", "-i", help="Review one map at a time.")] = False,
    export: Annotated[Path | None, typer.Option("--export", help="Write a CSV of all labels here.")] = None,
    limit: Annotated[int, typer.Option("--limit", help="Items shown by --list.")] = 20,
    as_json: JsonOpt = False,
) -> None:
    """Work through the review queue: list it, accept or correct items, export the labels."""
    from fabsight.labeling import accept, correct, export_accepted, list_queue

    if sum([show, accept_id is not None, interactive, export is not None]) != 1:
        raise FabsightError(None, "give exactly one of --list, --accept ID [--label CLASS], --interactive, --export")
    if label is not None and accept_id is None:
        raise FabsightError(None, "--label goes with --accept ID")
    if show:
        items = [i.to_dict() for i in list_queue(root, limit=limit)]

        def human(rows: list[dict[str, Any]]) -> None:
            from rich.table import Table

            t = Table("id", "lot/wafer", "predicted", "p", "value", "why", title=f"review queue of {root}")
            for r in rows:
                t.add_row(
                    str(r["id"]),
                    f"{r['lot_id']}/{r['wafer_id']}",
                    r["predicted"],
                    f"{r['probability']:.2f}",
                    f"{r['value']:.3f}",
                    r["reason"] or "",
                )
            out.print(t)

        emit(items, as_json, human)
    elif accept_id is not None:
        item = accept(root, accept_id) if label is None else correct(root, accept_id, label)
        emit(
            item.to_dict(),
            as_json,
            lambda r: out.print(
                f"#{r['id']} → {r['label']} ({r['status']}): {root / r['file']}", markup=False, highlight=False
            ),
        )
    elif export is not None:
        n = export_accepted(root, export)
        emit(
            {"export": str(export), "rows": n},
            as_json,
            lambda r: out.print(f"{r['rows']} labels written to {r['export']}", markup=False, highlight=False),
        )
    else:
        emit(
            _interactive(root),
            as_json,
            lambda r: out.print(
                f"accepted {r['accepted']}, corrected {r['corrected']}, skipped {r['skipped']}; {r['pending']} pending",
                markup=False,
            ),
        )


def register(app: typer.Typer) -> None:
    app.command("autolabel", rich_help_panel="Labelling")(autolabel)
    app.command("review", rich_help_panel="Labelling")(review)
