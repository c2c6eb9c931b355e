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
    from fabsight.wafer.recipe import Recipe

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


def _train(data: list[Path], out_dir: Path, val: Path | None, recipe: Recipe, log: ReadLog) -> dict[str, Any]:
    from fabsight.wafer import train

    with _warnings_as_lines():
        clf = train(data, val, recipe, log=log)
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
            list[Path] | None,
            typer.Argument(help="Labelled sources, any number and formats: ROOT/CLASS/ folders, LSWMD .pkl, .npz."),
        ] = None,
        val: Annotated[
            Path | None,
            typer.Option(
                "--val",
                help="Held-out labelled maps for early stopping, calibration and the review threshold "
                "(default: a stratified 20 % of DATA).",
            ),
        ] = None,
        max_minutes: Annotated[
            float | None,
            typer.Option("--max-minutes", min=0.01, help="Wall-clock budget of the training steps (minutes)."),
        ] = None,
        class_balance: Annotated[
            str | None,
            typer.Option(help="Unequal classes: sampling, sqrt, loss or none (default: the estimator's)."),
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
            typer.Option(
                help="Network size: compact (default), medium (mixed-type), wide (teacher), small, tiny, micro."
            ),
        ] = "compact",
        device: DeviceOpt = "auto",
        strict: StrictOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Train (or fine-tune) a wafer-pattern classifier on every labelled map of DATA and write a model directory."""
        from fabsight.io import ReadLog
        from fabsight.wafer.recipe import Recipe

        recipe = Recipe(
            synthetic=synthetic,
            review_per_class=review_maps,
            epochs=epochs,
            input_size=input_size,
            init=init,
            head=head,
            multilabel=multilabel,
            seed=seed,
            threads=threads,
            arch=arch,
            device=device,
            max_minutes=max_minutes,
            class_balance=class_balance,
        )
        log = ReadLog(strict=strict)
        emit(_train(data or [], out_dir, val, recipe, log), as_json, _print_training, log)

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
        from fabsight.wafer.recipe import KNOWN_NAMES, harmonise, read_labelled

        clf = load_predictor(model_dir, runtime, n_threads=threads)
        log = ReadLog(strict=strict)
        with _warnings_as_lines():
            source = read_labelled(data, log)
            for line in harmonise([source], [*clf.classes_, "none", *KNOWN_NAMES]):
                warnings.warn(f"class names harmonised: {line}", stacklevel=1)
        if not source.maps:
            raise FabsightError(data, "no labelled maps to evaluate on")
        result = evaluate(clf, source.maps)
        result["n_unlabelled_skipped"] = source.n_unlabelled
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
