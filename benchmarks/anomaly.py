"""Anomaly detection on an MVTec-layout dataset: fabsight's methods beside anomalib's PatchCore.

    python benchmarks/prepare_magnetic_tile.py ../shared/data/magnetic_tile /tmp/mt_mvtec
    python benchmarks/anomaly.py /tmp/mt_mvtec --threads 2 --anomalib > anomaly.json

Every model learns from ``train/good`` minus a held-out share (used only to set the
threshold at a 1 % false-alarm target), and is measured on ``test`` with the same metric
code (image AUROC, pixel AUROC, AUPRO to FPR 0.3, F1 at the threshold, ms/image with file
reading excluded). anomalib's PatchCore runs on the same images and the same input
(resized to the same size, normalised for the same EfficientNet-Lite0 weights, which are
loaded into its timm feature extractor; the same resize), so only the algorithm and its
implementation differ. Each run records the machine's 1-minute load average at its start
and end. Prints one JSON document (and each run's result on stderr as it finishes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fabsight.anomaly import evaluate, load_model, load_split, make_model, read_image
from fabsight.anomaly.datasets import AnomalyRecord
from fabsight.anomaly.evaluate import peak_rss_mib
from fabsight.anomaly.metrics import aupro, f1_at, image_auroc, pixel_auroc
from fabsight.anomaly.thresholds import threshold_best_f1, threshold_from_good
from fabsight.anomaly.tiling import Tiler


def _split(root: Path, args: argparse.Namespace) -> tuple[list, list, list]:
    train = load_split(root, "train")
    random.Random(args.seed).shuffle(train)
    n_hold = max(1, round(args.holdout * len(train)))
    hold, fit = train[:n_hold], train[n_hold:]
    if args.max_train:
        fit = fit[: args.max_train]
    test = load_split(root, "test")
    if args.test_fraction < 1.0:
        # Every k-th image of each folder: the same share of every defect type and of good.
        by_type: dict[str, list[AnomalyRecord]] = {}
        for r in test:
            by_type.setdefault(r.defect_type, []).append(r)
        test = [r for rs in by_type.values() for r in rs[:: max(1, round(1 / args.test_fraction))]]
    return fit, hold, test


def _images(records: list[AnomalyRecord]) -> list[np.ndarray]:
    return [read_image(r.path) for r in records]


def _load() -> float:
    """1-minute load average: speed figures on a shared machine mean little without it."""
    return round(os.getloadavg()[0], 1)


def run_fabsight(method: str, backbone: str | None, args: argparse.Namespace, fit: list, hold: list,
                 test: list, recon_dir: str | None, max_bank: int | None = None) -> dict[str, Any]:
    load_start = _load()
    if recon_dir is not None:
        model, card = load_model(recon_dir, device="cpu")
        fit_s = float(card.training.get("fit_seconds", float("nan")))
    else:
        params: dict[str, Any] = {**args.input_params, "device": "cpu", "seed": args.seed}
        if backbone:
            params["backbone"] = backbone
        if method == "patchcore":
            params.update(max_bank=max_bank, reweight=args.reweight)
        if method == "recon":
            params.update(steps=args.recon_steps, width=args.recon_width, train_crop=args.recon_crop)
        if method == "student":
            params.update(steps=args.student_steps, width=args.student_width)
        model = make_model(method, **params)
        t0 = time.perf_counter()
        model.fit(_images(fit))
        fit_s = time.perf_counter() - t0
    model.calibrate_good(_images(hold), args.false_alarm_rate)
    m = evaluate(model, test)
    return {"tool": "fabsight", "method": method, "backbone": backbone or "none (own UNet)",
            "input_size": model.input_size, "tile": model.tile, "max_aspect": model.max_aspect,
            "fit_seconds": round(fit_s, 1),
            "params": model.get_params(), "fitted": model._fitted_info(),
            "threshold_meaning": model.threshold_.describe(), **m, "load_average": [load_start, _load()]}


def run_anomalib(args: argparse.Namespace, fit: list, hold: list, test: list) -> dict[str, Any]:
    """anomalib 2.7 PatchcoreModel with our EfficientNet-Lite0 weights, driven directly (no Lightning).

    It sees exactly fabsight's network inputs: the same tiles or resized images (fabsight's
    Tiler with the run's input settings), normalised by the same backbone, and its crop maps
    are stitched back the same way; an image's score is the highest of its crops' scores.
    """
    import anomalib
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    from fabsight.anomaly.datasets import read_mask
    from fabsight.backbones import create_backbone

    load_start = _load()
    p = args.input_params
    s = p["input_size"]
    tiler = Tiler(s, p.get("tile"), 0.25, p.get("max_aspect"))
    ours = create_backbone("efficientnet_lite0", device="cpu", input_size=(s, s))
    layers = ["blocks.2", "blocks.4"]
    model = PatchcoreModel(layers=layers, backbone="tf_efficientnet_lite0", pre_trained=False, num_neighbors=9)
    fx = model.feature_extractor.feature_extractor
    missing, _ = fx.load_state_dict(ours.model.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"anomalib feature extractor did not get weights for {missing[:5]}")

    t0 = time.perf_counter()
    model.train()
    crops: list[np.ndarray] = []
    for r in fit:
        crops += tiler.split(read_image(r.path))[0]
    for k in range(0, len(crops), 8):
        model(ours.preprocess(crops[k : k + 8]))
    t1 = time.perf_counter()
    model.subsample_embedding(args.anomalib_coreset_ratio)
    coreset_s = time.perf_counter() - t1
    fit_s = time.perf_counter() - t0
    model.eval()

    def score(records: list[AnomalyRecord]) -> tuple[list[float], list[np.ndarray], float]:
        scores, maps, elapsed = [], [], 0.0
        for r in records:
            img = read_image(r.path)
            t = time.perf_counter()
            c, pl = tiler.split(img)
            with torch.no_grad():
                out = model(ours.preprocess(c))
            maps.append(tiler.stitch(list(out.anomaly_map[:, 0].numpy()), pl))
            scores.append(float(out.pred_score.max()))
            elapsed += time.perf_counter() - t
        return scores, maps, elapsed

    hold_scores, _, _ = score(hold)
    thr = threshold_from_good(np.array(hold_scores), args.false_alarm_rate)
    scores, maps, elapsed = score(test)
    labels = np.array([r.is_anomalous for r in test])
    px_maps, px_masks = [], []
    for r, amap in zip(test, maps, strict=True):
        if r.mask_path is not None or not r.is_anomalous:
            px_maps.append(amap)
            px_masks.append(np.zeros(amap.shape, bool) if r.mask_path is None else read_mask(r.mask_path, amap.shape))
    s_arr = np.array(scores)
    return {"tool": f"anomalib {anomalib.__version__}", "method": "patchcore", "backbone": "efficientnet_lite0 "
            "(fabsight's weights loaded into anomalib's timm tf_efficientnet_lite0 extractor)",
            "layers": layers, "coreset_sampling_ratio": args.anomalib_coreset_ratio, **p,
            "fit_seconds": round(fit_s, 1), "coreset_seconds": round(coreset_s, 1),
            "bank_size": int(model.memory_bank.shape[0]),
            "n_images": len(test), "image_auroc": image_auroc(labels, s_arr),
            "pixel_auroc": pixel_auroc(px_maps, px_masks), "aupro": aupro(px_maps, px_masks),
            "threshold": thr.value, "threshold_meaning": thr.describe(), "f1": f1_at(labels, s_arr, thr.value),
            "f1_max": threshold_best_f1(labels, s_arr).details["f1"],
            "ms_per_image": 1000 * elapsed / len(test), "peak_rss_mib": peak_rss_mib(),
            "torch_threads": torch.get_num_threads(), "load_average": [load_start, _load()]}


def input_params(args: argparse.Namespace, fit: list, test: list) -> tuple[dict[str, Any], list[str]]:
    """``--auto``: what ``anomaly fit`` would choose from these training images and the test masks;
    otherwise the fixed ``--input-size`` / ``--tile`` (squashed to a square)."""
    if not args.auto:
        return {"input_size": args.input_size, "tile": args.tile}, ["fixed by the command line"]
    from fabsight.anomaly.auto import choose_input, defect_diameters, survey_images

    facts = survey_images(_images(fit), [r.path for r in fit])
    masks = [r.mask_path for r in test if r.mask_path is not None]
    choice = choose_input(facts, defect_diameters(masks) if masks else None,
                          defect_source=f"{len(masks)} test masks")
    return choice.params(), choice.reasons


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--methods", default="patchcore,padim", help="comma list of patchcore, padim, recon, student")
    ap.add_argument("--backbones", default="efficientnet_lite0", help="comma list, for patchcore/padim")
    ap.add_argument("--recon-model", help="evaluate this trained recon model directory (e.g. trained on a GPU)")
    ap.add_argument("--max-bank", default="10000", help="fabsight PatchCore memory-bank cap; a comma list runs "
                    "one PatchCore per value")
    ap.add_argument("--reweight", action="store_true", help="fabsight PatchCore: the paper's score reweighting")
    ap.add_argument("--student-steps", type=int, default=600)
    ap.add_argument("--student-width", type=int, default=32)
    ap.add_argument("--recon-steps", type=int, default=1500)
    ap.add_argument("--recon-width", type=int, default=16)
    ap.add_argument("--recon-crop", type=int, default=96)
    ap.add_argument("--input-size", type=int, default=256)
    ap.add_argument("--auto", action="store_true", help="fabsight methods: input size, tiling and aspect handling "
                    "chosen as 'anomaly fit' does (from all test masks; --input-size and --tile are ignored)")
    ap.add_argument("--tile", type=int, default=None)
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--false-alarm-rate", type=float, default=0.01)
    ap.add_argument("--max-train", type=int, default=None, help="use at most this many training images")
    ap.add_argument("--test-fraction", type=float, default=1.0, help="evaluate on this share of each test folder")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--anomalib", action="store_true", help="also run anomalib's PatchCore")
    ap.add_argument("--anomalib-coreset-ratio", type=float, default=0.01)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fit, hold, test = _split(args.root, args)
    args.input_params, input_reasons = input_params(args, fit, load_split(args.root, "test"))
    print(json.dumps({"input": args.input_params, "reasons": input_reasons}), file=sys.stderr)
    runs = []
    for method in [m for m in args.methods.split(",") if m]:
        if method == "recon":
            runs.append(run_fabsight("recon", None, args, fit, hold, test, args.recon_model))
            continue
        for bb in args.backbones.split(","):
            for cap in args.max_bank.split(",") if method == "patchcore" else ["0"]:
                runs.append(run_fabsight(method, bb, args, fit, hold, test, None, int(cap)))
                print(json.dumps(runs[-1], default=str), file=sys.stderr)
    if args.anomalib:
        runs.append(run_anomalib(args, fit, hold, test))
        print(json.dumps(runs[-1], default=str), file=sys.stderr)
    doc = {"dataset": str(args.root), "n_train": len(fit), "n_threshold_holdout": len(hold), "n_test": len(test),
           "threads": args.threads, "cpu": platform.processor() or platform.machine(),
           "input": args.input_params, "input_reasons": input_reasons, "runs": runs}
    print(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
