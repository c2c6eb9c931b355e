"""Real WM-811K maps: ``fabsight wafer train`` against a handcrafted-features baseline.

Both learners see the same training maps and are scored on the same validation piece in
the same run; prints one JSON document. Settings (``--setting``):

- ``all``: every map of the four train pieces (37,348) → ``LSWMD_val.pkl``.
- ``few``: ``--per-class`` (20) labelled maps per class drawn (seeded) from train_01 +
  train_10 (Near-full has only 16 there: all of them) → ``LSWMD_val.pkl``.
- ``few-val``: maps a model trained on the train pieces never saw: ``--per-class`` maps
  per class drawn from ``LSWMD_val.pkl``, scored on the rest of it.
- ``few-mixed``: another fab's maps: ``--per-class`` single-pattern maps per class of
  MixedWM38 (``--mixed``; 52×52 grids, GAN-balanced) from its 20 % piece, scored on the
  single-pattern maps of its validation piece.

The last two hold out a stratified part of the few maps for early stopping and
calibration (no large labelled validation set exists in that case); ``--init`` starts from
a trained model (``pretrained``: the shipped one).

fabsight trains through :func:`fabsight.wafer.train` (what the CLI runs), early-stopped and
calibrated on the validation piece (``--val``); the baseline is the per-wafer geometric
features of :mod:`fabsight.monitor.features` + standardisation + logistic regression (with
and without balanced class weights). Reported: macro-F1, accuracy, per-class F1, training
seconds per 10,000 maps, prediction maps/s (batches of 256, preprocessing included) and
single-map latency.

Example (the numbers in docs/benchmarks.md)::

    PYTHONPATH=src nice -n 15 python benchmarks/wafer_real.py --setting all --threads 2 --max-minutes 25
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.io import read_maps, write_lswmd
from fabsight.monitor.features import extract_features
from fabsight.types import WaferMap
from fabsight.utils.timing import median_times
from fabsight.wafer import Recipe, evaluate, train
from fabsight.wafer.recipe import SCRATCH

PIECES = ("LSWMD_train_01.pkl", "LSWMD_train_10.pkl", "LSWMD_train_20.pkl", "LSWMD_train_29.pkl")
FEW_PIECES = PIECES[:2]
SPEED_MAPS = 2048


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def few_per_class(paths: list[Path], per_class: int, seed: int, out: Path) -> Path:
    """``per_class`` labelled maps of each class of ``paths`` (all of a smaller class), as one LSWMD pickle."""
    by_class: dict[str, list[WaferMap]] = defaultdict(list)
    for p in paths:
        for m in read_maps(p):
            if m.labels:
                by_class[m.labels[0]].append(m)
    rng = np.random.default_rng(seed)
    picked = []
    for name in sorted(by_class):
        maps = by_class[name]
        idx = rng.choice(len(maps), size=min(per_class, len(maps)), replace=False)
        picked += [maps[i] for i in sorted(idx)]
    write_lswmd(picked, out)
    return out


def split_per_class(maps: list[WaferMap], per_class: int, seed: int) -> tuple[list[WaferMap], list[WaferMap]]:
    """``per_class`` maps of each class (at most two thirds of a small class), and the rest."""
    by_class: dict[str, list[int]] = defaultdict(list)
    for i, m in enumerate(maps):
        by_class[m.labels[0]].append(i)
    rng = np.random.default_rng(seed)
    picked: set[int] = set()
    for name in sorted(by_class):
        idx = by_class[name]
        k = min(per_class, (2 * len(idx)) // 3)
        picked.update(int(i) for i in rng.choice(idx, size=k, replace=False))
    return [maps[i] for i in sorted(picked)], [m for i, m in enumerate(maps) if i not in picked]


def single_pattern(path: Path) -> list[WaferMap]:
    """The maps of ``path`` with one pattern (or none), as single-label maps."""
    return [m for m in read_maps(path) if len(m.labels) == 1]


def scores(truth: list[str], pred: list[str], classes: list[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, f1_score

    f1 = f1_score(truth, pred, labels=classes, average=None, zero_division=0)
    return {
        "macro_f1": float(f1_score(truth, pred, labels=classes, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(truth, pred)),
        "per_class_f1": {c: round(float(v), 4) for c, v in zip(classes, f1, strict=True)},
    }


def speed(predict: Any, maps: list[WaferMap], rounds: int) -> dict[str, float]:
    """End-to-end prediction speed: maps/s over batches of 256 and one-map latency (median wall)."""
    batch = maps[:SPEED_MAPS]
    wall, _ = median_times(lambda: [predict(batch[s : s + 256]) for s in range(0, len(batch), 256)], rounds)
    single, _ = median_times(lambda: predict(maps[:1]), max(5, 5 * rounds))
    return {"maps_per_s_batch256": round(len(batch) / wall, 1), "single_map_latency_ms": round(1000 * single, 2)}


def run_fabsight(train_paths: list[Path], val: Path | None, val_maps: list[WaferMap], args: Any) -> dict[str, Any]:
    recipe = Recipe(
        # from scratch unless asked: the shipped model saw every train piece, so starting from
        # it in the all/few settings would measure that, not these maps
        init=args.init,
        head=args.head,
        epochs=args.epochs,
        input_size=args.input_size,
        threads=args.threads,
        max_minutes=args.max_minutes,
        class_balance=args.class_balance,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    clf = train(train_paths, val, recipe)
    seconds = time.perf_counter() - t0
    n = clf.training_["n_train"]
    result = evaluate(clf, val_maps)
    log(f"fabsight: macro-F1 {result['macro_f1']:.4f} accuracy {result['accuracy']:.4f} in {seconds:.0f} s")
    return {
        "n_train": n,
        "init": args.init,
        "head": clf.head_,
        "train_seconds": round(seconds, 1),
        "train_seconds_per_10k_maps": round(seconds / n * 10_000, 1),
        "input_size": clf.input_size_,
        "class_balance": clf.class_balance,
        "early_stopping": clf.training_["early_stopping"],
        "macro_f1": result["macro_f1"],
        "accuracy": result["accuracy"],
        "per_class_f1": {c: round(r["f1"], 4) for c, r in result["per_class"].items()},
        **speed(clf.predict, val_maps, args.speed_rounds),
    }


def run_baseline(train_maps: list[WaferMap], val_maps: list[WaferMap], balanced: bool, rounds: int) -> dict[str, Any]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    t0 = time.perf_counter()
    x = extract_features(train_maps).values
    y = [m.labels[0] for m in train_maps]
    model = make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced" if balanced else None)
    )
    model.fit(x, y)
    seconds = time.perf_counter() - t0

    def predict(maps: list[WaferMap]) -> list[str]:
        return list(model.predict(extract_features(maps).values))

    classes = sorted(set(y))
    result = scores([m.labels[0] for m in val_maps], predict(val_maps), classes)
    log(f"baseline (balanced={balanced}): macro-F1 {result['macro_f1']:.4f} accuracy {result['accuracy']:.4f}")
    return {
        "n_train": len(train_maps),
        "train_seconds": round(seconds, 1),
        "train_seconds_per_10k_maps": round(seconds / len(train_maps) * 10_000, 1),
        **result,
        **speed(predict, val_maps, rounds),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/wm811k"))
    ap.add_argument("--setting", choices=("all", "few", "few-val", "few-mixed"), default="all")
    ap.add_argument("--mixed", type=Path, default=Path("../shared/data/mixedwm38"))
    ap.add_argument("--init", default=SCRATCH, help="Model to start from ('pretrained': the shipped one).")
    ap.add_argument("--head", default="auto", help="auto, probe, finetune or prototype (with --init).")
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--train", type=Path, nargs="*", help="Training pieces instead of the setting's.")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--class-balance", default=None)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--speed-rounds", type=int, default=3)
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    val: Path | None = args.data / "LSWMD_val.pkl"
    val_maps = [m for m in read_maps(val) if m.labels]
    with tempfile.TemporaryDirectory() as tmp:
        if args.train:
            train_paths = list(args.train)
        elif args.setting == "all":
            train_paths = [args.data / p for p in PIECES]
        elif args.setting == "few":
            few = [args.data / p for p in FEW_PIECES]
            train_paths = [few_per_class(few, args.per_class, args.seed, Path(tmp) / "few.pkl")]
        else:
            if args.setting == "few-mixed":
                pool, val = single_pattern(args.mixed / "MixedWM38_train_20.npz"), args.mixed / "MixedWM38_val.npz"
                val_maps = single_pattern(val)
                picked, _ = split_per_class(pool, args.per_class, args.seed)
            else:
                picked, val_maps = split_per_class(val_maps, args.per_class, args.seed)
            train_paths = [Path(tmp) / "few.pkl"]
            write_lswmd(picked, train_paths[0])
        if args.setting in ("few-val", "few-mixed"):
            val = None
        log(f"training on {[p.name for p in train_paths]}, scoring {len(val_maps)} maps (early stopping: {val})")
        report: dict[str, Any] = {
            "setting": args.setting if not args.train else "custom",
            "train": [str(p) for p in train_paths],
            "val": str(val) if val is not None else "stratified hold-out of the training maps",
            "n_val": len(val_maps),
            "threads": args.threads,
            "max_minutes": args.max_minutes,
            "fabsight": run_fabsight(train_paths, val, val_maps, args),
        }
        if not args.skip_baseline:
            train_maps = [m for p in train_paths for m in read_maps(p) if m.labels]
            report["baseline_features_logreg"] = run_baseline(train_maps, val_maps, False, args.speed_rounds)
            report["baseline_features_logreg_balanced"] = run_baseline(train_maps, val_maps, True, args.speed_rounds)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
