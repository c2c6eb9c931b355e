"""``fabsight export MODEL_DIR --onnx [--int8]``: deployable graphs next to the model card.

A thin layer over :func:`fabsight.deploy.export_onnx`; the export is checked against
PyTorch before anything is written, and the numbers of that check are printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, emit, out
from fabsight.errors import FabsightError

#: ``--runtime`` option for every ``predict`` / ``eval`` command that can use an exported graph.
RuntimeOpt = Annotated[
    str,
    typer.Option(
        "--runtime",
        help="torch, onnx (needs `fabsight export --onnx`) or onnx-int8 (needs --int8); ONNX runs without PyTorch.",
    ),
]


def _print_export(result: dict[str, Any]) -> None:
    info = result["onnx"]
    check = info["check"]
    out.print(f"{result['model']}: {', '.join(f for r, f in result['files'].items() if r.startswith('onnx'))}")
    out.print(
        f"  opset {info['opset']}, input {info['input']} {info['input_shape']}, outputs {', '.join(info['outputs'])}"
    )
    out.print(
        f"  fp32 vs PyTorch on {check['n_maps']} maps: max |Δprob| {check['max_abs_prob_diff']:.1e} "
        f"(tolerance {check['tolerance']:.0e}), predictions equal"
    )
    if info["int8"]:
        q = info["int8"]
        acc = "" if q["accuracy_int8"] is None else f", accuracy {q['accuracy_fp32']:.4f} → {q['accuracy_int8']:.4f}"
        out.print(
            f"  int8: max |Δprob| {q['max_abs_prob_diff']:.3f}, same prediction {q['prediction_agreement']:.1%}{acc}"
        )


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        model_dir: Annotated[Path, typer.Argument(help="Model directory (card.json + weights).")],
        onnx: Annotated[bool, typer.Option("--onnx", help="Write model.onnx (the only format so far).")] = False,
        int8: Annotated[bool, typer.Option("--int8", help="Also write model.int8.onnx (static quantization).")] = False,
        opset: Annotated[int, typer.Option(help="ONNX opset (18 or newer).")] = 18,
        sample: Annotated[
            Path | None,
            typer.Option(help="Maps to check the export and calibrate INT8 on (default: generated maps)."),
        ] = None,
        threads: Annotated[int, typer.Option("--threads", min=1, help="CPU threads.")] = 2,
        as_json: JsonOpt = False,
    ) -> None:
        """Export a model to ONNX, checked against PyTorch, and record it in the model card."""
        from fabsight.deploy import export_onnx

        if not onnx:
            raise FabsightError(model_dir, "choose an export format: --onnx")
        maps = None
        if sample is not None:
            from fabsight.io import read_maps

            maps = read_maps(sample)
        emit(export_onnx(model_dir, int8=int8, opset=opset, sample=maps, n_threads=threads), as_json, _print_export)
