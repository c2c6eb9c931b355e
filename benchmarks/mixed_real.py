"""Real MixedWM38 maps (multi-label): ``fabsight wafer train`` against a handcrafted-features baseline.

Both learners see the same train piece (``--piece``: 1, 5, 10 or 20 % of MixedWM38) and are
scored on the same validation piece (``MixedWM38_val.npz``, 5,703 maps) in the same run;
prints one JSON document.

fabsight trains through :func:`fabsight.wafer.train` (what ``fabsight wafer train --val``
runs). The validation piece is given as ``--val``: it selects the epoch (early stopping),
fits the temperature and the per-label thresholds, and is then scored; the numbers are
therefore validation numbers, not a blind test. The baseline is the per-wafer geometric
features of :mod:`fabsight.monitor.features` + standardisation + one-vs-rest logistic
regression (0.5 per label, plain and with balanced weights), which sees the validation
piece only to be scored. Reported: exact match, macro-F1 and per-label F1 (as ``fabsight
wafer eval`` computes them), training seconds per 10,000 maps, prediction maps/s (batches of
256, preprocessing included). ``decoding`` also scores the fabsight model's probabilities
decoded both ways (per-label thresholds; the most probable combination seen in training).

Example (the numbers in docs/benchmarks.md)::

    PYTHONPATH=src nice -n 5 python benchmarks/mixed_real.py --piece 20 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.calibration import most_likely_combination
from fabsight.io import read_maps
from fabsight.monitor.features import extract_features
from fabsight.types import WaferMap
from fabsight.utils.timing import median_times
from fabsight.wafer import Recipe, evaluate, train
from fabsight.wafer.classifier import label_tuple

SPEED_MAPS = 2048


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def multi_hot(maps: list[WaferMap], classes: list[str]) -> np.ndarray:
    """N×C 0/1 targets of the maps' labels (``none`` = all zero)."""
    index = {c: j for j, c in enumerate(classes)}
    out = np.zeros((len(maps), len(classes)), dtype=int)
    for i, m in enumerate(maps):
        for name in label_tuple(m.labels):
            if name != "none":
                out[i, index[name]] = 1
    return out


