"""``fabsight distill [TEACHER] --unlabeled DATA --out STUDENT``: a ≥10× smaller model, no labels.

A thin layer over :class:`fabsight.distill.WaferDistiller`: read unlabelled maps from any
format :mod:`fabsight.io` knows (labels they carry are ignored), optionally add generated
maps, distil, save the student as an ordinary wafer-pattern model directory. Without a
teacher the shipped WM-811K model is distilled.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fabsight.cli.common import DeviceOpt, JsonOpt, StrictOpt, emit, out, require_read
from fabsight.errors import FabsightError

if TYPE_CHECKING:
    from fabsight.io import ReadLog


def _distill(
    teacher_dir: Path | None,
    unlabeled: list[Path],
    out_dir: Path,
    size: str,
    synthetic: int,
    epochs: int,
    temperature: float,
    recipe: dict[str, Any],
    holdout: Path | None,
    seed: int,
    threads: int,
    device: str = "cpu",
    *,
    log: ReadLog,
) -> dict[str, Any]:
    from fabsight.distill import STUDENT_SIZES, WaferDistiller, synthetic_classes
    from fabsight.io import ReadLog, iter_maps, read_maps
    from fabsight.wafer import load_model
    from fabsight.wafer.pretrained import resolve_model

    if size not in STUDENT_SIZES:
        raise FabsightError(None, f"--size must be one of {', '.join(STUDENT_SIZES)}, got {size!r}")
    if not unlabeled and synthetic <= 0:
        raise FabsightError(None, "give unlabelled maps (--unlabeled DATA), --synthetic N, or both")
    teacher_dir = resolve_model(teacher_dir)
    teacher = load_model(teacher_dir)
    maps = list(iter_maps(unlabeled, log)) if unlabeled else []
    described = [f"{p} (unlabelled use)" for p in unlabeled]
    if unlabeled:
        require_read(bool(maps), log, unlabeled[0], "holds no wafer maps")
    if synthetic > 0:
        from fabsight.synth import generate_dataset
        from fabsight.wafer.classifier import SYNTH_SHAPES

        classes = synthetic_classes(teacher)
        maps += generate_dataset(synthetic, shapes=SYNTH_SHAPES, classes=classes, mixed=teacher.multilabel, seed=seed)
        described.append(f"{synthetic} synthetic maps x {len(classes)} patterns (labels ignored, seed {seed})")
    held = None
    if holdout is not None:
        held_log = ReadLog(strict=log.strict)
        held = read_maps(holdout, log=held_log)
        require_read(bool(held), held_log, holdout, "holds no wafer maps")
        log.errors += held_log.errors
        log.files_read += held_log.files_read
    distiller = WaferDistiller(
        teacher,
        size=size,
        epochs=epochs,
        temperature=temperature,
        n_threads=threads,
        device=device,
        random_state=seed,
        **recipe,
    )
    try:
        distiller.fit(maps, holdout=held, data="; ".join(described))
    except ValueError as exc:  # option values the user chose (e.g. --temperature 0)
        raise FabsightError(None, str(exc)) from None
    distiller.student_.training_["distilled_from"] = str(teacher_dir)
    distiller.student_.save(out_dir)
    return {
        "model": str(out_dir),
        "teacher": str(teacher_dir),
        "classes": distiller.student_.classes_,
        "multilabel": distiller.student_.multilabel,
        "compression": distiller.compression_,
        "agreement_with_teacher": distiller.agreement_,
        "metrics": distiller.student_.metrics_,
        "training": distiller.student_.training_,
    }


def _print(result: dict[str, Any]) -> None:
    c = result["compression"]
    out.print(f"student written to {result['model']}")
    t, s = c["teacher"], c["student"]
    out.print(f"  parameters {t['parameters']:,} → {s['parameters']:,} ({c['parameter_ratio']:.1f}x smaller)")
    out.print(f"  FLOPs/map  {t['flops']:,} → {s['flops']:,} ({c['flop_ratio']:.1f}x fewer)")
    if result["agreement_with_teacher"] is not None:
        out.print(f"  agrees with the teacher on {result['agreement_with_teacher']:.1%} of held-out maps")


def register(app: typer.Typer) -> None:
    @app.command("distill")
    def distill(
        out_dir: Annotated[Path, typer.Option("--out", help="Student model directory to write.")],
        teacher_dir: Annotated[
            Path | None, typer.Argument(help="Teacher model directory (default: the shipped WM-811K model).")
        ] = None,
        unlabeled: Annotated[
            list[Path] | None, typer.Option("--unlabeled", help="Maps to learn from (any format; labels ignored).")
        ] = None,
        size: Annotated[
            str, typer.Option(help="Student size: auto (largest ≥10x smaller than the teacher), micro, tiny or small.")
        ] = "auto",
        synthetic: Annotated[int, typer.Option(min=0, help="Add N generated maps per pattern (labels ignored).")] = 0,
        epochs: Annotated[int, typer.Option(min=1)] = 10,
        temperature: Annotated[float, typer.Option(help="Distillation temperature T.")] = 4.0,
        synthetic_per_epoch: Annotated[
            int, typer.Option(min=0, help="Fresh generated maps added to every epoch (labels ignored).")
        ] = 0,
        mixup: Annotated[float, typer.Option(min=0.0, help="Mix pairs of maps, Beta(a, a) weights; 0 = off.")] = 0.0,
        hard_weight: Annotated[
            float, typer.Option(min=0.0, help="Weight of a loss to the teacher's decisions, beside the soft one.")
        ] = 0.0,
        attention_weight: Annotated[
            float, typer.Option(min=0.0, help="Weight of matching where each conv stage fires (0 = off).")
        ] = 0.0,
        class_balance: Annotated[
            float,
            typer.Option(min=0.0, help="Balance draws over the teacher's classes: 1 = equal, 0 = as the maps come."),
        ] = 1.0,
        init: Annotated[Path | None, typer.Option(help="A student directory to continue distilling from.")] = None,
        holdout: Annotated[
            Path | None, typer.Option(help="Labelled maps to calibrate on (default: the teacher's predictions).")
        ] = None,
        seed: int = 0,
        threads: Annotated[int, typer.Option("--threads", min=1, help="CPU threads for torch.")] = 2,
        device: DeviceOpt = "auto",
        strict: StrictOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Train a small student to imitate a wafer-pattern teacher on unlabelled maps."""
        from fabsight.io import ReadLog

        log = ReadLog(strict=strict)
        emit(
            _distill(
                teacher_dir,
                unlabeled or [],
                out_dir,
                size,
                synthetic,
                epochs,
                temperature,
                {
                    "synthetic_per_epoch": synthetic_per_epoch,
                    "mixup": mixup,
                    "hard_weight": hard_weight,
                    "attention_weight": attention_weight,
                    "class_balance": class_balance,
                    "init": init,
                },
                holdout,
                seed,
                threads,
                device,
                log=log,
            ),
            as_json,
            _print,
            log,
        )
