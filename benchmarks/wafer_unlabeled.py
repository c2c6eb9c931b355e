"""Few labels, many unlabelled maps: ``wafer train LABELLED --unlabeled ...`` against supervised-only.

The reference case of issue #22: the 623 maps of ``LSWMD_train_01.pkl`` are the only labels
(one Near-full map among them); ``LSWMD_train_10/20/29.pkl`` (36,725 maps) are given as
unlabelled data (their labels are dropped on reading); every model is scored on
``LSWMD_val.pkl`` (12,450 maps), which no model sees while training: early stopping and
calibration use the stratified hold-out of the labelled maps, as ``wafer train`` does without
``--val``. Every method trains through :func:`fabsight.wafer.train` (what the CLI runs) in the
same run, with the same seed. Methods (``--methods``):

- ``supervised``: the labelled maps alone (this is also the first teacher of self-training).
- ``self-training-N``: ``--unlabeled`` with ``--rounds N``.

Reported per method: macro-F1, accuracy and per-class F1 on the validation piece, training
seconds, and for self-training the pseudo-labels per class and round with their precision
against the public labels of the unlabelled pieces (a diagnostic the training never sees).
Prints one JSON document.

Example (the numbers in docs/benchmarks.md)::

    PYTHONPATH=src nice -n 5 python benchmarks/wafer_unlabeled.py --threads 1 --epochs 20 --max-minutes 60 \
        --methods supervised,self-training-1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.io import read_maps
from fabsight.wafer import Recipe, WaferClassifier, evaluate, train

LABELLED = "LSWMD_train_01.pkl"
UNLABELLED = ("LSWMD_train_10.pkl", "LSWMD_train_20.pkl", "LSWMD_train_29.pkl")
VALIDATION = "LSWMD_val.pkl"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pseudo_label_precision(clf: WaferClassifier, truth: list[str]) -> list[dict[str, Any]]:
    """Per round: how many pseudo-labels agree with the public label, overall and per class."""
    rounds = []
    for r, pl in enumerate(clf.pseudo_labels_, start=1):
        names = [clf.classes_[j] for j in pl["label"].tolist()]
        right = np.array([truth[i] == n for i, n in zip(pl["index"].tolist(), names, strict=True)])
        per_class = {}
        for c in clf.classes_:
            sel = np.array([n == c for n in names], dtype=bool)
            if sel.any():
                per_class[c] = {"n": int(sel.sum()), "precision": round(float(right[sel].mean()), 4)}
        overall = round(float(right.mean()), 4) if len(right) else None
        rounds.append({"round": r, "n": len(names), "precision": overall, "per_class": per_class})
    return rounds


def run_method(
    name: str, labelled: Path, unlabelled: tuple[Path, ...], args: argparse.Namespace
) -> tuple[WaferClassifier, float]:
    rounds = int(name.rsplit("-", 1)[1]) if name.startswith("self-training-") else 0
    if name != "supervised" and not rounds:
        raise SystemExit(f"unknown method {name!r}: supervised or self-training-N")
    recipe = Recipe(
        epochs=args.epochs,
        seed=args.seed,
        threads=args.threads,
        max_minutes=args.max_minutes,
        unlabeled=unlabelled if rounds else (),
        rounds=max(1, rounds),
        pseudo_threshold=args.threshold,
    )
    started = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clf = train([labelled], recipe=recipe)
    for w in caught:
        log(f"warning: {w.message}")
    return clf, time.monotonic() - started


def scored(clf: WaferClassifier, val: list, seconds: float) -> dict[str, Any]:
    result = evaluate(clf, val)
    return {
        "macro_f1": round(result["macro_f1"], 4),
        "accuracy": round(result["accuracy"], 4),
        "per_class_f1": {c: round(row["f1"], 4) for c, row in result["per_class"].items()},
        "train_seconds": round(seconds, 1),
        "early_stopping": clf.training_["early_stopping"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/wm811k"))
    ap.add_argument("--methods", default="supervised,self-training-1,self-training-2")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--max-minutes", type=float, default=15.0, help="Budget of each method's training.")
    ap.add_argument("--threshold", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    labelled = args.data / LABELLED
    unlabelled = tuple(args.data / p for p in UNLABELLED)
    val = [m for m in read_maps(args.data / VALIDATION) if m.labels]
    truth = [m.labels[0] if m.labels else "" for p in unlabelled for m in read_maps(p)]
    report: dict[str, Any] = {
        "labelled": LABELLED,
        "unlabelled": {"files": list(UNLABELLED), "maps": len(truth)},
        "validation": {"file": VALIDATION, "maps": len(val)},
        "protocol": "early stopping and calibration on a stratified 20 % hold-out of the labelled maps; "
        "the validation piece is only scored",
        "settings": {k: v for k, v in vars(args).items() if k != "data"},
        "methods": {},
    }
    for name in args.methods.split(","):
        log(f"{name}: training")
        clf, seconds = run_method(name, labelled, unlabelled, args)
        row = scored(clf, val, seconds)
        if clf.self_training_ is not None:
            row["self_training"] = clf.self_training_
            row["pseudo_label_precision"] = pseudo_label_precision(clf, truth)
        report["methods"][name] = row
        log(f"{name}: macro-F1 {row['macro_f1']:.4f} accuracy {row['accuracy']:.4f} in {seconds:.0f} s")
        print(json.dumps({name: row}, default=str), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
