"""ONNX export of die and anomaly models on real data (MISSION M2): prints one JSON document.

For each model: train it (small, real-data subsets so a run fits on a shared 2-core
machine), export it with ``fabsight.deploy.export_onnx`` (fp32 + INT8), then measure on
held-out images:

- agreement: max |Δ probability| (die) or max |Δ score| (anomaly) between PyTorch and
  ONNX Runtime fp32 / INT8, and the accuracy (die) or image / pixel AUROC (anomaly) of
  each runtime, so the INT8 accuracy change is a measured number;
- speed of the network part on ``--threads`` threads: images/s at a batch and median
  latency at batch 1, PyTorch vs ONNX Runtime fp32 vs INT8, with the load average before
  and after (the machine is shared: wall-clock numbers are depressed by others' jobs; the
  per-CPU-second figures are less so).

``--finetune`` adds a fine-tuned die model (``die train --method finetune`` on all the
training crops, a short budget on one thread): max |Δ logits|, accuracy and decisions of
PyTorch vs ONNX Runtime fp32 vs INT8 on every test crop, and the network's speed.

Data: DeepPCB defect crops (``benchmarks/prepare_deeppcb_crops.py`` → ``--die-data``,
a ``train``/``test`` ROOT/CLASS tree) and magnetic tile in the MVTec layout
(``fabsight anomaly layout`` → ``--mvtec``). Example (the numbers in docs/benchmarks.md)::

    PYTHONPATH=src python -P benchmarks/export_models.py --die-data /tmp/pcb --mvtec /tmp/mt \\
        --workdir /tmp/export-bench --threads 2 > export_models.json
    PYTHONPATH=src python -P benchmarks/export_models.py --die-data /tmp/die_data/deeppcb --die-backbones \\
        --finetune --workdir /tmp/export-bench --threads 2 > export_finetune.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.deploy import export_onnx, load_anomaly_model
from fabsight.die.data import read_image
from fabsight.utils.timing import median_times


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _speed(fns: dict[str, Any], x: np.ndarray, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {"batch": len(x), "loadavg_before": os.getloadavg()}
    for name, fn in fns.items():
        wall, cpu = median_times(partial(fn, x), rounds)
        wall1, _ = median_times(partial(fn, x[:1]), rounds * 3)
        out[name] = {"images_per_s": len(x) / wall, "images_per_cpu_s": len(x) / cpu, "latency_ms_batch1": 1000 * wall1}
    out["loadavg_after"] = os.getloadavg()
    return out


def _subset(src: Path, dst: Path, per_class: int, seed: int) -> Path:
    """``dst/CLASS`` symlinks to at most ``per_class`` images of each ``src/CLASS`` (seeded choice)."""
    from fabsight.die.data import list_images

    if dst.is_dir():
        return dst
    for cls in sorted(p for p in src.iterdir() if p.is_dir()):
        files = list_images(cls)
        random.Random(seed).shuffle(files)
        (dst / cls.name).mkdir(parents=True)
        for f in files[:per_class]:
            (dst / cls.name / f.name).symlink_to(f.resolve())
    return dst


def _export(args: argparse.Namespace, model_dir: Path) -> tuple[dict[str, Any], float | None]:
    """Export fp32 + INT8 (seconds taken), or with ``--reuse-exports`` read an earlier export from the card."""
    from fabsight.artifacts import load_card

    card = load_card(model_dir)
    if args.reuse_exports and card.extra.get("onnx", {}).get("int8"):
        return {"onnx": card.extra["onnx"]}, None
    t0 = time.perf_counter()
    exported = export_onnx(model_dir, int8=True, n_threads=args.threads)
    return exported, round(time.perf_counter() - t0, 1)


def die_benchmark(args: argparse.Namespace, backbone: str) -> dict[str, Any]:
    import torch

    from fabsight.die.data import scan_folder
    from fabsight.die.metrics import classification_metrics
    from fabsight.die.model import DieModel, train

    work = args.workdir / f"die-{backbone}"
    tr = _subset(args.die_data / "train", work / "train", args.die_train, 0)
    te = _subset(args.die_data / "test", work / "test", args.die_test, 1)
    model_dir = work / "model"
    t0 = time.perf_counter()
    if not (model_dir / "card.json").is_file():
        train(tr, model_dir, backbone=backbone, method="probe", cv_folds=0, cache=None)
    train_s = time.perf_counter() - t0
    exported, export_s = _export(args, model_dir)
    log(f"die {backbone}: exported in {export_s} s")
    folder = scan_folder(te)
    images = folder.paths
    models = {rt: DieModel(model_dir, runtime=rt, n_threads=args.threads) for rt in ("torch", "onnx", "onnx-int8")}
    truth = np.asarray(models["torch"].classes)[folder.labels]
    probs, quality = {}, {}
    for rt, m in models.items():
        feats = m.features(images)
        probs[rt] = m.classifier.predict_proba(feats)
        pred = m.classifier.predict(feats)
        r = classification_metrics(truth, pred, m.classes)
        quality[rt] = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
    bb_t, bb_o, bb_q = (models[rt].backbone for rt in ("torch", "onnx", "onnx-int8"))
    from fabsight.die.embeddings import load_item

    x = bb_t.preprocess([load_item(p) for p in images[: args.batch]])
    xn = x.numpy()
    speed = _speed({"torch": lambda b: bb_t.embed(torch.from_numpy(b), models["torch"].layers),
                    "onnx": lambda b: bb_o.embed(b), "onnx-int8": lambda b: bb_q.embed(b)}, xn, args.rounds)
    return {
        "backbone": backbone, "layers": list(models["torch"].layers), "n_train": len(scan_folder(tr)),
        "n_test": len(images), "train_s": round(train_s, 1), "export_s": export_s,
        "graph_mib": round((model_dir / "backbone.onnx").stat().st_size / 2**20, 1),
        "int8_graph_mib": round((model_dir / "backbone.int8.onnx").stat().st_size / 2**20, 1),
        "export_check": exported["onnx"]["check"], "export_int8": exported["onnx"]["int8"],
        "test_max_abs_prob_diff": {rt: float(np.abs(probs[rt] - probs["torch"]).max()) for rt in ("onnx", "onnx-int8")},
        "test_quality": quality, "speed_backbone": speed,
    }


def finetune_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """A fine-tuned die model (``die train --method finetune``, short budget) exported and scored on every test crop.

    Trained on all ``--die-data/train`` crops with ``--finetune-threads`` torch threads (the
    training the README shows); one forward pass per runtime over ``--die-data/test`` gives
    logits, accuracy and the same decisions ``die predict`` would print.
    """
    import torch

    from fabsight.die.data import scan_folder
    from fabsight.die.metrics import classification_metrics
    from fabsight.die.model import DieModel, train

    model_dir = args.workdir / "die-finetune" / "model"
    train_info: dict[str, Any] = {"reused": True}
    if not (model_dir / "card.json").is_file():
        torch.set_num_threads(args.finetune_threads)
        load, t0 = os.getloadavg(), time.perf_counter()
        train(args.die_data / "train", model_dir, backbone="efficientnet_lite0", method="finetune",
              input_size=args.finetune_size, epochs=args.finetune_epochs, max_minutes=args.finetune_minutes)
        train_info = {"reused": False, "train_s": round(time.perf_counter() - t0, 1), "loadavg_before": load,
                      "loadavg_after": os.getloadavg(), "threads": args.finetune_threads}
        torch.set_num_threads(args.threads)
    exported, export_s = _export(args, model_dir)
    log(f"die finetune: exported in {export_s} s")
    models = {rt: DieModel(model_dir, runtime=rt, n_threads=args.threads) for rt in ("torch", "onnx", "onnx-int8")}
    card = models["torch"].card
    folder = scan_folder(args.die_data / "test", classes=card.classes)
    truth = np.asarray(card.classes)[folder.labels]
    outputs, quality, decisions = {}, {}, {}
    for rt, m in models.items():
        t0, load = time.perf_counter(), os.getloadavg()
        outputs[rt] = m.classifier._logits_and_embedding(folder.paths)
        wall = time.perf_counter() - t0
        decisions[rt] = m.classifier.decide_outputs(*outputs[rt])
        r = classification_metrics(truth, [d["label"] for d in decisions[rt]], card.classes)
        quality[rt] = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                       "needs_review_rate": float(np.mean([d["needs_review"] for d in decisions[rt]])),
                       "crops_per_s_end_to_end": round(len(folder) / wall, 1), "loadavg_before": load}
        log(f"die finetune {rt}: {quality[rt]}")
    agreement = {}
    for rt in ("onnx", "onnx-int8"):
        pairs = list(zip(decisions[rt], decisions["torch"], strict=True))
        agreement[rt] = {
            "max_abs_logit_diff": float(np.abs(outputs[rt][0] - outputs["torch"][0]).max()),
            "max_abs_confidence_diff": max(abs(a["confidence"] - b["confidence"]) for a, b in pairs),
            "same_label": float(np.mean([a["label"] == b["label"] for a, b in pairs])),
            "same_needs_review": float(np.mean([a["needs_review"] == b["needs_review"] for a, b in pairs])),
        }
    clf_t, clf_o, clf_q = (models[rt].classifier for rt in ("torch", "onnx", "onnx-int8"))
    x = clf_o.preprocess([read_image(p) for p in folder.paths[: args.batch]])

    def torch_fn(b: np.ndarray) -> Any:
        with torch.no_grad():
            return clf_t.network_(torch.from_numpy(b))

    speed = _speed({"torch": torch_fn, "onnx": clf_o.run, "onnx-int8": clf_q.run}, x, args.rounds)
    return {
        "model": str(model_dir), "input_size": card.input["size"], "n_train": card.training["n_images"],
        "epochs_run": card.training["epochs_run"], "best_epoch": card.training["best_epoch"],
        "validation": {k: card.metrics[k] for k in ("accuracy", "macro_f1", "n")}, "training": train_info,
        "n_test": len(folder), "export_s": export_s,
        "graph_mib": round((model_dir / "network.onnx").stat().st_size / 2**20, 1),
        "int8_graph_mib": round((model_dir / "network.int8.onnx").stat().st_size / 2**20, 1),
        "export_check": exported["onnx"]["check"], "export_int8": exported["onnx"]["int8"],
        "test_agreement": agreement, "test_quality": quality, "speed_network": speed,
    }


def anomaly_benchmark(args: argparse.Namespace, method: str) -> dict[str, Any]:
    import torch

    from fabsight.anomaly import evaluate, load_split, make_model, read_image, save_model

    work = args.workdir / f"anomaly-{method}"
    model_dir = work / "model"
    train = load_split(args.mvtec, "train")
    random.Random(0).shuffle(train)
    hold, fit = train[: args.holdout], train[args.holdout : args.holdout + args.anomaly_train]
    test = load_split(args.mvtec, "test")
    random.Random(1).shuffle(test)
    test = sorted(test[: args.anomaly_test], key=lambda r: str(r.path))
    t0 = time.perf_counter()
    if not (model_dir / "card.json").is_file():
        params: dict[str, Any] = {"input_size": args.input_size, "device": "cpu"}
        if method == "recon":
            params.update(steps=args.recon_steps)
        model = make_model(method, **params)
        model.fit([read_image(r.path) for r in fit]).calibrate_good([read_image(r.path) for r in hold])
        save_model(model, model_dir, training={"root": str(args.mvtec), "n_fit": len(fit)})
    fit_s = time.perf_counter() - t0
    exported, export_s = _export(args, model_dir)
    log(f"anomaly {method}: exported in {export_s} s")
    results, scores = {}, {}
    models = {rt: load_anomaly_model(model_dir, rt, device="cpu", n_threads=args.threads)
              for rt in ("torch", "onnx", "onnx-int8")}
    images = [read_image(r.path) for r in test]
    for rt, m in models.items():
        scores[rt] = m.score_samples(images)
        r = evaluate(m, test)
        results[rt] = {k: r[k] for k in ("image_auroc", "pixel_auroc", "aupro", "f1", "false_alarm_rate",
                                         "ms_per_image")}
    scale = float(np.abs(scores["torch"]).max())
    torch_model, onnx_model, int8_model = models["torch"], models["onnx"], models["onnx-int8"]
    crops = [c for img in images[: args.batch] for c in torch_model._tiler().split(torch_model._prepare(img))[0]]
    crops = crops[: args.batch]
    if method == "recon":
        from fabsight.deploy.anomaly import _recon_input

        x = _recon_input(crops)

        def torch_fn(b: np.ndarray) -> Any:
            with torch.no_grad():
                return torch_model.net_(torch.from_numpy(b))
    else:
        x = torch_model.backbone_.preprocess(crops).numpy()

        def torch_fn(b: np.ndarray) -> Any:
            with torch.no_grad():
                return torch_model._locally_aware(torch.from_numpy(b))

    speed = _speed({"torch": torch_fn, "onnx": onnx_model._run, "onnx-int8": int8_model._run}, x, args.rounds)
    return {
        "method": method, "n_fit": len(fit), "n_test": len(test), "fit_s": round(fit_s, 1),
        "export_s": export_s, "export_check": exported["onnx"]["check"],
        "export_int8": exported["onnx"]["int8"],
        "test_max_abs_score_diff": {rt: float(np.abs(scores[rt] - scores["torch"]).max()) for rt in ("onnx",
                                                                                                    "onnx-int8")},
        "test_score_scale": scale, "test_quality": results, "speed_network": speed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--die-data", type=Path, help="ROOT with train/CLASS and test/CLASS die images")
    ap.add_argument("--mvtec", type=Path, help="MVTec-layout anomaly dataset")
    ap.add_argument("--workdir", type=Path, required=True, help="models are kept here and reused by a rerun")
    ap.add_argument("--die-backbones", nargs="*", default=["efficientnet_lite0", "dinov2_vits14"])
    ap.add_argument("--methods", nargs="*", default=["patchcore", "padim", "recon"])
    ap.add_argument("--die-train", type=int, default=40, help="training images per class")
    ap.add_argument("--die-test", type=int, default=25, help="test images per class")
    ap.add_argument("--finetune", action="store_true", help="also a fine-tuned die model (all --die-data crops)")
    ap.add_argument("--finetune-size", type=int, default=64)
    ap.add_argument("--finetune-epochs", type=int, default=5)
    ap.add_argument("--finetune-minutes", type=float, default=7.5, help="training budget (stops after that epoch)")
    ap.add_argument("--finetune-threads", type=int, default=1)
    ap.add_argument("--anomaly-train", type=int, default=60)
    ap.add_argument("--anomaly-test", type=int, default=80)
    ap.add_argument("--holdout", type=int, default=20, help="good images that set the threshold")
    ap.add_argument("--input-size", type=int, default=256)
    ap.add_argument("--recon-steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reuse-exports", action="store_true", help="measure graphs an earlier run exported")
    args = ap.parse_args()

    import onnxruntime
    import torch

    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"threads": args.threads, "cpu_count": os.cpu_count(), "torch": torch.__version__,
                              "onnxruntime": onnxruntime.__version__, "loadavg_start": os.getloadavg(),
                              "die": [], "anomaly": []}
    if args.die_data:
        for bb in args.die_backbones:
            log(f"die {bb}")
            report["die"].append(die_benchmark(args, bb))
            log(json.dumps(report["die"][-1], default=float))  # partial results survive an interrupted run
        if args.finetune:
            log("die finetune")
            report["die_finetune"] = finetune_benchmark(args)
            log(json.dumps(report["die_finetune"], default=float))
    if args.mvtec:
        for method in args.methods:
            log(f"anomaly {method}")
            report["anomaly"].append(anomaly_benchmark(args, method))
            log(json.dumps(report["anomaly"][-1], default=float))
    report["loadavg_end"] = os.getloadavg()
    print(json.dumps(report, indent=2, default=float))


if __name__ == "__main__":
    main()
