"""``fabsight die``: die-image defect classification with foundation-model features."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from fabsight.cli.common import DeviceOpt, JsonOpt, StrictOpt, emit, out, require_read
from fabsight.cli.deploy import RuntimeOpt
from fabsight.errors import FabsightError
from fabsight.utils.device import resolve_device

BackboneOpt = Annotated[
    str, typer.Option("--backbone", help="efficientnet_lite0, dinov2_vits14, timm:<model> (with --weights) or a dir.")
]
WeightsOpt = Annotated[Path | None, typer.Option("--weights", help="Local checkpoint for the backbone.")]
InputSizeOpt = Annotated[
    int | None, typer.Option("--input-size", min=16, help="Square input size (default: the backbone's).")
]

TtaOpt = Annotated[bool, typer.Option(
    "--tta", help="Fine-tuned models: average the logits over 8 flips/turns of each image (8× slower).")]


def _metrics_table(title: str, m: dict[str, Any]) -> None:
    from rich.table import Table

    t = Table(title=title)
    for col in ("class", "precision", "recall", "f1", "support"):
        t.add_column(col, justify="right" if col != "class" else "left")
    for c, v in m["per_class"].items():
        t.add_row(c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", str(v["support"]))
    out.print(t)
    out.print(f"accuracy {m['accuracy']:.4f}  balanced accuracy {m['balanced_accuracy']:.4f}  "
              f"macro-F1 {m['macro_f1']:.4f}  (n = {m['n']})", markup=False)
    if "interval" in m:
        ci = m["interval"]
        out.print(f"{ci['level']:.0%} bootstrap interval: accuracy {ci['accuracy'][0]:.4f}–{ci['accuracy'][1]:.4f}, "
                  f"balanced accuracy {ci['balanced_accuracy'][0]:.4f}–{ci['balanced_accuracy'][1]:.4f}", markup=False)


def _print_search(record: dict[str, Any]) -> None:
    """The --auto search in a few lines: the best candidates, the winner and why, the notes."""
    out.print(f"searched {len(record['candidates'])} candidates, {record['repeats']}× {record['folds']}-fold CV "
              f"({record['seconds'].get('total', 0):.0f} s); best:", markup=False)
    for c in record["candidates"][:5]:
        out.print(f"  {c['cv_mean']:.4f} ± {c['cv_sd']:.4f}  {c['name']}", markup=False)
    out.print(f"chosen: {record['winner']}: {record['why']}", markup=False)
    for note in record["notes"]:
        out.print(f"note: {note}", markup=False)


KlarfClassesOpt = Annotated[str | None, typer.Option(
    "--classes", help="KLARF input: the manual class numbers to learn and their names, e.g. 1=particle,2=scratch "
                      "(default: the file's class lookup, less 0 / unclassified).")]
KlarfImagesOpt = Annotated[list[Path] | None, typer.Option(
    "--images", help="KLARF input: a folder where image references are also looked up (repeat).")]


def _data_kind(data: list[Path]) -> str:
    """``folder`` (one DATA/CLASS tree) or ``klarf`` (KLARF files with manual classes)."""
    if len(data) == 1 and not data[0].is_file():
        return "folder"  # a missing folder is reported by the folder reader
    for p in data:
        if not p.is_file():
            raise FabsightError(p, "expected one DATA/CLASS folder or KLARF files; this is "
                                   + ("a folder among several inputs" if p.is_dir() else "not a file"))
    return "klarf"


def _with_klarf_folder(data: list[Path], classes: str | None, images: list[Path] | None,
                       use: Callable[[Path], Any]) -> tuple[Any, dict[str, Any] | None]:
    """Run ``use(folder)`` on DATA itself, or on a class folder laid out from KLARF review history."""
    if _data_kind(data) == "folder":
        return use(data[0]), None
    import tempfile

    from fabsight.adc.history import klarf_image_folder, parse_classes

    with tempfile.TemporaryDirectory(prefix="fabsight-klarf-") as tmp:
        summary = klarf_image_folder(data, tmp, classes=parse_classes(classes) if classes else None,
                                     images=images or ())
        return use(Path(tmp)), summary


def _train_folder(folder: Path, out_dir: Path, auto: bool, options: dict[str, Any]) -> Any:
    """``die train`` on one DATA/CLASS folder: the --auto search, or the named method and backbone."""
    from fabsight.die.model import train as train_model

    if auto:
        from fabsight.die.auto import BUILTIN_BACKBONES, train_auto

        backbone = options["backbone"]
        return train_auto(folder, out_dir, extra_backbone=None if backbone in (None, *BUILTIN_BACKBONES) else backbone,
                          weights=options["weights"], input_size=options["input_size"],
                          max_minutes=options["max_minutes"], cv_folds=options["cv_folds"], device=options["device"],
                          log=options["log"])
    return train_model(folder, out_dir, **{**options, "backbone": options["backbone"] or "dinov2_vits14",
                                           "method": options["method"] or "probe"})


def train(
    data: Annotated[list[Path], typer.Argument(
        help="Labelled images: DATA/CLASS/*.png|jpg|bmp|tif, or KLARF files whose defects carry manual class "
             "numbers and review images.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Model directory to write (replaced atomically).")],
    backbone: Annotated[str | None, typer.Option(
        "--backbone", help="efficientnet_lite0, dinov2_vits14 (default without --auto), timm:<model> (with "
                           "--weights) or a dir; with --auto a timm: or dir backbone joins the search.")] = None,
    weights: WeightsOpt = None,
    method: Annotated[
        str | None, typer.Option("--method", help="probe (default without --auto), hybrid (deep+GLCM+Zernike), "
                                                  "hierarchical or finetune.")
    ] = None,
    auto: Annotated[bool | None, typer.Option(
        "--auto/--no-auto", help="Choose backbone, layers, input size and probe/hybrid by repeated cross-validation "
                                 "on DATA within --max-minutes (default when no --method, --backbone or --layers).")
    ] = None,
    layers: Annotated[list[str] | None, typer.Option("--layers", help="Backbone layer(s) to pool; repeat.")] = None,
    augment: Annotated[bool, typer.Option("--augment", help="Add flipped/rotated/brightness variants.")] = False,
    handcrafted: Annotated[
        bool | None,
        typer.Option("--handcrafted/--no-handcrafted", help="Override the method's GLCM+Zernike choice."),
    ] = None,
    groups: Annotated[
        Path | None, typer.Option("--groups", help="JSON/YAML {group: [classes]} (hierarchical).")
    ] = None,
    ok_class: Annotated[str | None, typer.Option("--ok-class", help="The no-defect class (hierarchical).")] = None,
    cv: Annotated[int, typer.Option("--cv", min=0, help="Folds for the card's cross-validated metrics (0: none).")] = 5,
    c: Annotated[float, typer.Option("--C", min=1e-6, help="Inverse regularisation of the probes.")] = 0.5,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Most fine-tuning epochs (finetune).")] = 15,
    max_minutes: Annotated[
        float | None, typer.Option("--max-minutes", min=0.1,
                                   help="Time budget: of fine-tuning (finetune) or of the --auto search (default 20).")
    ] = None,
    unlabeled: Annotated[
        Path | None,
        typer.Option("--unlabeled", help="Folder of unlabeled images (any depth, sub-folder names ignored) to "
                     "self-train on with pseudo-labels (finetune)."),
    ] = None,
    pseudo_threshold: Annotated[
        float, typer.Option("--pseudo-threshold",
                            help="Least calibrated confidence for a pseudo-label (with --unlabeled).")
    ] = 0.9,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Self-training rounds (with --unlabeled).")] = 1,
    max_unlabeled: Annotated[
        int | None,
        typer.Option("--max-unlabeled", min=1, help="Use at most this many unlabeled images (a seeded sample)."),
    ] = None,
    pseudo_tta: Annotated[
        bool, typer.Option("--pseudo-tta/--no-pseudo-tta",
                           help="Pseudo-label from logits averaged over 8 flips/turns (with --unlabeled).")
    ] = True,
    student_epochs: Annotated[
        int | None, typer.Option("--student-epochs", min=1,
                                 help="Epochs of each self-training student (default: --epochs).")
    ] = None,
    student_early_stop: Annotated[
        bool, typer.Option("--student-early-stop/--student-full-schedule",
                           help="Stop students on the labelled validation split, or run their whole "
                                "schedule and keep the last weights (with --unlabeled).")
    ] = False,
    min_change: Annotated[
        float | None, typer.Option("--min-change", min=0.0, max=1.0,
                                   help="Stop self-training once a round's pseudo-labels differ from the "
                                        "previous round's on less than this share of the pool, e.g. 0.04 "
                                        "(with --unlabeled; default: run every round).")
    ] = None,
    input_size: InputSizeOpt = None,
    klarf_classes: KlarfClassesOpt = None,
    klarf_images: KlarfImagesOpt = None,
    device: DeviceOpt = "auto",
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Train a die defect classifier on frozen backbone features, or fine-tune the backbone
    (optionally self-training on unlabeled images); from image folders or a fab's reviewed KLARFs."""
    from fabsight.die.model import load_groups
    from fabsight.io import ReadLog

    log = ReadLog(strict=strict)
    if auto is None:
        auto = method is None and backbone is None and not layers
    if auto and (method is not None or layers or unlabeled is not None):
        raise FabsightError(data[0], "--auto chooses the method and layers among frozen-feature probes: drop "
                            "--method / --layers / --unlabeled, or pass --no-auto")
    options = dict(
        backbone=backbone, weights=weights, method=method, layers=layers, augment=augment, handcrafted=handcrafted,
        groups=load_groups(groups) if groups else None, ok_class=ok_class, input_size=input_size, C=c, cv_folds=cv,
        device=resolve_device(device), epochs=epochs, max_minutes=max_minutes, unlabeled=unlabeled,
        pseudo_threshold=pseudo_threshold, rounds=rounds, max_unlabeled=max_unlabeled, pseudo_tta=pseudo_tta,
        student_epochs=student_epochs, student_early_stop=student_early_stop, min_change=min_change, log=log,
    )
    result, from_klarf = _with_klarf_folder(data, klarf_classes, klarf_images,
                                            lambda folder: _train_folder(folder, out_dir, auto, options))
    card = result.card
    if from_klarf is not None:  # the card names the KLARFs, not the temporary folder laid out from them
        from fabsight.artifacts import save_card

        card.training["data"] = from_klarf["klarfs"]
        card.training["from_klarf"] = from_klarf
        save_card(result.out_dir, card)
    summary = {"model": str(result.out_dir), "classes": card.classes, "backbone": card.backbone,
               "training": card.training, "metrics": card.metrics, "hierarchy": card.extra.get("hierarchy")}

    def human(s: dict[str, Any]) -> None:
        out.print(f"wrote {s['model']}: {len(s['classes'])} classes, {s['training']['n_images']} images, "
                  f"{s['training']['method']} on {s['backbone']['name']} {s['backbone']['layers']}", markup=False)
        self_training = s["training"].get("self_training") or {}
        for r in self_training.get("rounds", []):
            if "val_accuracy" not in r:  # no student this round: "stopped" says why
                continue
            out.print(f"self-training round {r['round']}: {sum(r['pseudo_labelled'].values())} of {r['n_pool']} "
                      f"unlabeled images pseudo-labelled (≤ {r['cap_per_class']} per class), student validation "
                      f"accuracy {r['val_accuracy']:.4f}", markup=False)
        if s["training"].get("auto"):
            _print_search(s["training"]["auto"])
        if self_training.get("stopped"):
            out.print(f"self-training stopped at {self_training['stopped']}; the previous model stands", markup=False)
        if "per_class" in s["metrics"]:
            _metrics_table(s["metrics"]["measured_on"], s["metrics"])

    emit(summary, as_json, human, log)


