"""``fabsight batch``: classify (or embed) every wafer or die image of many files into a Parquet dataset.

A thin layer over :func:`fabsight.scale.run_batch`; ``--ray`` moves the same per-batch work
onto Ray actors.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, StrictOpt, WaferModelOpt, emit, out, report_errors
from fabsight.errors import FabsightError

#: Unreadable inputs named on stderr; all of them are in the summary and OUT/_errors.jsonl.
_SHOWN_ERRORS = 20


def _print_summary(result: dict[str, Any]) -> None:
    speed = "" if result["rows_per_s"] is None else f", {result['rows_per_s']:.3g} rows/s"  # 0.52, not 0
    lines = [
        f"{result['rows']} rows from {result['processed']} inputs written to {result['out']} "
        f"({result['executor']}, {result['workers']} workers, {result['seconds']:.1f} s{speed})"
    ]
    if result["skipped_done"]:
        lines.append(f"{result['skipped_done']} inputs were already done (resumed); --overwrite redoes them")
    if result["failed"]:
        lines.append(f"{result['failed']} inputs failed and were skipped: see {result['errors_file']}")
    for line in lines:
        out.print(line, markup=False, highlight=False)


def _adc(inputs: list[str], out_dir: Path, model: Path, images: list[Path], list_file: Path | None, ray: str | None,
         workers: int, runtime: str, review_code: int, overwrite: bool, strict: bool, as_json: bool) -> None:
    from fabsight.scale.adc import run_adc_batch

    result = run_adc_batch(inputs, out_dir, model=model, images=images, list_file=list_file, ray=ray,
                           workers=workers, runtime=runtime, review_code=review_code, overwrite=overwrite,
                           strict=strict)
    result["rows"], result["rows_per_s"] = result["defects"], result["defects_per_s"]  # the summary's words
    emit(result, as_json, _print_summary)
    if result["errors"]:
        report_errors(result["errors"], result["processed"], shown=_SHOWN_ERRORS)
    if result["failed"] and not result["processed"] and not result["skipped_done"]:
        raise FabsightError(None, f"none of the KLARFs could be classified ({result['failed']} failed)")


def register(app: typer.Typer) -> None:
    @app.command("batch")
    def batch(
        inputs: Annotated[
            list[str] | None,
            typer.Argument(help="Files, folders (walked recursively) or glob patterns: KLARF, STDF, G85, "
                                "LSWMD.pkl, .npz, map folders; die-image folders with --backbone."),
        ] = None,
        out_dir: Annotated[Path, typer.Option("--out", help="Output Parquet dataset (a folder of part files).")] = ...,
        model: WaferModelOpt = None,
        backbone: Annotated[
            str | None, typer.Option(help="Embed die images with this backbone (efficientnet_lite0, dinov2_vits14, "
                                          "timm:<name>, a directory) instead of classifying wafer maps."),
        ] = None,
        list_file: Annotated[Path | None, typer.Option("--list", help="A file listing inputs, one per line.")] = None,
        ray: Annotated[
            str | None, typer.Option("--ray", help="Run on Ray: 'local' starts one here, else a cluster address."),
        ] = None,
        workers: Annotated[int, typer.Option(min=1, help="Ray actors (one model each); in-process: threads.")] = 1,
        batch_size: Annotated[
            int, typer.Option(min=1, help="Maps or images per forward pass; one-map files per work unit."),
        ] = 256,
        explain: Annotated[bool, typer.Option(help="Add a grounded explanation per wafer (slower).")] = False,
        embed: Annotated[bool, typer.Option(help="Add the model's embedding vector per wafer.")] = False,
        runtime: Annotated[
            str, typer.Option(help="torch, onnx or onnx-int8 (needs `fabsight export --onnx`)."),
        ] = "torch",
        adc: Annotated[
            Path | None, typer.Option("--adc", help="ADC with this die model: one classified KLARF per input KLARF "
                                                    "under --out (a folder), instead of a Parquet dataset."),
        ] = None,
        images: Annotated[
            list[Path] | None, typer.Option("--images", help="With --adc: a folder where image references are "
                                                             "also looked up (repeat)."),
        ] = None,
        review_code: Annotated[
            int, typer.Option("--review-code", help="With --adc: class number for defects sent to review."),
        ] = 0,
        overwrite: Annotated[bool, typer.Option(help="Start over instead of resuming into --out.")] = False,
        strict: StrictOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Process many inputs into OUT (Parquet parts, or classified KLARFs with --adc); a rerun resumes,
        failed files go to OUT/_errors.jsonl."""
        from fabsight.scale import run_batch

        if adc is not None:
            if model is not None or backbone is not None or explain or embed:
                raise FabsightError(None, "--adc classifies KLARF defects with a die model; --model, --backbone, "
                                          "--explain and --embed are for other jobs")
            _adc(inputs or [], out_dir, adc, images or [], list_file, ray, workers, runtime, review_code, overwrite,
                 strict, as_json)
            return

        result = run_batch(
            inputs or [], out_dir, model=model, backbone=backbone, list_file=list_file, ray=ray, workers=workers,
            batch_size=batch_size, explain=explain, embed=embed, runtime=runtime, overwrite=overwrite, strict=strict,
        )
        emit(result, as_json, _print_summary)
        if result["errors"]:
            report_errors(result["errors"], result["processed"], shown=_SHOWN_ERRORS)
        if result["failed"] and not result["processed"] and not result["skipped_done"]:
            raise FabsightError(None, f"none of the inputs could be read ({result['failed']} unreadable files)")