def scores(truth: np.ndarray, guess: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Exact match, macro-F1 and per-label F1 of multi-hot predictions."""
    from sklearn.metrics import f1_score

    f1 = f1_score(truth, guess, average=None, zero_division=0)
    return {
        "exact_match": round(float((truth == guess).all(axis=1).mean()), 4),
        "macro_f1": round(float(f1.mean()), 4),
        "per_label_f1": {c: round(float(v), 4) for c, v in zip(classes, f1, strict=True)},
    }


def speed(predict: Any, maps: list[WaferMap], rounds: int) -> float:
    """End-to-end prediction maps/s over batches of 256 (median wall of ``rounds``)."""
    batch = maps[:SPEED_MAPS]
    wall, _ = median_times(lambda: [predict(batch[s : s + 256]) for s in range(0, len(batch), 256)], rounds)
    return round(len(batch) / wall, 1)


def decodings(clf: Any, train_maps: list[WaferMap], val_maps: list[WaferMap]) -> dict[str, Any]:
    """The model's validation probabilities decoded per label and as a seen combination."""
    classes = list(clf.classes_)
    probs = clf.predict_proba(val_maps)
    truth = multi_hot(val_maps, classes)
    seen = np.unique(multi_hot(train_maps, classes), axis=0)
    # probabilities moved so that each label's threshold sits at 0.5 (log-odds shifted)
    th = clf.label_thresholds_
    p = np.clip(probs.astype(np.float64), 1e-9, 1 - 1e-9)
    shifted = 1 / (1 + np.exp(-(np.log(p / (1 - p)) - np.log(th / (1 - th)))))
    return {
        "per_label_thresholds": scores(truth, (probs >= th).astype(int), classes),
        "seen_combination": scores(truth, most_likely_combination(probs, seen), classes),
        "seen_combination_threshold_shifted": scores(truth, most_likely_combination(shifted, seen), classes),
        "n_seen_combinations": len(seen),
    }


def run_fabsight(train_path: Path, val: Path, maps: tuple[list, list], args: Any) -> dict[str, Any]:
    train_maps, val_maps = maps
    recipe = Recipe(
        epochs=args.epochs,
        input_size=args.input_size,
        arch=args.arch,
        threads=args.threads,
        max_minutes=args.max_minutes,
        class_balance=args.class_balance,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    clf = train([train_path], val, recipe)
    seconds = time.perf_counter() - t0
    n = clf.training_["n_train"]
    result = evaluate(clf, val_maps)
    em, f1 = result["exact_match_accuracy"], result["macro_f1"]
    log(f"fabsight: exact match {em:.4f} macro-F1 {f1:.4f} in {seconds:.0f} s")
    return {
        "n_train": n,
        "arch": args.arch,
        "input_size": clf.input_size_,
        "epochs": clf.epochs,
        "class_balance": clf.class_balance,
        "train_seconds": round(seconds, 1),
        "train_seconds_per_10k_maps": round(seconds / n * 10_000, 1),
        "early_stopping": clf.training_["early_stopping"],
        "exact_match": round(result["exact_match_accuracy"], 4),
        "macro_f1": round(result["macro_f1"], 4),
        "per_label_f1": {c: round(r["f1"], 4) for c, r in result["per_label"].items()},
        "decoding": decodings(clf, train_maps, val_maps),
        "maps_per_s_batch256": speed(clf.predict, val_maps, args.speed_rounds),
    }


def run_baseline(maps: tuple[list, list], classes: list[str], balanced: bool, rounds: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_maps, val_maps = maps
    t0 = time.perf_counter()
    x = extract_features(train_maps).values
    y = multi_hot(train_maps, classes)
    weight = "balanced" if balanced else None
    model = make_pipeline(
        StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=3000, class_weight=weight))
    ).fit(x, y)
    seconds = time.perf_counter() - t0

    def predict(maps: list[WaferMap]) -> np.ndarray:
        return model.predict(extract_features(maps).values)

    result = scores(multi_hot(val_maps, classes), predict(val_maps), classes)
    log(f"baseline (balanced={balanced}): exact match {result['exact_match']:.4f} macro-F1 {result['macro_f1']:.4f}")
    return {
        "n_train": len(train_maps),
        "train_seconds": round(seconds, 1),
        "train_seconds_per_10k_maps": round(seconds / len(train_maps) * 10_000, 1),
        **result,
        "maps_per_s_batch256": speed(predict, val_maps, rounds),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/mixedwm38"))
    ap.add_argument("--piece", choices=("01", "05", "10", "20", "1", "5"), default="20")
    ap.add_argument("--epochs", type=int, default=None, help="Default: the library's rule (Recipe).")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--arch", default="compact")
    ap.add_argument("--class-balance", default=None)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed-rounds", type=int, default=3)
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    train_path = args.data / f"MixedWM38_train_{int(args.piece):02d}.npz"
    val = args.data / "MixedWM38_val.npz"
    maps = ([m for m in read_maps(train_path) if m.labels], [m for m in read_maps(val) if m.labels])
    log(f"training on {len(maps[0])} maps of {train_path.name}, validating on {len(maps[1])} maps of {val.name}")
    report: dict[str, Any] = {
        "train": str(train_path),
        "val": str(val),
        "n_val": len(maps[1]),
        "threads": args.threads,
        "max_minutes": args.max_minutes,
        "fabsight": run_fabsight(train_path, val, maps, args),
    }
    if not args.skip_baseline:
        classes = report["fabsight"]["per_label_f1"].keys()
        for balanced in (False, True):
            key = "baseline_features_ovr_logreg" + ("_balanced" if balanced else "")
            report[key] = run_baseline(maps, list(classes), balanced, args.speed_rounds)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