def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="Model directory from 'fabsight die train'.")],
    data: Annotated[list[Path], typer.Argument(
        help="Labelled test images: DATA/CLASS/*, or KLARF files with manual class numbers (scored per defect, "
             "as 'fabsight adc' classifies them).")],
    klarf_classes: KlarfClassesOpt = None,
    klarf_images: KlarfImagesOpt = None,
    device: DeviceOpt = "auto",
    runtime: RuntimeOpt = "torch",
    tta: TtaOpt = False,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Accuracy, balanced accuracy, macro-F1, per-class scores and confusion on labelled images or KLARFs."""
    from fabsight.die.embeddings import default_cache
    from fabsight.io import ReadLog

    log = ReadLog(strict=strict)
    model = _load(model_dir, device, runtime)
    title = f"{model_dir} on {', '.join(str(d) for d in data)}"
    if _data_kind(data) == "klarf":
        from fabsight.adc.history import evaluate_klarfs, parse_classes

        result = evaluate_klarfs(model, data, classes=parse_classes(klarf_classes) if klarf_classes else None,
                                 images=klarf_images or (), tta=tta)
        emit(result, as_json, lambda m: _metrics_table(title + " (per defect)", m))
        return
    result = model.evaluate(data[0], cache=default_cache(), tta=tta, log=log)
    emit(result, as_json, lambda m: _metrics_table(title, m), log)


def _load(model_dir: Path, device: str, runtime: str) -> Any:
    """A die model on ``runtime``; the ONNX runtimes run on the CPU without torch (no device to resolve)."""
    from fabsight.artifacts import load

    if runtime == "torch":
        return load(model_dir, task="die-classifier", device=resolve_device(device))
    return load(model_dir, runtime, task="die-classifier")


def predict(
    model_dir: Annotated[Path, typer.Argument(help="Model directory from 'fabsight die train'.")],
    images: Annotated[list[Path], typer.Argument(help="Image files and/or folders of images.")],
    top: Annotated[int, typer.Option("--top", min=1, help="How many ranked labels to report.")] = 3,
    device: DeviceOpt = "auto",
    runtime: RuntimeOpt = "torch",
    tta: TtaOpt = False,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Label, calibrated confidence, top-k and needs_review for each image."""
    from fabsight.die.data import expand_inputs
    from fabsight.io import ReadLog

    log = ReadLog(strict=strict)
    paths = expand_inputs(images, log)
    require_read(bool(paths), log, None, "no images given")
    model = _load(model_dir, device, runtime)
    decisions = [{"path": str(p), **d} for p, d in zip(paths, model.predict(paths, top_k=top, tta=tta), strict=True)]

    def human(s: dict[str, Any]) -> None:
        for r in s["results"]:
            flag = f"  NEEDS REVIEW ({', '.join(r['review_reasons'])})" if r["needs_review"] else ""
            out.print(f"{r['path']}: {r['label']} {r['confidence']:.2f}{flag}", markup=False)

    emit({"results": decisions}, as_json, human, log)


