"""``fabsight adc``: classify every defect of a KLARF from its review images and write the classes back.

A thin layer over :mod:`fabsight.adc` (:func:`~fabsight.adc.classify_klarf`,
:func:`~fabsight.adc.write_classified`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fabsight.cli.common import DeviceOpt, JsonOpt, emit, out
from fabsight.cli.deploy import RuntimeOpt
from fabsight.utils.device import resolve_device

ImagesOpt = Annotated[
    list[Path] | None,
    typer.Option("--images", help="Folder where image references are also looked up (repeat); images may come "
                                  "only from the KLARF's folder and these."),
]
ReviewCodeOpt = Annotated[
    int, typer.Option("--review-code", help="Class number written for defects sent to review (0: unclassified).")
]


def _human(s: dict[str, Any]) -> None:
    lot = s["counts"]["lot"]
    out.print(f"wrote {s['out']}: {lot['defects']} defects, {sum(lot['classes'].values())} classified, "
              f"{lot['needs_review']} sent to review (class {s['review_code']}), {lot['no_image']} without images "
              "(class kept)", markup=False)
    for name, n in lot["classes"].items():
        out.print(f"  {s['class_numbers'][name]:>4}  {name}: {n}", markup=False)
    if s.get("report"):
        out.print(f"report: {s['report']}", markup=False)


def adc(
    klarf: Annotated[Path, typer.Argument(help="KLARF 1.2 or 1.8 whose defects name review images.")],
    model: Annotated[Path, typer.Option("--model", help="Die model directory from 'fabsight die train'.")],
    out_file: Annotated[Path, typer.Option("--out", help="Classified KLARF to write (whole or not at all).")],
    images: ImagesOpt = None,
    review_code: ReviewCodeOpt = 0,
    report: Annotated[Path | None, typer.Option("--report", help="Also write a self-contained HTML report: "
                                                "Pareto of classes, wafer maps by class, thumbnails.")] = None,
    runtime: RuntimeOpt = "torch",
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Classify each KLARF defect from its review images; write the KLARF with CLASSNUMBER and the class lookup."""
    from fabsight.adc import classify_klarf, write_classified

    result = classify_klarf(klarf, model, images=images or (), review_code=review_code, runtime=runtime,
                            device=resolve_device(device) if runtime == "torch" else "cpu")
    write_classified(result, out_file)
    summary = {"out": str(out_file), **result.to_dict()}
    if report is not None:
        from fabsight.adc.report import write_report

        summary["report"] = str(write_report(result, out_file, report))
    emit(summary, as_json, _human)


def register(app: typer.Typer) -> None:
    app.command("adc")(adc)
