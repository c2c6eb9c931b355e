"""``fabsight anomaly``: learn good surfaces, then find and outline what is not."""

from __future__ import annotations

import random
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from fabsight.cli.common import JsonOpt, StrictOpt, emit, out, require_read, warn
from fabsight.cli.deploy import RuntimeOpt
from fabsight.errors import FabsightError

sub = typer.Typer(help="Anomaly detection and localisation from good images only (PatchCore, PaDiM, recon, "
                       "teacher–student).",
                  no_args_is_help=True)


class Method(StrEnum):
    patchcore = "patchcore"
    padim = "padim"
    recon = "recon"
    student = "student"


class ThresholdFrom(StrEnum):
    good = "good"
    val = "val"


_MODEL = "Model"
_THR = "Threshold"


def _set_threads(threads: int | None) -> None:
    import torch

    if threads is not None:
        if threads < 1:
            raise FabsightError(None, f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)


def _read_all(records: list[Any], description: str) -> list[Any]:
    from fabsight.die.data import read_image
    from fabsight.utils.progress import track

    return [read_image(r.path) for r in track(records, description)]


@sub.command("prepare-magnetic-tile")
def prepare_magnetic_tile(
    src: Annotated[Path, typer.Argument(help="The magnetic-tile dataset (folders MT_<Class>/Imgs).")],
    dst: Annotated[Path, typer.Argument(help="Where to build the MVTec layout (outside the repository).")],
    train_fraction: Annotated[float, typer.Option(help="Share of MT_Free used for training.")] = 0.8,
    seed: Annotated[int, typer.Option(help="Shuffle seed for the good-image split.")] = 0,
    copy: Annotated[bool, typer.Option("--copy", help="Copy files instead of symlinking them.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty destination.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Arrange magnetic tile as ROOT/train/good, ROOT/test/<type>, ROOT/ground_truth/<type>."""
    from fabsight.anomaly.datasets import build_mvtec_layout_from_magnetic_tile

    counts = build_mvtec_layout_from_magnetic_tile(src, dst, train_fraction, seed, copy=copy, overwrite=overwrite)
    emit({"root": str(dst), "counts": counts}, as_json,
         lambda r: out.print(f"{r['root']}: " + ", ".join(f"{k} {v}" for k, v in r["counts"].items())))


@sub.command("fit")
def fit(
    root: Annotated[Path, typer.Argument(help="MVTec-layout dataset: ROOT/train/good (+ ROOT/test to evaluate).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Model directory to write.")],
    method: Annotated[Method, typer.Option(
        help="patchcore: memory bank; padim: per-position Gaussians; recon: UNet trained on synthetic defects; "
             "student: small network trained to imitate the backbone, anomaly = disagreement.")] = Method.patchcore,
    backbone: Annotated[str, typer.Option(help="Backbone for patchcore/padim: a name, timm:<model> or a "
                                               "directory.", rich_help_panel=_MODEL)] = "efficientnet_lite0",
    backbone_weights: Annotated[Path | None, typer.Option(help="Local weights file for the backbone.",
                                                          rich_help_panel=_MODEL)] = None,
    layers: Annotated[list[str] | None, typer.Option("--layers", help="Backbone layers (repeat); default: "
                                                     "measured per backbone.", rich_help_panel=_MODEL)] = None,
    input_size: Annotated[int | None, typer.Option(help="Network input side in pixels (default 256).",
                                                   rich_help_panel=_MODEL)] = None,
    tile: Annotated[int | None, typer.Option(help="Cut images into overlapping tiles of this many pixels "
                                                  "(keeps small defects in big images); 0 = never tile. Default: "
                                                  "chosen from image size and defect scale.",
                                             rich_help_panel=_MODEL)] = None,
    tile_overlap: Annotated[float, typer.Option(rich_help_panel=_MODEL)] = 0.25,
    max_aspect: Annotated[float | None, typer.Option(help="Images longer than this (long/short side) keep their "
                                                          "aspect ratio and are cut along the long side; 0 = squash "
                                                          "every image to a square. Default 1.5.",
                                                     rich_help_panel=_MODEL)] = None,
    auto: Annotated[bool, typer.Option("--auto/--no-auto", help="Choose unset input settings from the training "
                                       "images and defect masks (--no-auto: 256 px, squashed, no tiling).",
                                       rich_help_panel=_MODEL)] = True,
    coreset_ratio: Annotated[float, typer.Option(help="patchcore: share of patches kept.",
                                                 rich_help_panel=_MODEL)] = 0.01,
    max_bank: Annotated[int, typer.Option(help="patchcore: memory-bank cap (patches).",
                                          rich_help_panel=_MODEL)] = 10_000,
    steps: Annotated[int | None, typer.Option(help="recon, student: training steps (default 1500 for recon, 600 "
                                                   "for student).", rich_help_panel=_MODEL)] = None,
    holdout: Annotated[float, typer.Option(help="Share of train/good held out to choose the threshold.",
                                           rich_help_panel=_THR)] = 0.2,
    threshold_from: Annotated[ThresholdFrom, typer.Option(help="good: target false-alarm rate on held-out good "
                                                                "images; val: best F1 on --val ROOT's test split.",
                                                          rich_help_panel=_THR)] = ThresholdFrom.good,
    false_alarm_rate: Annotated[float, typer.Option(help="Target share of good images flagged.",
                                                    rich_help_panel=_THR)] = 0.01,
    val: Annotated[Path | None, typer.Option(help="MVTec-layout root with defects for --threshold-from val.",
                                             rich_help_panel=_THR)] = None,
    evaluate_test: Annotated[bool, typer.Option("--eval/--no-eval", help="Evaluate on ROOT/test when present "
                                                "and store the metrics in the card.")] = True,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Torch CPU threads (default: torch's choice).")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Learn what good looks like from ROOT/train/good, choose a threshold, save a model directory."""
    from fabsight.anomaly.datasets import load_split
    from fabsight.anomaly.evaluate import evaluate
    from fabsight.anomaly.persist import make_model, save_model
    from fabsight.io import ReadLog

    _set_threads(threads)
    if not 0.0 <= holdout < 1.0:
        raise FabsightError(None, f"--holdout must be in [0, 1), got {holdout}")
    if threshold_from is ThresholdFrom.val and val is None:
        raise FabsightError(None, "--threshold-from val needs --val ROOT (an MVTec-layout root with defects)")
    if threshold_from is ThresholdFrom.good and holdout == 0.0:
        raise FabsightError(None, "--threshold-from good needs held-out good images: use --holdout > 0")
    log = ReadLog(strict=strict)
    train = load_split(root, "train", log)
    val_records = load_split(val, "test", log) if threshold_from is ThresholdFrom.val else []  # type: ignore[arg-type]
    test_records = load_split(root, "test", log) if evaluate_test and (root / "test").is_dir() else []
    random.Random(seed).shuffle(train)
    n_hold = max(1, round(holdout * len(train))) if threshold_from is ThresholdFrom.good else 0
    if n_hold >= len(train):
        raise FabsightError(root / "train" / "good", f"only {len(train)} good images: too few to hold "
                                                     f"{n_hold} out for the threshold")
    fit_records, hold_records = train[n_hold:], train[:n_hold]
    fit_images = _read_all(fit_records, "anomaly: reading training images")
    choice = _choose_input(auto, fit_images, fit_records, val_records or test_records, root,
                           input_size=input_size, tile=tile, max_aspect=max_aspect)
    params: dict[str, Any] = {**choice.params(), "tile_overlap": tile_overlap, "device": device, "seed": seed}
    if method is Method.recon:
        params["steps"] = steps or 1500
        if layers or backbone_weights or backbone != "efficientnet_lite0":
            warn("--backbone, --backbone-weights and --layers do not apply to --method recon (it has its own UNet)")
        from fabsight.utils.device import resolve_device

        if resolve_device(device) == "cpu":
            # Measured (docs/benchmarks.md): even a width-8 UNet took ~0.8 s a step on a
            # shared 2-core CPU, and 1,000 steps gave only image AUROC 0.67 on magnetic tile.
            warn(f"recon is training on the CPU: {params['steps']} steps can take tens of minutes and gave weak "
                 "models in CPU budgets (docs/benchmarks.md); train it on a GPU (--device cuda) or use --method "
                 "patchcore")
    else:
        params.update(backbone=backbone, backbone_weights=None if backbone_weights is None else str(backbone_weights),
                      layers=list(layers) if layers else None)
        if method is Method.patchcore:
            params.update(coreset_ratio=coreset_ratio, max_bank=max_bank)
        if method is Method.student and steps is not None:
            params["steps"] = steps
    model = make_model(method.value, **params)
    model.fit(fit_images)
    if threshold_from is ThresholdFrom.good:
        model.calibrate_good(_read_all(hold_records, "anomaly: reading held-out good images"), false_alarm_rate)
        chosen_on = f"{n_hold} held-out images of {root / 'train' / 'good'} (not used for fitting)"
    else:
        model.calibrate_f1(_read_all(val_records, "anomaly: reading validation images"),
                           [int(r.is_anomalous) for r in val_records])
        chosen_on = f"{len(val_records)} images of {Path(val) / 'test'}"  # type: ignore[arg-type]
    model.threshold_.details["chosen_on"] = chosen_on  # type: ignore[union-attr]
    metrics: dict[str, Any] = {}
    if test_records:
        metrics = {"test": evaluate(model, test_records), "measured_on": str(root / "test")}
    training = {"root": str(root), "n_held_out_for_threshold": n_hold, "seed": seed,
                "input_choice": choice.to_dict()}
    save_model(model, out_dir, training=training, metrics=metrics)
    result = {"model": str(out_dir), "method": method.value, "n_train_images": len(fit_records),
              "input": {**choice.params(), "reasons": choice.reasons},
              "threshold": model.threshold_.to_dict(),  # type: ignore[union-attr]
              "threshold_meaning": model.threshold_.describe(),  # type: ignore[union-attr]
              "fit_seconds": round(model.fit_seconds_, 1), "metrics": metrics}
    emit(result, as_json, _print_fit, log)


def _choose_input(auto: bool, images: list[Any], records: list[Any], with_masks: list[Any], root: Path,
                  **given: Any) -> Any:
    """Input size, tiling and aspect handling: the user's, then (with ``auto``) chosen from the images
    and the defect masks of ``with_masks`` (validation, else test records), each with its reason."""
    from fabsight.anomaly.auto import InputChoice, choose_input, defect_diameters, survey_images

    if not auto:
        tile = given["tile"] or None
        aspect = given["max_aspect"] or None
        return InputChoice(given["input_size"] or 256, tile, aspect,
                           reasons=["--no-auto: fixed defaults where not set (256 px, squashed, no tiling)"])
    facts = survey_images(images, [r.path for r in records])
    masks = [r.mask_path for r in with_masks if r.mask_path is not None]
    if not masks and (root / "ground_truth").is_dir() and (root / "test").is_dir():
        from fabsight.anomaly.datasets import load_split

        masks = [r.mask_path for r in load_split(root, "test") if r.mask_path is not None]
    source = f"{len(masks)} masks under {Path(masks[0]).parent.parent}" if masks else ""
    choice = choose_input(facts, defect_diameters(masks) if masks else None, defect_source=source, **given)
    for w in choice.warnings:
        warn(w)
    return choice


def _print_fit(r: dict[str, Any]) -> None:
    out.print(f"{r['model']}: {r['method']} on {r['n_train_images']} good images in {r['fit_seconds']} s",
              markup=False)
    i = r["input"]
    out.print(f"input {i['input_size']} px, tile {i['tile'] or 'off'}, aspect kept beyond "
              f"{i['max_aspect'] or 'never'}: " + "; ".join(i["reasons"]), markup=False)
    out.print(f"threshold {r['threshold_meaning']}", markup=False)
    if r["metrics"]:
        _print_eval(r["metrics"]["test"])


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def _print_eval(m: dict[str, Any]) -> None:
    out.print(f"{m['n_images']} test images ({m['n_anomalous']} anomalous): image AUROC {_fmt(m['image_auroc'])}, "
              f"pixel AUROC {_fmt(m['pixel_auroc'])}, AUPRO {_fmt(m['aupro'])}, F1 {_fmt(m['f1'])} and "
              f"defect regions found {_fmt(m.get('region_recall'))} at threshold {_fmt(m['threshold'])}, "
              f"{m['ms_per_image']:.1f} ms/image", markup=False)


@sub.command("eval")
def eval_(
    model_dir: Annotated[Path, typer.Argument(help="Model directory written by 'fabsight anomaly fit'.")],
    root: Annotated[Path, typer.Argument(help="MVTec-layout dataset whose test split is measured.")],
    threshold: Annotated[float | None, typer.Option(help="Use this threshold instead of the card's.")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Torch (or ONNX Runtime) CPU threads.")] = None,
    runtime: RuntimeOpt = "torch",
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Image AUROC, pixel AUROC, AUPRO, F1 at the threshold, ms/image and peak memory on ROOT/test."""
    from fabsight.anomaly.datasets import load_split
    from fabsight.anomaly.evaluate import evaluate
    from fabsight.io import ReadLog

    log = ReadLog(strict=strict)
    records = load_split(root, "test", log)
    model = _load(model_dir, runtime, device, threads)
    emit(evaluate(model, records, threshold=threshold), as_json, _print_eval, log)


def _load(model_dir: Path, runtime: str, device: str, threads: int | None) -> Any:
    """The model on ``runtime``; torch's thread count is set only when torch runs it."""
    from fabsight.artifacts import load

    if runtime == "torch":
        _set_threads(threads)
    elif threads is not None and threads < 1:
        raise FabsightError(None, f"--threads must be at least 1, got {threads}")
    return load(model_dir, runtime, task="anomaly", device=device, n_threads=threads or 2)


@sub.command("predict")
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Model directory written by 'fabsight anomaly fit'.")],
    images: Annotated[list[Path], typer.Argument(help="Image files or folders of images.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for heat maps, masks and predictions.json.")],
    threshold: Annotated[float | None, typer.Option(help="Override the card's threshold.")] = None,
    pixel_size: Annotated[float | None, typer.Option(help="Side of one image pixel in µm: defect areas are "
                                                          "also given in µm².")] = None,
    min_area: Annotated[int, typer.Option(help="Smallest defect region counted, in pixels.")] = 1,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "auto",
    threads: Annotated[int | None, typer.Option(help="Torch (or ONNX Runtime) CPU threads.")] = None,
    runtime: RuntimeOpt = "torch",
    strict: StrictOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Score images and count their defects: connected regions above the threshold with area, box and peak.

    Writes <stem>_heatmap.png, <stem>_mask.png and <stem>_regions.png (numbered boxes) per
    image, and predictions.json with the regions per image and a count and size histogram per folder.
    """
    from fabsight.anomaly.regions import defect_regions, folder_summary
    from fabsight.anomaly.render import write_heatmap, write_mask, write_regions
    from fabsight.die.data import expand_inputs, read_image
    from fabsight.io import ReadLog
    from fabsight.utils.atomic import write_json
    from fabsight.utils.progress import track

    if pixel_size is not None and not pixel_size > 0:
        raise FabsightError(None, f"--pixel-size must be positive (µm per pixel), got {pixel_size}")
    if min_area < 1:
        raise FabsightError(None, f"--min-area must be at least 1 pixel, got {min_area}")
    model = _load(model_dir, runtime, device, threads)
    t = model.resolve_threshold(threshold)
    log = ReadLog(strict=strict)
    files = expand_inputs(images, log)
    require_read(bool(files), log, None, "no images given")
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):
        warn("several inputs share a file name; outputs are numbered to keep them apart")
        stems = [f"{i:04d}_{s}" for i, s in enumerate(stems)]
    results = []
    start = time.perf_counter()
    pending: dict[int, Any] = {}  # images read but not yet scored (the model batches across images)

    def images() -> Any:
        for i, f in enumerate(track(files, "anomaly: predicting")):
            pending[i] = read_image(f)
            yield pending[i]

    gen = model.iter_maps(images())
    for i, (f, stem, (score, amap)) in enumerate(zip(files, stems, gen, strict=True)):
        anomalous = score >= t
        mask = (amap >= t) & anomalous
        regions = defect_regions(amap, t, pixel_size_um=pixel_size, min_area=min_area) if anomalous else []
        heat, mpath, rpath = (out_dir / f"{stem}_{kind}.png" for kind in ("heatmap", "mask", "regions"))
        image = pending.pop(i)
        write_heatmap(heat, amap, t, image)
        write_mask(mpath, mask)
        write_regions(rpath, image, regions)
        results.append({"image": str(f), "score": score, "anomalous": bool(anomalous),
                        "defect_pixels": int(mask.sum()), "n_defects": len(regions), "defects": regions,
                        "heatmap": str(heat), "mask": str(mpath), "regions_image": str(rpath)})
    summary = {"model": str(model_dir), "threshold": t,
               "threshold_source": "--threshold" if threshold is not None else "model card",
               "n_images": len(results), "n_anomalous": sum(r["anomalous"] for r in results),
               "n_defects": sum(r["n_defects"] for r in results), "pixel_size_um": pixel_size,
               "folders": folder_summary([str(f.parent) for f in files], [r["defects"] for r in results], pixel_size),
               "seconds": round(time.perf_counter() - start, 2), "predictions": results, "errors": log.to_json()}
    write_json(out_dir / "predictions.json", summary)
    emit(summary, as_json, _print_predict, log)


def _print_predict(s: dict[str, Any]) -> None:
    for r in s["predictions"]:
        flag = "ANOMALOUS" if r["anomalous"] else "good"
        out.print(f"{r['image']}: {flag} (score {r['score']:.4g}, {r['n_defects']} defects, "
                  f"{r['defect_pixels']} px)", markup=False)
    for folder, f in s["folders"].items():
        sizes = ", ".join(f"{b['count']} ≤ {b['area_px'][1]} px" if b["area_px"][1] else f"{b['count']} larger"
                          for b in f["area_histogram"] if b["count"])
        out.print(f"{folder}: {f['n_defects']} defects in {f['n_images_with_defects']}/{f['n_images']} images"
                  + (f" ({sizes})" if sizes else ""), markup=False)
    out.print(f"{s['n_anomalous']}/{s['n_images']} anomalous at threshold {s['threshold']:.4g} "
              f"({s['threshold_source']})", markup=False)


def register(app: typer.Typer) -> None:
    app.add_typer(sub, name="anomaly")
