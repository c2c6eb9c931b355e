"""Generated wafer maps judged on real WM-811K maps; prints (and with ``--out`` merges into) JSON.

    PYTHONPATH=src python benchmarks/synth_vs_real.py --data ../shared/data/wm811k --sections stats
    PYTHONPATH=src python benchmarks/synth_vs_real.py --data ../shared/data/wm811k --sections fit
    PYTHONPATH=src python benchmarks/synth_vs_real.py --data ../shared/data/wm811k --sections train \\
        --rows synth-before,synth-after --out runs/synth_vs_real.json --threads 1 --max-minutes 8

Sections:

- ``stats``: per class, the :mod:`fabsight.synth.realism` statistics of real maps (up to
  ``--per-class`` from the four train pieces, seeded) against generated ones "before"
  (profile ``default`` on ``SYNTH_SHAPES``: what ``wafer train --synthetic`` drew until the
  ``wm811k`` profile existed) and "after" (profile ``wm811k``): 10/50/90 % quantiles and the
  two-sample KS statistic per statistic (0 = same distribution, 1 = disjoint).
- ``fit``: the quantile-matching rule that produced :data:`fabsight.synth.patterns.WM811K_PARAMS`
  (see :data:`FIT`): prints the ranges it proposes, from :data:`fabsight.synth.PARAMS`.
- ``train``: models trained through :func:`fabsight.wafer.train` (what ``wafer train`` runs;
  no ``--val``: early stopping and calibration on the model's own stratified hold-out, so
  the validation piece is never looked at before scoring), scored on ``LSWMD_val.pkl``.
  Rows (``--rows``): ``synth-before`` / ``synth-after`` (generated maps only, ``--synthetic``
  per class), ``01`` / ``01+synth`` (train_01, 623 real maps, without / with generated),
  ``01+synth-before`` (with the ``default`` profile's maps), ``10`` / ``10+synth`` (train_10,
  6,225 maps), ``all`` / ``all+synth`` (37,348 maps).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.io import read_maps
from fabsight.synth import PARAMS, PROFILES, generate_dataset
from fabsight.synth.realism import STATISTICS, map_statistics, quantile_shapes
from fabsight.types import WM811K_CLASSES, WaferMap
from fabsight.utils.atomic import write_json
from fabsight.wafer.classifier import SYNTH_SHAPES

PIECES = {
    "01": "LSWMD_train_01.pkl",
    "10": "LSWMD_train_10.pkl",
    "20": "LSWMD_train_20.pkl",
    "29": "LSWMD_train_29.pkl",
}
#: Which parameter of which pattern drives which statistic, for the ``fit`` rule.
FIT: dict[str, dict[str, str]] = {
    "Center": {"size": "pattern_radius"},
    "Donut": {"ring_radius": "pattern_radius", "width": "pattern_width"},
    "Edge-Loc": {"depth": "pattern_width", "span_deg": "pattern_length"},
    "Edge-Ring": {"width": "pattern_width"},
    "Loc": {"size": "pattern_length", "distance": "pattern_radius"},
    "Near-full": {"density": "fail_share"},
    "Random": {"density": "fail_share"},
    "Scratch": {"length": "pattern_length"},
}
#: Classes whose background range the ``fit`` rule sets, from the ``background`` statistic
#: (Random's and Near-full's background is their pattern).
NOISE_FIT = ("none", "Center", "Donut", "Edge-Loc", "Edge-Ring", "Loc", "Scratch")
#: Parameters that are probabilities stay at most 1 whatever the fit says.
PROBABILITIES = frozenset({"density"})
ROWS = {
    "synth-before": ((), "default"),
    "synth-after": ((), "wm811k"),
    "01": (("01",), None),
    "01+synth": (("01",), "wm811k"),
    "01+synth-before": (("01",), "default"),
    "10": (("10",), None),
    "10+synth": (("10",), "wm811k"),
    "all": (tuple(PIECES), None),
    "all+synth": (tuple(PIECES), "wm811k"),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def real_by_class(data: Path, per_class: int, seed: int) -> dict[str, list[WaferMap]]:
    """Up to ``per_class`` labelled real maps per class from the four train pieces (seeded draw)."""
    by_class: dict[str, list[WaferMap]] = defaultdict(list)
    for name in PIECES.values():
        for m in read_maps(data / name):
            if m.labels:
                by_class[m.labels[0]].append(m)
    rng = np.random.default_rng(seed)
    return {c: [ms[i] for i in sorted(rng.permutation(len(ms))[:per_class])] for c, ms in sorted(by_class.items())}


def grid_sizes(data: Path) -> dict[str, Any]:
    """Grid sizes of the train pieces: how many, side quantiles, and the quantile shapes overall and per class."""
    by_class: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for name in PIECES.values():
        for m in read_maps(data / name):
            by_class[m.labels[0] if m.labels else "unlabelled"].append(m.grid.shape)
    shapes = [s for v in by_class.values() for s in v]
    side = np.array([(h + w) / 2 for h, w in shapes])
    return {
        "maps": len(shapes),
        "distinct_sizes": len(set(shapes)),
        "side_quantiles_5_25_50_75_95": np.quantile(side, [0.05, 0.25, 0.5, 0.75, 0.95]).round(1).tolist(),
        "quantile_shapes": quantile_shapes(shapes),
        "class_quantile_shapes": {c: quantile_shapes(v) for c, v in sorted(by_class.items()) if c in WM811K_CLASSES},
    }


def statistics(maps: Sequence[WaferMap]) -> np.ndarray:
    return np.array([map_statistics(m.grid) for m in maps]).reshape(-1, len(STATISTICS))


def generated(
    per_class: int,
    seed: int,
    profile: str,
    classes: Sequence[str] = WM811K_CLASSES,
    class_shapes: dict[str, Any] | None = None,
    **params: Any,
) -> dict[str, np.ndarray]:
    """Statistics of ``per_class`` generated maps per class (``params``: one class's parameters,
    noise); on ``class_shapes[c]`` when given, else the profile's grids (``SYNTH_SHAPES`` for ``default``)."""
    out = {}
    for c in classes:
        shapes = class_shapes[c] if class_shapes else SYNTH_SHAPES if profile == "default" else None
        maps = generate_dataset(per_class, shapes=shapes, classes=[c], seed=seed, profile=profile, **params)
        out[c] = statistics(maps)
    return out


