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

from fabsight.cli.common import (
    DeviceOpt,
    JsonOpt,
    StrictOpt,
    WaferModelOpt,
    emit,
    out,
    require_read,
    wafer_model,
    warn,
)
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


def _old_model_argument(model: Path | None, positional: Path) -> Path:
    """The model named the old way, as the first positional argument; with ``--model`` too it is
    ambiguous which one the user meant."""
    if model is not None:
        raise FabsightError(positional, "a model given both as --model and as the first argument")
    return positional


def _print_training(result: dict[str, Any]) -> None:
    v = result["metrics"].get("validation") or {}
    out.print(f"model written to {result['model']} ({len(result['classes'])} classes, head {result['head']})")
    out.print(f"  training started {result['training']['start']}", markup=False)
    for key in ("accuracy", "exact_match", "macro_f1", "ece_before_calibration", "ece_after_calibration"):
        if key in v:
            out.print(f"  validation {key}: {v[key]:.4f}")
    for st in (result["training"].get("self_training") or {}).get("rounds", []):
        kept = ", ".join(f"{c} {n}" for c, n in st["pseudo_labelled"].items() if n)
        out.print(f"  self-training round {st['round']}: pseudo-labels {kept or 'none'}")
    r = result["metrics"].get("review")
    source = f"{r['n']} harder review maps" if r else "held-out maps"
    out.print(f"  needs_review below confidence {result['review_threshold']:.3f} (learnt on {source})")


def _print_eval(result: dict[str, Any]) -> None:
    from rich.table import Table

    headline = "accuracy" if "accuracy" in result else "exact_match_accuracy"
    out.print(f"model: {result['model']}", markup=False)
    out.print(f"n={result['n']}  {headline}={result[headline]:.4f}  macro_f1={result['macro_f1']:.4f}")
    table = Table("class", "precision", "recall", "f1", "support")
    for name, row in (result.get("per_class") or result["per_label"]).items():
        table.add_row(name, f"{row['precision']:.3f}", f"{row['recall']:.3f}", f"{row['f1']:.3f}", str(row["support"]))
    out.print(table)


def _print_predictions(result: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table("source", "lot", "wafer", "label", "p", "review", caption=f"model: {result['model']}")
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
        unlabeled: Annotated[
            list[Path] | None,
            typer.Option(
                "--unlabeled",
                help="Maps without labels to self-train on (repeatable; any format; labels in them are ignored).",
            ),
        ] = None,
        rounds: Annotated[int, typer.Option(min=1, help="Self-training rounds (with --unlabeled).")] = 1,
        pseudo_threshold: Annotated[
            float,
            typer.Option(min=0.0, max=1.0, help="Least calibrated confidence of a pseudo-label (with --unlabeled)."),
        ] = 0.9,
        synthetic: Annotated[int, typer.Option(min=0, help="Add N generated maps per class.")] = 0,
        synthetic_profile: Annotated[
            str | None,
            typer.Option(
                help="With --synthetic: generator profile, wm811k (fitted to real WM-811K maps; default for "
                "single-label) or default (clean maps; default for multi-label).",
            ),
        ] = None,
        review_maps: Annotated[
            int,
            typer.Option(
                min=0,
                help="With --synthetic: N harder generated maps per class (shifted parameters, grids, noise) "
                "to learn the needs_review threshold on; 0 uses the held-out maps.",
            ),
        ] = 40,
        epochs: Annotated[
            int | None,
            typer.Option(
                min=1,
                help="Epochs (default: 15, each lengthened when training from scratch on few maps, "
                "so the run gets at least 4,000 gradient steps).",
            ),
        ] = None,
        input_size: Annotated[int | None, typer.Option(help="Model input side (default 64, or --init's).")] = None,
        init: Annotated[
            str | None,
            typer.Option(
                help="Start from this model directory, 'pretrained' (the shipped WM-811K model) or 'none' "
                "(from scratch). Default: the shipped model when DATA is single-label and its rarest class "
                "has at most 20 maps (few-shot), else from scratch.",
            ),
        ] = None,
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
            synthetic_profile=synthetic_profile,
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
            unlabeled=tuple(unlabeled or ()),
            rounds=rounds,
            pseudo_threshold=pseudo_threshold,
        )
        log = ReadLog(strict=strict)
        emit(_train(data or [], out_dir, val, recipe, log), as_json, _print_training, log)

    @wafer.command("eval")
    def evaluate_cmd(
        data: Annotated[Path, typer.Argument(help="Labelled maps (folder, LSWMD.pkl, .npz).")],
        old_data: Annotated[Path | None, typer.Argument(hidden=True)] = None,  # `eval MODEL DATA`, the old form
        model: WaferModelOpt = None,
        threads: ThreadsOpt = 2,
        runtime: RuntimeOpt = "torch",
        strict: StrictOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Score a model on labelled maps: accuracy, macro-F1, per class, confusion matrix."""
        from fabsight.artifacts import load
        from fabsight.io import ReadLog
        from fabsight.wafer import evaluate
        from fabsight.wafer.recipe import KNOWN_NAMES, harmonise, read_labelled

        if old_data is not None:
            model, data = _old_model_argument(model, data), old_data
        model_dir, name = wafer_model(model)
        clf = load(model_dir, runtime, task="wafer-pattern", n_threads=threads)
        log = ReadLog(strict=strict)
        with _warnings_as_lines():
            source = read_labelled(data, log)
            for line in harmonise([source], [*clf.classes_, "none", *KNOWN_NAMES]):
                warnings.warn(f"class names harmonised: {line}", stacklevel=1)
        if not source.maps:
            raise FabsightError(data, "no labelled maps to evaluate on")
        result = {"model": name, **evaluate(clf, source.maps)}
        result["n_unlabelled_skipped"] = source.n_unlabelled
        emit(result, as_json, _print_eval, log)

    @wafer.command("predict")
    def predict(
        inputs: Annotated[
            list[Path],
            typer.Argument(help="KLARF, STDF, G85, LSWMD.pkl, .npz, PNG/NPY or folders (a model directory "
                                "first, the old form, is taken as --model)."),
        ],
        model: WaferModelOpt = None,
        threads: ThreadsOpt = 2,
        runtime: RuntimeOpt = "torch",
        strict: StrictOpt = False,
        as_json: JsonOpt = False,
    ) -> None:
        """Classify every wafer in the inputs; uncertain or unusual ones are marked for review."""
        from itertools import islice

        from fabsight.artifacts import CARD_NAME, load
        from fabsight.io import ReadLog, iter_maps

        if len(inputs) > 1 and (inputs[0] / CARD_NAME).is_file():  # `predict MODEL INPUTS…`, the old form
            model, inputs = _old_model_argument(model, inputs[0]), inputs[1:]
        model_dir, name = wafer_model(model)
        clf = load(model_dir, runtime, task="wafer-pattern", n_threads=threads)
        rows = []
        log = ReadLog(strict=strict)
        stream = iter_maps(inputs, log)
        while maps := list(islice(stream, PREDICT_CHUNK)):
            rows += [
                {"source": m.source, "lot_id": m.lot_id, "wafer_id": m.wafer_id, "shape": list(m.shape), **d}
                for m, d in zip(maps, clf.predict_details(maps), strict=True)
            ]
        require_read(bool(rows), log, None, "the inputs hold no wafer maps")
        emit({"model": name, "results": rows}, as_json, _print_predictions, log)

    app.add_typer(wafer, name="wafer")
