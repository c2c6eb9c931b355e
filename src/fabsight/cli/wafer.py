"""``fabsight wafer train | eval | predict``: wafer-map pattern recognition from the shell.

A thin layer over :mod:`fabsight.wafer`: read maps with :mod:`fabsight.io`, call the
estimator, print a table or ``--json``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fabsight.cli.common import DeviceOpt, JsonOpt, StrictOpt, emit, out, require_read, warn
from fabsight.cli.deploy import RuntimeOpt
from fabsight.errors import FabsightError

if TYPE_CHECKING:
    from fabsight.io import ReadLog
    from fabsight.types import WaferMap

ThreadsOpt = Annotated[int, typer.Option("--threads", min=1, help="CPU threads for torch.")]


#: Maps read and classified at a time by ``predict``: bounds memory on an 811k-row LSWMD.
PREDICT_CHUNK = 4096


@contextmanager
def _warnings_as_lines() -> Iterator[None]:
    """Python warnings raised inside (a class with one example, an empty class folder)
    printed as ``warning: ...`` lines on stderr instead of file:line tracebacks."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for w in caught:
        warn(str(w.message))


def _read_labelled(path: Path, log: ReadLog) -> tuple[list[WaferMap], int, str]:
    """Labelled maps of ``path``, how many unlabelled ones were skipped, and the format.

    Reader warnings (an empty class folder) become one ``warning:`` line each; unreadable
    files of a folder go to ``log`` (nothing readable at all stops here, exit 2).
    """
    from fabsight.io import detect_format, read_maps

    fmt = detect_format(path)
    with _warnings_as_lines():
        maps = read_maps(path, log=log)
    require_read(log.files_read > 0, log, path, "holds no wafer data")
    labelled = [m for m in maps if m.labels]
    return labelled, len(maps) - len(labelled), fmt


def _train(
    data: Path | None,
    out_dir: Path,
    synthetic: int,
    epochs: int,
    input_size: int | None,
    init: Path | None,
    head: str,
    multilabel: bool | None,
    seed: int,
    threads: int,
    arch: str = "compact",
    review_per_class: int = 0,
    device: str = "cpu",
    *,
    log: ReadLog,
) -> dict[str, Any]:
    from fabsight.synth import MIXED_COMBINATIONS, generate_dataset
    from fabsight.types import WM811K_CLASSES
    from fabsight.wafer import WaferClassifier, load_model
    from fabsight.wafer.classifier import SYNTH_SHAPES, label_tuple
    from fabsight.wafer.net import ARCHITECTURES
    from fabsight.wafer.review import shifted_maps

    if arch not in ARCHITECTURES:
        raise FabsightError(None, f"--arch must be one of {', '.join(ARCHITECTURES)}, got {arch!r}")

    if data is None and synthetic <= 0:
        raise FabsightError(None, "give training DATA, --synthetic N, or both")
    maps: list[WaferMap] = []
    described = []
    fmt = None
    if data is not None:
        maps, skipped, fmt = _read_labelled(data, log)
        if not maps and synthetic <= 0:
            raise FabsightError(data, f"no labelled maps ({skipped} unlabelled maps are not used for training)")
        if skipped:
            warn(f"{data}: {skipped} unlabelled maps ignored for supervised training")
        described.append(f"{data} ({fmt}: {len(maps)} labelled maps, {skipped} unlabelled ignored)")
    if multilabel is None:
        multilabel = (
            load_model(init).multilabel
            if init is not None and not maps
            else fmt == "mixedwm38" or any(len(label_tuple(m.labels)) > 1 for m in maps)
        )
    if synthetic > 0:
        if multilabel:
            wanted = {label_tuple(m.labels) for m in maps}
            classes = [c for c in MIXED_COMBINATIONS if not maps or c in wanted]
        else:
            wanted_single = {m.labels[0] for m in maps}
            classes = [c for c in WM811K_CLASSES if not maps or c in wanted_single]
        if not classes:
            raise FabsightError(data, "--synthetic: none of the data's classes is a pattern the generator knows")
        maps = maps + generate_dataset(synthetic, shapes=SYNTH_SHAPES, classes=classes, mixed=multilabel, seed=seed)
        described.append(f"{synthetic} synthetic maps per class x {len(classes)} classes (fabsight.synth, seed {seed})")
    review = None
    if synthetic > 0 and review_per_class > 0:
        # Harder maps of the same classes (another seed) set the review threshold; maps
        # like the training ones would leave it at its floor.
        review = shifted_maps(review_per_class, classes, mixed=multilabel, seed=seed + 1)
        described.append(f"review threshold on {len(review)} shifted synthetic maps (fabsight.wafer.review)")
    widths, embed_dim = ARCHITECTURES[arch]
    clf = WaferClassifier(
        input_size=input_size or 64,
        multilabel=multilabel,
        widths=widths,
        embed_dim=embed_dim,
        epochs=epochs,
        init=init,
        head=head,
        n_threads=threads,
        device=device,
        random_state=seed,
    )
    try:
        with _warnings_as_lines():
            clf.fit(maps, data="; ".join(described), review_maps=review)
    except ValueError as exc:  # parameter combinations the user chose (e.g. --head probe without --init)
        raise FabsightError(None, str(exc)) from None
    clf.save(out_dir)
    return {
        "model": str(out_dir),
        "classes": clf.classes_,
        "multilabel": clf.multilabel,
        "head": clf.head_,
        "training": clf.training_,
        "metrics": clf.metrics_,
        "review_threshold": clf.review_threshold_,
    }