def adapt(
    unlabeled: Annotated[Path, typer.Argument(help="Folder of unlabeled die images (any depth).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Backbone directory to write; usable as --backbone.")],
    backbone: BackboneOpt = "dinov2_vits14",
    weights: WeightsOpt = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1)] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", min=2)] = 32,
    local_crops: Annotated[int, typer.Option("--local-crops", min=0, help="Local crops per image.")] = 4,
    lr: Annotated[float, typer.Option("--lr", min=0.0, help="Peak learning rate of the backbone.")] = 2e-5,
    head_lr: Annotated[float, typer.Option("--head-lr", min=0.0, help="Learning rate of the projection head.")] = 1e-3,
    head_warmup: Annotated[
        float, typer.Option("--head-warmup", min=0.0, max=0.49, help="Share of steps that train the head alone.")
    ] = 0.2,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run checkpointed in --out.")] = False,
    input_size: InputSizeOpt = None,
    device: DeviceOpt = "auto",
    workers: Annotated[
        int | None,
        typer.Option("--workers", min=0, help="Processes making the crops (default: most cores on a GPU, 0 on CPU)."),
    ] = None,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """DINO self-distillation of a backbone on unlabeled images (domain adaptation)."""
    from fabsight.die.adapt import adapt as run_adapt
    from fabsight.io import ReadLog

    log = ReadLog(strict=strict)
    result = run_adapt(unlabeled, out_dir, backbone=backbone, weights=weights, epochs=epochs, batch_size=batch_size,
                       n_local=local_crops, lr=lr, head_lr=head_lr, head_warmup=head_warmup, resume=resume,
                       input_size=input_size, device=resolve_device(device), workers=workers, log=log)
    emit(result, as_json, lambda r: out.print(
        f"wrote {r['out']}: {r['epochs']} epochs on {r['n_images']} images ({r['device']}), "
        f"loss {r['loss_per_epoch'][0]:.3f} → {r['loss_per_epoch'][-1]:.3f}", markup=False), log)


