"""Compare ONNX Runtime INT8 recipes on exported die and anomaly models (and a wafer model); prints JSON.

For each recipe of :data:`fabsight.deploy.quantize.RECIPES` the model's fp32 graph is
quantized with activations calibrated on real *training* images (the export's own
calibration set), then measured against the fp32 graph on held-out data:

- die classifier: max |Δ| of the embedding (absolute and relative to its largest value),
  accuracy / macro-F1 and agreement of the model's own probe on every test crop;
- anomaly model: max |Δ| of the patch features on the test images, max |Δscore| relative
  to the score scale, image AUROC, and same decision at the card's threshold;
- wafer model: max |Δprob|, agreement and accuracy on generated maps of another seed;
- for all: graph size and speed of the graph alone on ``--threads`` threads (images/s at
  batch 16, median batch-1 latency), with the load average (the machine is shared).

    PYTHONPATH=src python -P benchmarks/int8_recipes.py --die-model DIR --die-test ROOT/test \\
        --anomaly-models DIR [DIR ...] --anomaly-test 240 --wafer-model DIR > int8_recipes.json

Models must have been exported (``fabsight export DIR --onnx``): this script reads
their ``card.json`` and fp32 graph and leaves the model directories unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.artifacts import load_card
from fabsight.deploy.quantize import RECIPES, quantize
from fabsight.runtimes import session
from fabsight.utils.timing import median_times


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _quantized(fp32: Path, x: np.ndarray, input_name: str, work: Path, names: list[str]) -> dict[str, Any]:
    """Graph path, size and quantization info per recipe, calibrated on ``x``."""
    out = {"fp32": {"graph": fp32, "mib": round(fp32.stat().st_size / 2**20, 2)}}
    for name in names:
        q = work / f"{name}.onnx"
        sub = work / name
        sub.mkdir()
        t0 = time.perf_counter()
        info = quantize(fp32, q, x, sub, input_name, RECIPES[name])
        out[name] = {"graph": q, "mib": round(q.stat().st_size / 2**20, 2), "quantize_s": round(time.perf_counter()
                                                                                                  - t0, 1), **info}
        log(f"  {name}: {out[name]['mib']} MiB in {out[name]['quantize_s']} s")
    return out


def _speed(graph: Path, input_name: str, x: np.ndarray, threads: int, rounds: int) -> dict[str, Any]:
    sess = session(graph, threads)

    def run(b: np.ndarray) -> Any:
        return sess.run(None, {input_name: b})

    run(x[:1])
    wall, cpu = median_times(partial(run, x), rounds)
    wall1, _ = median_times(partial(run, x[:1]), rounds * 3)
    return {"images_per_s": round(len(x) / wall, 1), "images_per_cpu_s": round(len(x) / cpu, 1),
            "latency_ms_batch1": round(1000 * wall1, 1), "loadavg": [round(v, 2) for v in os.getloadavg()]}


def _clean(g: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in g.items() if k != "graph"}


def die_recipes(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from fabsight.deploy.die import check_sample
    from fabsight.die.data import read_image, scan_folder
    from fabsight.die.metrics import classification_metrics
    from fabsight.die.model import DieModel
    from fabsight.die.onnx import OnnxBackbone

    model = DieModel(args.die_model, runtime="onnx", n_threads=args.threads)
    card, info = model.card, model.card.extra["onnx"]
    fp32 = args.die_model / card.files["onnx"]
    items, _, described = check_sample(model, None, 0)
    x = model.backbone.preprocess([read_image(p) for p in items])
    graphs = _quantized(fp32, x, info["input"], work, args.recipes)
    backbones = {n: OnnxBackbone(g["graph"], card, info, args.threads) for n, g in graphs.items()}
    folder = scan_folder(args.die_test, classes=model.classes)
    emb: dict[str, list[np.ndarray]] = {n: [] for n in graphs}
    log(f"die: {len(folder)} test crops")
    for s in range(0, len(folder), 32):
        xb = model.backbone.preprocess([read_image(p) for p in folder.paths[s : s + 32]])
        for n, bb in backbones.items():
            emb[n].append(bb.embed(xb))
    truth = np.asarray(model.classes)[folder.labels]
    e32 = np.concatenate(emb["fp32"])
    pred32 = model.classifier.predict(e32)
    scale = float(np.abs(e32).max())
    results: dict[str, Any] = {}
    for n, g in graphs.items():
        e = np.concatenate(emb[n])
        pred = model.classifier.predict(e)
        m = classification_metrics(truth, pred, model.classes)
        results[n] = {**_clean(g), "accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4),
                      "agreement_with_fp32": round(float(np.mean(pred == pred32)), 4),
                      "max_abs_feature_diff": float(np.abs(e - e32).max()),
                      "max_rel_feature_diff": float(np.abs(e - e32).max() / scale),
                      "speed": _speed(g["graph"], info["input"], x[:16], args.threads, args.rounds)}
        log(f"  die {n}: {json.dumps({k: results[n][k] for k in ('accuracy', 'agreement_with_fp32')})}")
    return {"model": str(args.die_model), "backbone": card.backbone.get("name"), "layers": card.backbone.get("layers"),
            "input_size": card.input["size"], "calibration": described, "n_test": len(folder),
            "test": str(args.die_test), "feature_scale": scale, "recipes": results}


def anomaly_recipes(args: argparse.Namespace, model_dir: Path, work: Path) -> dict[str, Any]:
    from fabsight.anomaly.datasets import load_split
    from fabsight.anomaly.metrics import image_auroc
    from fabsight.deploy.anomaly import _assemble, _calibration_images
    from fabsight.die.data import read_image
    from fabsight.utils.preprocess import preprocess

    card = load_card(model_dir)
    info = card.extra["onnx"]
    fp32 = model_dir / card.files["onnx"]
    base = _assemble(model_dir, card, fp32, info, args.threads)
    calib, described = _calibration_images(card, None)

    def network_input(images: list[np.ndarray]) -> np.ndarray:
        crops = [c for img in images for c in base._tiler().split(base._prepare(img))[0]]
        p = info["preprocessing_args"]
        return preprocess(crops, size=p["size"], mean=p["mean"], std=p["std"], interpolation=p["interpolation"])

    x = network_input(calib)
    graphs = _quantized(fp32, x, info["input"], work, args.recipes)
    root = Path(card.training["root"])
    test = load_split(root, "test")
    random.Random(1).shuffle(test)
    test = sorted(test[: args.anomaly_test], key=lambda r: str(r.path))
    images = [read_image(r.path) for r in test]
    labels = np.array([r.is_anomalous for r in test])
    xt = network_input(images[:24])
    threshold = None if base.threshold_ is None else base.threshold_.value
    results: dict[str, Any] = {}
    scores32, feats32 = None, None
    for n, g in graphs.items():
        m = _assemble(model_dir, card, g["graph"], info, args.threads)
        scores = m.score_samples(images)
        feats = m._run(xt)[0]
        if n == "fp32":
            scores32, feats32 = scores, feats
        scale = max(float(np.abs(scores32).max()), abs(threshold or 0.0))
        results[n] = {**_clean(g), "image_auroc": round(float(image_auroc(labels, scores)), 4),
                      "max_abs_feature_diff": float(np.abs(feats - feats32).max()),
                      "max_rel_feature_diff": float(np.abs(feats - feats32).max() / np.abs(feats32).max()),
                      "max_rel_score_diff": float(np.abs(scores - scores32).max() / scale),
                      "decision_agreement": None if threshold is None else
                      round(float(np.mean((scores >= threshold) == (scores32 >= threshold))), 4),
                      "speed": _speed(g["graph"], info["input"], x[:16], args.threads, args.rounds)}
        log(f"  {card.extra['method']} {n}: AUROC {results[n]['image_auroc']}, "
            f"score diff {results[n]['max_rel_score_diff']:.3f}")
    return {"model": str(model_dir), "method": card.extra["method"], "root": str(root), "calibration": described,
            "n_test": len(test), "n_anomalous": int(labels.sum()), "recipes": results}


def wafer_recipes(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from fabsight import calibration as cal
    from fabsight.deploy.export import _accuracy, _sample_maps
    from fabsight.deploy.runtime import load_onnx_wafer
    from fabsight.wafer.preprocess import maps_to_array

    clf = load_onnx_wafer(args.wafer_model, n_threads=args.threads)
    card = load_card(args.wafer_model)
    fp32 = args.wafer_model / card.files["onnx"]
    calib, described = _sample_maps(clf, None, 0)
    test, test_described = _sample_maps(clf, None, 1)
    x = maps_to_array(calib, clf.input_size_)
    xt = maps_to_array(test, clf.input_size_)
    graphs = _quantized(fp32, x, clf.onnx_["input"], work, args.recipes)
    results: dict[str, Any] = {}
    probs32 = None
    for n, g in graphs.items():
        clf.session_ = session(g["graph"], args.threads)
        probs = cal.probabilities(clf.forward(xt)[0], clf.temperature_, clf.multilabel)
        probs32 = probs if n == "fp32" else probs32
        same = [a == b for a, b in zip(clf.decode(probs), clf.decode(probs32), strict=True)]
        results[n] = {**_clean(g), "accuracy": _accuracy(clf, test, probs), "agreement_with_fp32": float(np.mean(same)),
                      "max_abs_prob_diff": float(np.abs(probs - probs32).max()),
                      "speed": _speed(g["graph"], clf.onnx_["input"], xt[:256], args.threads, args.rounds)}
        log(f"  wafer {n}: accuracy {results[n]['accuracy']}, agreement {results[n]['agreement_with_fp32']}")
    return {"model": str(args.wafer_model), "calibration": described, "test": test_described, "recipes": results}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--die-model", type=Path, help="exported die model directory")
    ap.add_argument("--die-test", type=Path, help="ROOT/CLASS test crops for the die model")
    ap.add_argument("--anomaly-models", type=Path, nargs="*", default=[], help="exported PatchCore / PaDiM dirs")
    ap.add_argument("--anomaly-test", type=int, default=240, help="test images drawn from each model's MVTec root")
    ap.add_argument("--wafer-model", type=Path, help="exported wafer model directory")
    ap.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import onnxruntime

    report: dict[str, Any] = {"threads": args.threads, "cpu_count": os.cpu_count(),
                              "onnxruntime": onnxruntime.__version__, "cpu_flags": _cpu_flags(),
                              "loadavg_start": os.getloadavg(), "recipes": {n: RECIPES[n].describe()
                                                                            for n in args.recipes}}
    with tempfile.TemporaryDirectory(prefix="int8-recipes-") as tmp:
        work = Path(tmp)
        if args.wafer_model:
            log("wafer")
            (work / "wafer").mkdir()
            report["wafer"] = wafer_recipes(args, work / "wafer")
        if args.die_model and args.die_test:
            log("die")
            (work / "die").mkdir()
            report["die"] = die_recipes(args, work / "die")
            log(json.dumps(report["die"], default=float))
        report["anomaly"] = []
        for i, d in enumerate(args.anomaly_models):
            log(f"anomaly {d}")
            (work / f"anomaly{i}").mkdir()
            report["anomaly"].append(anomaly_recipes(args, d, work / f"anomaly{i}"))
            log(json.dumps(report["anomaly"][-1], default=float))
    report["loadavg_end"] = os.getloadavg()
    print(json.dumps(report, indent=2, default=float))


def _cpu_flags() -> list[str]:
    """The x86 SIMD features that decide u8×s8 saturation (VNNI or not)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split("flags", 1)[1].split("\n", 1)[0].split()
    except (OSError, IndexError):
        return []
    return sorted(f for f in flags if f.startswith(("avx2", "avx512", "avx_vnni", "amx")))


if __name__ == "__main__":
    main()
