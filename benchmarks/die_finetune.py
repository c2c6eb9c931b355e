"""End-to-end fine-tuning on DeepPCB defect crops (the gap to TAO's 98.51 %), printed as JSON.

    PYTHONPATH=src python benchmarks/prepare_deeppcb_crops.py --out /tmp/die_data --no-elpv
    PYTHONPATH=src python benchmarks/die_finetune.py --data /tmp/die_data --labels-per-class all \
        --input-size 64 --max-minutes 20 --out bench_out/die_ft_all.json

Trains :class:`fabsight.die.finetune.FinetuneClassifier` on the original DeepPCB trainval
crops (all of them, or a seeded ``--labels-per-class`` draw: 100 ≈ TAO's ~600 labels), and
scores it on every crop of the original test split: accuracy, macro-F1, per-class recall,
expected calibration error of the temperature-scaled confidences, training time per epoch
and the load average (the machine is shared; speed figures mean little without it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from fabsight.die.data import scan_folder
from fabsight.die.finetune import FinetuneClassifier
from fabsight.die.metrics import classification_metrics
from fabsight.utils.atomic import to_jsonable, write_json


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy − confidence| over equal-width confidence bins, weighted by bin size."""
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in pairwise(edges):
        m = (confidence > lo) & (confidence <= hi)
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - confidence[m].mean())
    return float(ece)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="output of prepare_deeppcb_crops.py")
    ap.add_argument("--labels-per-class", default="all", help="'all' or a number drawn per class (seeded)")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--max-minutes", type=float, default=20.0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = scan_folder(args.data / "deeppcb" / "train")
    test = scan_folder(args.data / "deeppcb" / "test", classes=train.classes)
    if args.labels_per_class != "all":
        rng = np.random.default_rng(args.seed)
        k = int(args.labels_per_class)
        train = train.subset(np.sort(np.concatenate(
            [rng.choice(np.flatnonzero(train.labels == c), k, replace=False) for c in range(len(train.classes))])))
    names = np.asarray(train.classes)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    clf = FinetuneClassifier(backbone=args.backbone, input_size=args.input_size, epochs=args.epochs,
                             batch_size=args.batch_size, patience=args.patience, max_minutes=args.max_minutes,
                             device=args.device, seed=args.seed).fit(train.paths, names[train.labels])
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    decisions = clf.decide(test.paths)
    predict_s = time.perf_counter() - t1
    pred = np.asarray([d["label"] for d in decisions])
    confidence = np.asarray([d["confidence"] for d in decisions])
    truth = names[test.labels]
    m = classification_metrics(truth, pred, train.classes)
    report = {
        "args": {k: str(v) for k, v in vars(args).items()},
        "n_train": len(train), "n_validation": clf.validation_["n"], "n_test": len(test),
        "accuracy": m["accuracy"], "macro_f1": m["macro_f1"],
        "recall": {c: v["recall"] for c, v in m["per_class"].items()},
        "ece": expected_calibration_error(confidence, pred == truth),
        "temperature": clf.temperature_, "best_epoch": clf.best_epoch_, "history": clf.history_,
        "validation_accuracy": clf.validation_["accuracy"],
        "needs_review_rate": float(np.mean([d["needs_review"] for d in decisions])),
        "accuracy_when_not_flagged": float(np.mean([p == t for p, t, d in zip(pred, truth, decisions, strict=True)
                                                    if not d["needs_review"]] or [np.nan])),
        "train_s": train_s, "test_images_per_s": len(test) / predict_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2, default=to_jsonable))


if __name__ == "__main__":
    main()
