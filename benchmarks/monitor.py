"""Drift-test power and false-alarm rate, drift-test speed, and auto-labelling savings; prints JSON.

    PYTHONPATH=src python benchmarks/monitor.py [--null-trials 200] [--trials 100] [--model DIR]

Drift: a baseline process makes a realistic mix of wafers (70 % clean, 6 % each of
Center, Edge-Loc, Loc, Scratch and Random, 52×52, synth default noise). A shifted process
is the same mix in which a fraction of wafers (5 %, 10 %, 20 %) is replaced by Edge-Ring
wafers. Each trial draws two independent sets of n wafers (n = 25, 100, 500) — both from
the baseline for the false-alarm rate, baseline vs shifted for the power — and runs
:func:`fabsight.monitor.drift_test` at α = 0.05 on the geometric features (no model).
Wafers come from pre-generated pools (features computed once) to keep the run short;
set A samples one half of each pool and set B the other, without replacement.

Speed: one drift test between two lots of 25 wafers (128 projections, 1000
permutations) and between two sets of 10,000 (128 projections, ``--big-permutations``),
wall and CPU seconds; feature extraction rate separately.

Auto-labelling (``--model``, a trained wafer classifier): labelled synthetic maps the
model never saw (another seed; once like the training data, once shifted to other grid
sizes and more noise) are auto-labelled at several thresholds; for each, the coverage
(share of maps labelled without a person), the accuracy of those labels, the labels saved
per 1,000 maps, and the widest coverage that keeps 95 / 98 / 99 % accuracy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any

import numpy as np

from fabsight.monitor import drift_test, extract_features
from fabsight.synth import generate_dataset

BASE_MIX = {"none": 0.70, "Center": 0.06, "Edge-Loc": 0.06, "Loc": 0.06, "Scratch": 0.06, "Random": 0.06}
SHIFTS = (0.05, 0.10, 0.20)
SIZES = (25, 100, 500)
ALPHA = 0.05


def _timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _pools(per_pattern: int, seed: int) -> tuple[dict[str, np.ndarray], float, float]:
    """Geometric features of ``per_pattern`` synthetic wafers of each pattern."""
    classes = [*BASE_MIX, "Edge-Ring"]
    maps = generate_dataset(per_pattern, classes=classes, seed=seed)
    table, wall, cpu = _timed(lambda: extract_features(maps))
    pools = {c: table.values[k * per_pattern : (k + 1) * per_pattern] for k, c in enumerate(classes)}
    return pools, len(maps) / wall, len(maps) / cpu


def _draw(
    pools: dict[str, np.ndarray], n: int, ring: float, rng: np.random.Generator, half: int, replace: bool = False
) -> np.ndarray:
    """n wafers of the baseline mix with a fraction ``ring`` replaced by Edge-Ring wafers.

    Set A draws from the first half of every pool and set B from the second, so the two
    sets never share a wafer and, without a shift, are exactly exchangeable
    (``replace``: sets larger than the pools, for timing only).
    """
    mix = {c: p * (1 - ring) for c, p in BASE_MIX.items()} | {"Edge-Ring": ring}
    counts = rng.multinomial(n, list(mix.values()))
    parts = []
    for c, k in zip(mix, counts, strict=True):
        pool = np.array_split(pools[c], 2)[half]
        parts.append(pool[rng.choice(len(pool), size=k, replace=replace)])
    return np.vstack([p for p in parts if len(p)])


def _rejection_rate(
    pools: dict[str, np.ndarray], n: int, ring: float, trials: int, args: argparse.Namespace, rng: np.random.Generator
) -> dict[str, Any]:
    rejected = 0
    for t in range(trials):
        a, b = _draw(pools, n, 0.0, rng, 0), _draw(pools, n, ring, rng, 1)
        res = drift_test(a, b, n_projections=args.projections, n_permutations=args.permutations, seed=t, alpha=ALPHA)
        rejected += res.drift
    rate = rejected / trials
    print(f"n={n} edge-ring={ring:.0%}: {rejected}/{trials} rejected", file=sys.stderr, flush=True)
    # Wilson 95 % interval: how far the estimate can be trusted with this many trials.
    z = 1.96
    centre = (rate + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(rate * (1 - rate) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return {
        "n_per_set": n,
        "edge_ring_fraction": ring,
        "trials": trials,
        "rejection_rate": round(rate, 4),
        "ci95": [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)],
    }


def _speed(pools: dict[str, np.ndarray], args: argparse.Namespace, rng: np.random.Generator) -> dict[str, Any]:
    out = {}
    for n, perms in ((25, 1000), (10_000, args.big_permutations)):
        a, b = _draw(pools, n, 0.0, rng, 0, replace=True), _draw(pools, n, 0.1, rng, 1, replace=True)
        _, wall, cpu = _timed(lambda a=a, b=b, p=perms: drift_test(a, b, n_projections=128, n_permutations=p))
        out[f"{n}_vs_{n}"] = {
            "permutations": perms,
            "projections": 128,
            "wall_s": round(wall, 3),
            "cpu_s": round(cpu, 3),
            "ms_per_permutation": round(1000 * wall / perms, 3),
        }
    return out


#: Auto-labelling data: like the training data, and shifted (other grid sizes, more noise).
LABEL_CONDITIONS: dict[str, dict[str, Any]] = {
    "like_training": {"shapes": ((52, 52),)},
    "shifted": {"shapes": ((40, 36), (80, 64)), "noise": (0.05, 0.12)},
}


def _autolabel(clf: Any, per_class: int, seed: int, condition: dict[str, Any]) -> dict[str, Any]:
    known = [str(c) for c in clf.classes_]
    maps = generate_dataset(per_class, classes=known, seed=seed, **condition)
    details, wall, _ = _timed(lambda: clf.predict_details(maps))
    truth = np.array(["+".join(m.labels) for m in maps])
    pred = np.array([d["label"] for d in details])
    prob = np.array([d["probability"] for d in details])
    flagged = np.array([d["needs_review"] for d in details])
    rows = []
    for thr in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99):
        auto = (prob >= thr) & ~flagged
        acc = float((pred[auto] == truth[auto]).mean()) if auto.any() else None
        rows.append(
            {
                "threshold": thr,
                "coverage": round(float(auto.mean()), 4),
                "auto_label_accuracy": None if acc is None else round(acc, 4),
                "labels_saved_per_1000": round(1000 * float(auto.mean())),
            }
        )
    # Labels saved at a fixed accuracy: the widest coverage whose auto-labels reach the target.
    saved = {}
    for target in (0.95, 0.98, 0.99):
        ok = [r for r in rows if r["auto_label_accuracy"] is not None and r["auto_label_accuracy"] >= target]
        best = max(ok, key=lambda r: r["coverage"]) if ok else None
        saved[str(target)] = None if best is None else {"threshold": best["threshold"], "coverage": best["coverage"]}
    return {
        "at_accuracy": saved,
        "maps": len(maps),
        "overall_accuracy": round(float((pred == truth).mean()), 4),
        "predict_maps_per_s": round(len(maps) / wall),
        "thresholds": rows,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--null-trials", type=int, default=100, help="trials per sample size without a shift")
    ap.add_argument("--trials", type=int, default=100, help="trials per (shift, sample size)")
    ap.add_argument("--projections", type=int, default=64)
    ap.add_argument("--permutations", type=int, default=199)
    ap.add_argument("--pool", type=int, default=1600, help="pre-generated wafers per pattern")
    ap.add_argument("--big-permutations", type=int, default=200, help="permutations for the 10,000 vs 10,000 timing")
    ap.add_argument("--model", help="wafer classifier directory for the auto-labelling benchmark")
    ap.add_argument("--label-per-class", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)

    pools, rate, cpu_rate = _pools(args.pool, args.seed)
    null = [_rejection_rate(pools, n, 0.0, args.null_trials, args, rng) for n in SIZES]
    power = [_rejection_rate(pools, n, s, args.trials, args, rng) for s in SHIFTS for n in SIZES]
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1m": os.getloadavg()[0]},
        "settings": {
            "alpha": ALPHA,
            "projections": args.projections,
            "permutations": args.permutations,
            "baseline_mix": BASE_MIX,
            "shape": [52, 52],
            "pool_per_pattern": args.pool,
        },
        "feature_extraction": {"wafers_per_s": round(rate), "wafers_per_cpu_s": round(cpu_rate)},
        "false_alarm_rate": null,
        "power": power,
        "speed": _speed(pools, args, rng),
    }
    if args.model:
        from fabsight.wafer import load_model

        clf = load_model(args.model)
        result["autolabel"] = {"model": args.model, "classes": [str(c) for c in clf.classes_]} | {
            name: _autolabel(clf, args.label_per_class, args.seed + 1, cond) for name, cond in LABEL_CONDITIONS.items()
        }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
