"""End-to-end fine-tuning on DeepPCB defect crops (the gap to TAO's 98.51 %), printed as JSON.

    PYTHONPATH=src python benchmarks/prepare_deeppcb_crops.py --out /tmp/die_data --no-elpv
    PYTHONPATH=src python benchmarks/die_finetune.py --data /tmp/die_data --labels-per-class all \
        --input-size 64 --max-minutes 20 --out bench_out/die_ft_all.json
    PYTHONPATH=src python benchmarks/die_finetune.py --data /tmp/die_data --labels-per-class 100 \
        --unlabeled-rest --rounds 2 --input-size 64 --max-minutes 70 --out bench_out/die_ft_100_semi.json

Trains :class:`fabsight.die.finetune.FinetuneClassifier` on the original DeepPCB trainval
crops (all of them, or a seeded ``--labels-per-class`` draw: 100 ≈ TAO's ~600 labels), and
scores it on every crop of the original test split: accuracy, macro-F1, per-class recall,
expected calibration error of the temperature-scaled confidences, training time per epoch
and the load average (the machine is shared; speed figures mean little without it).

``--unlabeled-rest`` self-trains (``fit(..., unlabeled=...)``) on every trainval crop not
drawn as a label, its label hidden from the classifier: the benchmark then reports, per
round, how many pseudo-labels were made per class and how many of them match the hidden
truth, and the test accuracy / macro-F1 of the teacher (round 0) and of each student.
Pseudo-labels come from the teacher's logits averaged over 8 flips/turns unless
``--no-pseudo-tta``; ``--test-tta`` scores every round that way too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
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
    ap.add_argument("--unlabeled-rest", action="store_true",
                    help="self-train on the trainval crops not drawn as labels (labels hidden)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--pseudo-threshold", type=float, default=0.9)
    ap.add_argument("--student-epochs", type=int, help="default: --epochs")
    ap.add_argument("--student-early-stop", action="store_true",
                    help="stop students on the labelled validation split (default: whole schedule, last weights)")
    ap.add_argument("--min-change", type=float,
                    help="stop self-training once the pseudo-labels change on less than this share of the pool")
    ap.add_argument("--no-pseudo-tta", action="store_true",
                    help="the teacher labels the unlabeled crops from one view, not 8 flips/turns")
    ap.add_argument("--test-tta", action="store_true",
                    help="also score every round with logits averaged over 8 flips/turns (8× the test cost)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = scan_folder(args.data / "deeppcb" / "train")
    test = scan_folder(args.data / "deeppcb" / "test", classes=train.classes)
    rest = None
    if args.labels_per_class != "all":
        rng = np.random.default_rng(args.seed)
        k = int(args.labels_per_class)
        drawn = np.sort(np.concatenate(
            [rng.choice(np.flatnonzero(train.labels == c), k, replace=False) for c in range(len(train.classes))]))
        rest = train.subset(np.setdiff1d(np.arange(len(train)), drawn))
        train = train.subset(drawn)
    if args.unlabeled_rest and rest is None:
        raise SystemExit("--unlabeled-rest needs --labels-per-class N (with all labels nothing is left over)")
    names = np.asarray(train.classes)
    truth = names[test.labels]
    rounds: list[dict] = []

    def score_round(r: int, model: FinetuneClassifier) -> None:
        """Test accuracy of the teacher (0) and of each student, while the fit goes on."""
        m = classification_metrics(truth, model.predict(test.paths), train.classes)
        row = {"round": r, "test_accuracy": m["accuracy"], "test_macro_f1": m["macro_f1"],
               "validation_accuracy": model.validation_["accuracy"], "epochs_run": len(model.history_),
               "best_epoch": model.best_epoch_, "elapsed_s": time.perf_counter() - t0}
        if args.test_tta:
            m_tta = classification_metrics(truth, model.predict(test.paths, tta=True), train.classes)
            row.update({"test_accuracy_tta": m_tta["accuracy"], "test_macro_f1_tta": m_tta["macro_f1"]})
        if r > 0:  # how right the pseudo-labels this student learned from were
            used, hidden = model.pseudo_labels_[r - 1], names[rest.labels]
            right = used["label"] == hidden[used["index"]]
            row.update({"pseudo_labelled": len(right), "pseudo_label_accuracy": float(right.mean()),
                        "pseudo_label_accuracy_per_class": {c: float(right[used["label"] == c].mean())
                                                            for c in train.classes if (used["label"] == c).any()}})
        rounds.append(row)
        print(json.dumps(row, default=to_jsonable), file=sys.stderr, flush=True)  # survives a cut-off run

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    clf = FinetuneClassifier(backbone=args.backbone, input_size=args.input_size, epochs=args.epochs,
                             batch_size=args.batch_size, patience=args.patience, max_minutes=args.max_minutes,
                             device=args.device, seed=args.seed, rounds=args.rounds,
                             pseudo_threshold=args.pseudo_threshold, student_epochs=args.student_epochs,
                             pseudo_tta=not args.no_pseudo_tta, student_early_stop=args.student_early_stop,
                             min_change=args.min_change)
    if args.unlabeled_rest:
        clf.fit(train.paths, names[train.labels], unlabeled=rest.paths, callback=score_round)
    else:
        clf.fit(train.paths, names[train.labels])
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    decisions = clf.decide(test.paths)
    predict_s = time.perf_counter() - t1
    pred = np.asarray([d["label"] for d in decisions])
    confidence = np.asarray([d["confidence"] for d in decisions])
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
        "self_training": getattr(clf, "self_training_", None), "rounds": rounds or None,
        "train_s": train_s, "test_images_per_s": len(test) / predict_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2, default=to_jsonable))


if __name__ == "__main__":
    main()