def discover(
    folder: Annotated[Path, typer.Argument(help="Folder of die images (any depth; class folders are only compared).")],
    backbone: BackboneOpt = "dinov2_vits14",
    weights: WeightsOpt = None,
    method: Annotated[str, typer.Option("--method", help="auto, hdbscan or kmeans.")] = "auto",
    reduce_with: Annotated[str, typer.Option("--reduce", help="pca or umap.")] = "pca",
    max_k: Annotated[int, typer.Option("--max-k", min=2, help="Largest k tried by k-means.")] = 15,
    html_out: Annotated[Path | None, typer.Option("--out", help="Write an HTML contact sheet here.")] = None,
    layers: Annotated[list[str] | None, typer.Option(
        "--layers", help="Backbone layer(s) to pool; repeat (default: each candidate set tried, best separated kept).")
    ] = None,
    export: Annotated[Path | None, typer.Option(
        "--export", help="Write DIR/cluster_NN/ label folders (symlinks) and DIR/review.json, one item per cluster "
                         "to name.")] = None,
    input_size: InputSizeOpt = None,
    device: DeviceOpt = "auto",
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Cluster images by their embeddings to surface defect types; optional HTML contact sheet."""
    from fabsight.die.discover import discover_folder
    from fabsight.io import ReadLog

    log = ReadLog(strict=strict)
    result = discover_folder(folder, backbone=backbone, weights=weights, method=method, reduce_with=reduce_with,
                             k_range=range(2, max_k + 1), layers=layers, html_out=html_out, export=export,
                             input_size=input_size,
                             device=resolve_device(device), log=log)

    def human(r: dict[str, Any]) -> None:
        for row in r["layer_search"]:
            chosen = "  (chosen)" if row.get("chosen") else ""
            out.print(f"  layers {'+'.join(row['layers'])}: {row['n_clusters']} clusters, silhouette "
                      f"{row['silhouette']:.3f}, stability {row['stability']:.3f}{chosen}", markup=False)
        out.print(f"{r['n_images']} images → {r['n_clusters']} clusters ({r['clustering']['method']})", markup=False)
        for cl in r["clusters"]:
            out.print(f"  cluster {cl['id']}: {cl['size']} images, e.g. {cl['representatives'][0]}", markup=False)
        if r.get("agreement"):
            out.print(f"agreement with folder names: {r['agreement']}", markup=False)
        if r.get("export"):
            out.print(f"wrote {r['export']['folder']}: {r['export']['items']} cluster folders to name "
                      "(review.json)", markup=False)

    emit(result, as_json, human, log)


def register(app: typer.Typer) -> None:
    die = typer.Typer(help="Die-image defect classification (foundation-model features).", no_args_is_help=True)
    die.command("train")(train)
    die.command("eval")(evaluate)
    die.command("predict")(predict)
    die.command("adapt")(adapt)
    die.command("discover")(discover)
    app.add_typer(die, name="die")
