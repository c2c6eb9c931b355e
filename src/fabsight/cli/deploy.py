"""``fabsight export MODEL_DIR --onnx [--int8]``: deployable graphs next to the model card (wafer, die, anomaly).

A thin layer over :func:`fabsight.deploy.export_onnx`; the export is checked against
PyTorch before anything is written, and the numbers of that check are printed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, StrictOpt, emit, out, require_read
from fabsight.errors import FabsightError

if TYPE_CHECKING:
    from fabsight.io import ReadLog

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
    out.print(f"{result['model']}: {', '.join(f for r, f in result['files'].items() if r.startswith('onnx'))}",
              markup=False)
    out.print(f"  opset {info['opset']}, input {info['input']} {info['input_shape']}, "
              f"outputs {', '.join(info['outputs'])}", markup=False)
    q = info["int8"]
    if "max_abs_score_diff" in check:  # anomaly: scores have the model's own scale
        out.print(f"  fp32 vs PyTorch on {check['n_images']} images: max |Δscore| {check['max_abs_score_diff']:.1e} "
                  f"(tolerance {check['relative_tolerance']:.0e} × {check['score_scale']:.3g})", markup=False)
        if q:
            agree = "" if q["decision_agreement"] is None else f", same decision {q['decision_agreement']:.1%}"
            auc = "" if q["image_auroc_int8"] is None else \
                f", image AUROC {q['image_auroc_fp32']:.4f} → {q['image_auroc_int8']:.4f}"
            out.print(f"  int8: max |Δscore| {q['max_abs_score_diff']:.3g} "
                      f"({q['max_relative_score_diff']:.1%} of the scale){agree}{auc}", markup=False)
            _print_recipe(q)
        return
    n = check.get("n_maps", check.get("n_images"))
    out.print(f"  fp32 vs PyTorch on {n} inputs: max |Δprob| {check['max_abs_prob_diff']:.1e} "
              f"(tolerance {check['tolerance']:.0e})", markup=False)
    if q:
        acc = "" if q["accuracy_int8"] is None else f", accuracy {q['accuracy_fp32']:.4f} → {q['accuracy_int8']:.4f}"
        out.print(f"  int8: max |Δprob| {q['max_abs_prob_diff']:.3f}, same prediction {q['prediction_agreement']:.1%}"
                  f"{acc}", markup=False)
        _print_recipe(q)


def _print_recipe(q: dict[str, Any]) -> None:
    speed = q["speed_vs_fp32"]
    verdict = "faster" if speed >= 1 else "slower: it saves size, not time"
    out.print(f"  int8 recipe {q['recipe']}: {speed:.2f}× the fp32 throughput on this CPU ({verdict})", markup=False)


def _read_sample(model_dir: Path, sample: Path, log: ReadLog) -> list[Any]:
    """Wafer maps for a wafer model; the readable image paths for die and anomaly models (an
    image, a folder of them, or a folder of class / MVTec sub-folders, searched recursively).
    Unreadable files go to ``log``."""
    from fabsight.artifacts import load_card
    from fabsight.wafer.classifier import TASK as WAFER_TASK

    if load_card(model_dir).task == WAFER_TASK:
        from fabsight.io import read_maps

        maps = read_maps(sample, log=log)
        require_read(bool(maps), log, sample, "holds no wafer maps")
        return maps
    from fabsight.die.data import expand_inputs

    paths = expand_inputs([sample], log)
    require_read(bool(paths), log, sample, "holds no images")
    return paths


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        model_dir: Annotated[Path, typer.Argument(help="Model directory (card.json + weights).")],
        onnx: Annotated[bool, typer.Option("--onnx", help="Write the ONNX graph (the only format so far).")] = False,
        int8: Annotated[bool, typer.Option("--int8", help="Also write an INT8 graph (the recipe measured best for the "
                                           "model type, calibrated on real images; see README).")] = False,
        opset: Annotated[int, typer.Option(help="ONNX opset (18 or newer).")] = 18,
        sample: Annotated[
            Path | None,
            typer.Option(help="Maps (wafer models) or images (die, anomaly models) to check the export and calibrate "
                         "INT8 on (default: generated maps, or images from the model's training data)."),
        ] = None,
        threads: Annotated[int, typer.Option("--threads", min=1, help="CPU threads.")] = 2,
        strict: StrictOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Export a model to ONNX, checked against PyTorch, and record it in the model card."""
        from fabsight.deploy import export_onnx
        from fabsight.io import ReadLog

        if not onnx:
            raise FabsightError(model_dir, "choose an export format: --onnx")
        log = ReadLog(strict=strict)
        items = None if sample is None else _read_sample(model_dir, sample, log)
        emit(export_onnx(model_dir, int8=int8, opset=opset, sample=items, n_threads=threads), as_json, _print_export,
             log)
