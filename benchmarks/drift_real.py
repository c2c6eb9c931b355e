"""Drift tests on real WM-811K maps: false alarms and power of the default test; prints JSON.

    PYTHONPATH=src nice -n 5 python benchmarks/drift_real.py --threads 1 --cache /tmp/val_outputs.npz [--combine min-p]

Data: the validation piece ``LSWMD_val.pkl`` (12,450 labelled real maps), which the shipped
model never trained on. The model (``--model``; the shipped one by default) classifies and
embeds every map once; the geometric features are computed once; each trial then draws
windows of wafers (indices) from these cached outputs, so a trial costs only the tests.

Every trial draws two disjoint windows A and B of ``--window`` (300) wafers at random from
the validation piece, then changes B by the scenario:

- ``same``: nothing (B is another sample of the same distribution): the false-alarm rate at
  α = 0.05, with a Wilson 95 % interval over ``--null-trials`` trials;
- ``+10% CLASS`` for each of the 8 pattern classes: 10 % of B (30 of 300 wafers) is
  replaced by wafers whose label is CLASS (drawn outside A and B), i.e. B holds 270 wafers
  of the usual mix and 30 of CLASS (Near-full has only 30 maps: every trial adds those 30);
- ``spread``: 10 % of B (30 wafers) that are labelled ``none`` are replaced by patterned
  wafers, the 8 pattern classes in turn (4 or 3 of each): fewer clean wafers, a little
  more of every pattern;
- ``issue #22``: A = 330 wafers, B = 330 other wafers plus 40 Edge-Ring wafers (11 %), the
  case where the features-only test gave p = 0.069.

Three tests are run on each pair, with the same seed: **features only** (the geometric
features and the sliced-Wasserstein test: the default before a model shipped, and still
what runs without one), **default** (the shipped model: features with ``p[CLASS]``,
pattern mix and embedding, combined by ``--combine``), and **oracle mix**, the pattern-mix
statistic on the *true* labels (what a perfect classifier would give: the ceiling of any
test of the mix, set by the sampling noise of two windows of 300). Reported per scenario:
rejection rate at p < 0.05 (``same``) or p ≤ 0.01 (shifts), the median p, and for the
default test each component's own median p.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from fabsight.deploy import load_predictor
from fabsight.io import read_maps
from fabsight.monitor import drift_test, extract_features
from fabsight.monitor.drift import mix_statistic, tail_p
from fabsight.monitor.features import GEOMETRIC_FEATURES, FeatureTable
from fabsight.wafer.pretrained import resolve_model

VAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "wm811k" / "LSWMD_val.pkl"
ALPHA = 0.05
DETECT = 0.01
SHIFT_FRACTION = 0.10
ISSUE = (330, 40, "Edge-Ring")
# A pair of windows: indices of A and of B into the validation piece.
Pair = tuple[np.ndarray, np.ndarray]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _scenarios(truth: np.ndarray, window: int) -> dict[str, Callable[[np.random.Generator], Pair]]:
    """Scenario name → a function drawing one (A, B) pair of windows.

    Added wafers are drawn first and the windows from the other maps, so even Near-full
    (30 maps in the validation piece) can supply 30 wafers that are in neither window.
    """
    n = len(truth)
    patterns = sorted(set(truth.tolist()) - {"none"})
    m = round(SHIFT_FRACTION * window)

    def windows(rng: np.random.Generator, added: np.ndarray, size: int, size_b: int) -> Pair:
        rest = rng.permutation(np.setdiff1d(np.arange(n), added))
        return rest[:size], np.concatenate([rest[size : size + size_b], added])

    def same(rng: np.random.Generator) -> Pair:
        return windows(rng, np.array([], dtype=np.int64), window, window)

    def one_class(name: str, size: int, extra: int, size_b: int) -> Callable[[np.random.Generator], Pair]:
        def draw(rng: np.random.Generator) -> Pair:
            return windows(rng, rng.choice(np.flatnonzero(truth == name), size=extra, replace=False), size, size_b)

        return draw

    def spread(rng: np.random.Generator) -> Pair:
        order = rng.permutation(patterns)
        counts = np.bincount(np.arange(m) % len(order), minlength=len(order))
        added = np.concatenate(
            [rng.choice(np.flatnonzero(truth == c), size=k, replace=False) for c, k in zip(order, counts, strict=True)]
        )
        a, b = windows(rng, added, window, window)
        clean = b[: window][truth[b[:window]] == "none"][:m]  # the first m clean wafers of B make room
        return a, np.setdiff1d(b, clean)

    out: dict[str, Callable[[np.random.Generator], Pair]] = {"same": same}
    out |= {f"+10% {c}": one_class(c, window, m, window - m) for c in patterns}
    out["spread"] = spread
    size, extra, name = ISSUE
    out["issue #22"] = one_class(name, size, extra, size)
    return out


def oracle_p(truth_idx: np.ndarray, pair: Pair, n_permutations: int, rng: np.random.Generator) -> float:
    """Permutation p-value of the pattern-mix statistic on the true labels."""
    a, b = pair
    labels = np.concatenate([truth_idx[a], truth_idx[b]])
    statistic = mix_statistic(labels, len(a))
    observed = np.zeros((1, len(labels)), dtype=bool)
    observed[0, : len(a)] = True
    splits = np.vstack([observed, rng.permuted(np.repeat(observed, n_permutations, axis=0), axis=1)])
    return float(tail_p(statistic(splits.astype(np.float64))[:, None])[0, 0])


def _rate(p: list[float], threshold: float, strict: bool) -> dict[str, Any]:
    hits = sum((v < threshold) if strict else (v <= threshold) for v in p)
    ci = stats.binomtest(hits, len(p)).proportion_ci(method="wilson")
    return {
        "rate": round(hits / len(p), 4),
        "ci95": [round(ci.low, 4), round(ci.high, 4)],
        "median_p": round(float(np.median(p)), 4),
    }


def cached_features(maps: list[Any], model_dir: Path, args: argparse.Namespace) -> tuple[FeatureTable, float]:
    """Features of ``maps`` with the model at ``model_dir``, read from ``--cache`` when it holds them."""
    if args.cache is not None and args.cache.is_file():
        z = np.load(args.cache, allow_pickle=False)
        if str(z["model"]) == str(model_dir) and len(z["values"]) == len(maps):
            log(f"model outputs from {args.cache}")
            classes = z["classes"].tolist()
            return FeatureTable(z["values"], z["names"].tolist(), z["predicted"].tolist(), classes, z["embedding"]), 0.0
    log(f"{len(maps)} maps; classifying and embedding them with {model_dir}")
    t = time.perf_counter()
    full = extract_features(maps, model=load_predictor(model_dir, "torch", n_threads=args.threads))
    seconds = time.perf_counter() - t
    if args.cache is not None:
        np.savez(args.cache, model=str(model_dir), values=full.values, names=full.names, predicted=full.predicted,
                 classes=full.classes, embedding=full.embedding)
    return full, seconds


def run_scenario(
    name: str,
    draw: Callable[[np.random.Generator], Pair],
    tables: tuple[FeatureTable, FeatureTable, np.ndarray],
    trials: int,
    args: argparse.Namespace,
) -> dict[str, Any]:
    geo, full, truth_idx = tables
    rng = np.random.default_rng([args.seed, len(name), sum(map(ord, name))])
    ps: dict[str, list[float]] = {"features only": [], "default": [], "oracle mix": []}
    comps: dict[str, list[float]] = {}
    settings = {"n_projections": args.projections, "n_permutations": args.permutations, "alpha": ALPHA}
    for t in range(trials):
        a, b = draw(rng)
        ps["features only"].append(drift_test(geo.subset(a), geo.subset(b), seed=t, **settings).p_value)
        res = drift_test(full.subset(a), full.subset(b), seed=t, combine=args.combine, **settings)
        ps["default"].append(res.p_value)
        for c in res.components:
            comps.setdefault(c.name, []).append(c.p_value)
        ps["oracle mix"].append(oracle_p(truth_idx, (a, b), args.permutations, rng))
    null = name == "same"
    threshold = ALPHA if null else DETECT
    out: dict[str, Any] = {"trials": trials, "n_a": len(a), "n_b": len(b), "threshold": threshold}
    out |= {k: _rate(v, threshold, strict=null) for k, v in ps.items()}
    out["default_components_median_p"] = {k: round(float(np.median(v)), 4) for k, v in comps.items()}
    log(f"{name}: " + ", ".join(f"{k} {out[k]['rate']:.2f} (median p {out[k]['median_p']:.3g})" for k in ps))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--val", type=Path, default=VAL, help="WM-811K validation piece")
    ap.add_argument("--model", default=None, help="wafer model directory (default: the shipped model)")
    ap.add_argument("--window", type=int, default=300)
    ap.add_argument("--null-trials", type=int, default=100)
    ap.add_argument("--shift-trials", type=int, default=20)
    ap.add_argument("--permutations", type=int, default=299)
    ap.add_argument("--projections", type=int, default=32)
    ap.add_argument("--combine", default="fisher", choices=("fisher", "min-p"))
    ap.add_argument("--only", default=None, help="comma-separated scenario names (default: all)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", type=Path, default=None, help="npz file keeping the model outputs between runs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    t0 = time.perf_counter()
    maps = read_maps(args.val)
    truth = np.array([m.labels[0] if m.labels else "none" for m in maps])
    model_dir = resolve_model(args.model)
    full, extract_s = cached_features(maps, model_dir, args)
    n_geo = len(GEOMETRIC_FEATURES)
    geo = FeatureTable(full.values[:, :n_geo], full.names[:n_geo])
    classes = sorted(set(truth.tolist()))
    truth_idx = np.array([classes.index(c) for c in truth])
    accuracy = float(np.mean(np.array(full.predicted) == truth))

    wanted = None if args.only is None else {s.strip() for s in args.only.split(",")}
    results = {}
    for name, draw in _scenarios(truth, args.window).items():
        if wanted is None or name in wanted:
            trials = args.null_trials if name == "same" else args.shift_trials
            results[name] = run_scenario(name, draw, (geo, full, truth_idx), trials, args)
    print(
        json.dumps(
            {
                "data": str(args.val.name),
                "maps": len(maps),
                "model": str(model_dir),
                "model_accuracy_on_val": round(accuracy, 4),
                "settings": {k: v for k, v in vars(args).items() if k not in ("val", "model", "cache")},
                "extract_seconds": round(extract_s, 1),
                "wall_seconds": round(time.perf_counter() - t0, 1),
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "scenarios": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