def _print_training(result: dict[str, Any]) -> None:
    v = result["metrics"].get("validation") or {}
    out.print(f"model written to {result['model']} ({len(result['classes'])} classes, head {result['head']})")
    for key in ("accuracy", "exact_match", "macro_f1", "ece_before_calibration", "ece_after_calibration"):
        if key in v:
            out.print(f"  validation {key}: {v[key]:.4f}")
    r = result["metrics"].get("review")
    source = f"{r['n']} harder review maps" if r else "held-out maps"
    out.print(f"  needs_review below confidence {result['review_threshold']:.3f} (learnt on {source})")


def _print_eval(result: dict[str, Any]) -> None:
    from rich.table import Table

    headline = "accuracy" if "accuracy" in result else "exact_match_accuracy"
    out.print(f"n={result['n']}  {headline}={result[headline]:.4f}  macro_f1={result['macro_f1']:.4f}")
    table = Table("class", "precision", "recall", "f1", "support")
    for name, row in (result.get("per_class") or result["per_label"]).items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    out.print(table)


def _print_predictions(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("source", "lot", "wafer", "label", "p", "review")
    for r in result["results"]:
        table.add_row(
            Path(r["source"]).name if r["source"] else "",
            r["lot_id"],
            r["wafer_id"],
            r["label"],
            f"{r['probability']:.3f}",
            r["review_reason"] or "",
        )
    out.print(table)


def register(app: typer.Typer) -> None:
    wafer = typer.Typer(help="Wafer-map pattern recognition: train, evaluate, predict.", no_args_is_help=True)

    @wafer.command("train")
    def train(
        out_dir: Annotated[Path, typer.Option("--out", help="Model directory to write.")],
        data: Annotated[
            Path | None, typer.Argument(help="Labelled folder ROOT/CLASS/, LSWMD.pkl or MixedWM38 .npz.")
        ] = None,
        synthetic: Annotated[int, typer.Option(min=0, help="Add N generated maps per class.")] = 0,
        review_maps: Annotated[
            int,
            typer.Option(
                min=0,
                help="With --synthetic: N harder generated maps per class (shifted parameters, grids, noise) "
                "to learn the needs_review threshold on; 0 uses the held-out maps.",
            ),
        ] = 40,
        epochs: Annotated[int, typer.Option(min=1)] = 15,
        input_size: Annotated[int | None, typer.Option(help="Model input side (default 64, or --init's).")] = None,
        init: Annotated[Path | None, typer.Option(help="Start from this model (few-shot / new fab).")] = None,
        head: Annotated[str, typer.Option(help="With --init: auto, finetune, probe or prototype.")] = "auto",
        multilabel: Annotated[
            bool | None, typer.Option("--multilabel/--single", help="Default: multi-label for .npz or A+B labels.")
        ] = None,
        seed: int = 0,
        threads: ThreadsOpt = 2,
        arch: Annotated[
            str,
            typer.Option(help="Network size: compact (default), medium (mixed-type), wide (teacher), small, tiny."),
        ] = "compact",
        device: DeviceOpt = "auto",
        strict: StrictOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Train (or fine-tune) a wafer-pattern classifier and write a model directory."""
        from fabsight.io import ReadLog

        log = ReadLog(strict=strict)
        emit(
            _train(
                data,
                out_dir,
                synthetic,
                epochs,
                input_size,
                init,
                head,
                multilabel,
                seed,
                threads,
                arch,
                review_maps,
                device,
                log=log,
            ),
            as_json,
            _print_training,
            log,
        )

    @wafer.command("eval")
    def evaluate_cmd(
        model_dir: Annotated[Path, typer.Argument(help="Model directory.")],
        data: Annotated[Path, typer.Argument(help="Labelled maps (folder, LSWMD.pkl, .npz).")],
        threads: ThreadsOpt = 2,
        runtime: RuntimeOpt = "torch",
        strict: StrictOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Score a model on labelled maps: accuracy, macro-F1, per class, confusion matrix."""
        from fabsight.deploy import load_predictor
        from fabsight.io import ReadLog
        from fabsight.wafer import evaluate

        clf = load_predictor(model_dir, runtime, n_threads=threads)
        log = ReadLog(strict=strict)
        maps, skipped, _ = _read_labelled(data, log)
        if not maps:
            raise FabsightError(data, "no labelled maps to evaluate on")
        result = evaluate(clf, maps)
        result["n_unlabelled_skipped"] = skipped
        emit(result, as_json, _print_eval, log)

    @wafer.command("predict")
    def predict(
        model_dir: Annotated[Path, typer.Argument(help="Model directory.")],
        inputs: Annotated[list[Path], typer.Argument(help="KLARF, STDF, G85, LSWMD.pkl, .npz, PNG/NPY or folders.")],
        threads: ThreadsOpt = 2,
        runtime: RuntimeOpt = "torch",
        strict: StrictOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Classify every wafer in the inputs; uncertain or unusual ones are marked for review."""
        from itertools import islice

        from fabsight.deploy import load_predictor
        from fabsight.io import ReadLog, iter_maps

        clf = load_predictor(model_dir, runtime, n_threads=threads)
        rows = []
        log = ReadLog(strict=strict)
        stream = iter_maps(inputs, log)
        while maps := list(islice(stream, PREDICT_CHUNK)):
            rows += [
                {"source": m.source, "lot_id": m.lot_id, "wafer_id": m.wafer_id, "shape": list(m.shape), **d}
                for m, d in zip(maps, clf.predict_details(maps), strict=True)
            ]
        require_read(bool(rows), log, None, "the inputs hold no wafer maps")
        emit({"results": rows}, as_json, _print_predictions, log)

    app.add_typer(wafer, name="wafer")