def _quantiles(x: np.ndarray) -> list[float] | None:
    x = x[np.isfinite(x)]
    return np.quantile(x, [0.1, 0.5, 0.9]).round(4).tolist() if x.size else None


def _ks(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import ks_2samp

    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    return round(float(ks_2samp(a, b).statistic), 4) if a.size and b.size else None


def stats_section(real: dict[str, np.ndarray], generated: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Per class and statistic: quantiles of real and of each ``generated`` set, KS distances to real."""
    table: dict[str, Any] = {}
    for c in WM811K_CLASSES:
        table[c] = {}
        for j, s in enumerate(STATISTICS):
            row: dict[str, Any] = {"real_q10_50_90": _quantiles(real[c][:, j])}
            for name, gen in generated.items():
                row[f"{name}_q10_50_90"] = _quantiles(gen[c][:, j])
                row[f"ks_{name}"] = _ks(real[c][:, j], gen[c][:, j])
            table[c][s] = row
    mean = {
        (k := f"ks_{name}"): round(
            float(np.mean([v[k] for c in table.values() for v in c.values() if v[k] is not None])), 4
        )
        for name in generated
    }
    return {"per_class": table, "mean_ks": mean}


def _scaled(old: tuple[float, float], real: np.ndarray, gen: np.ndarray, cap: float) -> tuple[float, float]:
    """``old`` with its ends scaled by real / generated 10 % and 90 % quantiles, at most ``cap``."""
    rq, gq = np.nanquantile(real, [0.1, 0.9]), np.nanquantile(gen, [0.1, 0.9])
    lo, hi = min(old[0] * rq[0] / gq[0], cap), min(old[1] * rq[1] / gq[1], cap)
    return round(float(min(lo, hi)), 3), round(float(max(lo, hi)), 3)


def fit(
    real: dict[str, np.ndarray], class_shapes: dict[str, Any], per_class: int, seed: int, rounds: int
) -> dict[str, Any]:
    """Quantile matching: scale each :data:`FIT` parameter's low / high end by real / generated
    of its statistic's 10 % / 90 % quantile, and each :data:`NOISE_FIT` class's background
    range likewise from the ``background`` statistic. Maps are generated on each class's own
    real grid quantiles (``class_shapes``), so sizes in wafer radii compare like for like."""
    base = PROFILES["wm811k"].noise
    ranges = {c: {k: PARAMS[c][k] for k in keys} for c, keys in FIT.items()}
    noise = {c: base for c in NOISE_FIT}
    col = {s: j for j, s in enumerate(STATISTICS)}
    for r in range(rounds):
        gen = {}
        for c in WM811K_CLASSES:
            gen.update(
                generated(
                    per_class, seed + r, "wm811k", [c], class_shapes, noise=noise.get(c, base), **ranges.get(c, {})
                )
            )
        for c, keys in FIT.items():
            for k, s in keys.items():
                cap = 1.0 if k in PROBABILITIES else np.inf
                ranges[c][k] = _scaled(ranges[c][k], real[c][:, col[s]], gen[c][:, col[s]], cap)
        for c in NOISE_FIT:
            noise[c] = _scaled(noise[c], real[c][:, col["background"]], gen[c][:, col["background"]], 1.0)
        log(f"fit round {r + 1}: {ranges} noise {noise}")
    return {"params": {c: {k: list(v) for k, v in d.items()} for c, d in ranges.items()}, "class_noise": noise}


def train_row(row: str, data: Path, val_maps: list[WaferMap], args: argparse.Namespace) -> dict[str, Any]:
    from fabsight.wafer import Recipe, evaluate, train

    pieces, profile = ROWS[row]
    recipe = Recipe(
        synthetic=args.synthetic if profile else 0,
        synthetic_profile=profile,
        epochs=args.epochs,
        threads=args.threads,
        max_minutes=args.max_minutes,
        seed=args.seed,
    )
    t0 = time.perf_counter()
    clf = train([data / PIECES[p] for p in pieces], None, recipe)
    seconds = time.perf_counter() - t0
    result = evaluate(clf, val_maps)
    log(f"{row}: macro-F1 {result['macro_f1']:.4f} accuracy {result['accuracy']:.4f} in {seconds:.0f} s")
    return {
        "real_pieces": list(pieces),
        "synthetic_per_class": recipe.synthetic,
        "profile": profile,
        "n_train": clf.training_["n_train"],
        "early_stopping": clf.training_["early_stopping"],
        "train_seconds": round(seconds, 1),
        "macro_f1": round(result["macro_f1"], 4),
        "accuracy": round(result["accuracy"], 4),
        "per_class_f1": {c: round(r["f1"], 4) for c, r in result["per_class"].items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/wm811k"))
    ap.add_argument("--sections", default="stats", help="comma-separated: stats, fit, train")
    ap.add_argument("--per-class", type=int, default=400, help="maps per class for the statistics (real and generated)")
    ap.add_argument("--fit-rounds", type=int, default=1)
    ap.add_argument("--rows", default="synth-before,synth-after", help=f"train rows: {', '.join(ROWS)}")
    ap.add_argument("--synthetic", type=int, default=300, help="generated maps per class in the train rows")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON file to merge the results into")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    out: dict[str, Any] = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
    if sections & {"stats", "fit"}:
        real_maps = real_by_class(args.data, args.per_class, args.seed)
        real = {c: statistics(ms) for c, ms in real_maps.items()}
        log("real statistics done")
    if "stats" in sections:
        grids = grid_sizes(args.data)
        sets = {
            "before": generated(args.per_class, args.seed, "default"),
            "after": generated(args.per_class, args.seed, "wm811k"),
            "after_on_class_grids": generated(
                args.per_class, args.seed, "wm811k", class_shapes=grids["class_quantile_shapes"]
            ),
        }
        out["statistics"] = {"per_class_maps": args.per_class, "grids": grids, **stats_section(real, sets)}
    if "fit" in sections:
        shapes = grid_sizes(args.data)["class_quantile_shapes"]
        out["fit"] = fit(real, shapes, args.per_class, args.seed, args.fit_rounds)
    if "train" in sections:
        val_maps = read_maps(args.data / "LSWMD_val.pkl")
        rows = out.setdefault("train", {})
        for row in args.rows.split(","):
            rows[row] = train_row(row, args.data, val_maps, args)
            if args.out:
                write_json(args.out, out)
    if args.out:
        write_json(args.out, out)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
