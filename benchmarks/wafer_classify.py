"""Wafer-pattern recognition benchmark (MISSION W3, W4, W5): prints one JSON document.

Sections (``--sections``, default all):

- ``synthetic``: a model trained only on generated maps (the grids of ``SYNTH_SHAPES``),
  scored on maps generated independently (other seeds, other grid sizes, three noise
  levels); ECE before/after temperature scaling on that test set; what gets flagged.
- ``ood``: maps no class describes (checkerboards, all-fail, a cross, half a wafer,
  stripes): how many are flagged ``needs_review``.
- ``fewshot``: a shifted target distribution (other pattern parameters, 26×26 and
  200×200 grids, heavy noise) learnt from 5 / 10 / 20 labels per class: the synthetic
  model as is, prototype / probe heads on its frozen embedding, fine-tuning, and training
  from scratch; macro-F1 mean ± sd over repeats.
- ``mixed``: MixedWM38-style multi-label (the 38 combinations, 52×52), exact-match accuracy.
- ``speed``: CPU throughput at batch 256 (network only, as ``predict`` runs it and as
  trained, and end to end with preprocessing; median of ``--speed-rounds`` after a
  warm-up), single-map latency, parameters, size on disk, and the load average.
- ``real``: the real KLARF / STDF / G85 fixtures through ``predict_details``.

Example (the numbers in docs/benchmarks.md)::

    PYTHONPATH=src python benchmarks/wafer_classify.py --train-threads 16 --threads 2 \\
        --model-out /tmp/fabsight-models/wafer-synth --mixed-model-out /tmp/fabsight-models/wafer-mixed
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.calibration import expected_calibration_error
from fabsight.synth import generate_dataset
from fabsight.types import WM811K_CLASSES, WaferMap
from fabsight.utils.timing import median_times
from fabsight.wafer import WaferClassifier, evaluate, load_model
from fabsight.wafer.classifier import SYNTH_SHAPES
from fabsight.wafer.net import ARCHITECTURES
from fabsight.wafer.review import SHIFTED_NOISE, SHIFTED_PARAMS, SHIFTED_SHAPES, grid_checks, shifted_maps

TEST_SHAPES = ((30, 30), (45, 60), (64, 64), (90, 90), (150, 120))
TEST_NOISE = {"low": (0.0, 0.01), "default": (0.01, 0.03), "high": (0.03, 0.06)}
#: Maps the review threshold is learnt on, and the few-shot target: the harder
#: distribution of fabsight.wafer.review.shifted_maps (other seeds for each use).
REVIEW_SEED = 1
FEWSHOT_TEST_SEED = 9000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4)
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_round(v) for v in x]
    return x


def _raw_probs(clf: WaferClassifier, calibrated: np.ndarray) -> np.ndarray:
    """Undo temperature scaling: softmax(T·log p) = softmax(z)."""
    z = np.log(np.clip(calibrated, 1e-30, None)) * clf.temperature_
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def synthetic_section(args: argparse.Namespace) -> tuple[dict[str, Any], WaferClassifier]:
    if args.reuse:
        clf = load_model(args.model_out)
        train_info: dict[str, Any] = {"reused": str(args.model_out), **clf.training_}
    else:
        train = generate_dataset(args.per_class, shapes=SYNTH_SHAPES, seed=0)
        review = shifted_maps(args.review_per_class, WM811K_CLASSES, seed=REVIEW_SEED)
        log(f"training on {len(train)} maps, review threshold on {len(review)} shifted maps")
        t0 = time.time()
        clf = WaferClassifier(epochs=args.epochs, n_threads=args.train_threads, device=args.device, random_state=0)
        desc = f"fabsight.synth: {args.per_class} maps/class x 9 WM-811K classes, seed 0, grids {SYNTH_SHAPES}"
        clf.fit(train, data=desc, review_maps=review)
        clf.save(args.model_out)
        train_info = {
            "maps": len(train),
            "epochs": args.epochs,
            "seconds": time.time() - t0,
            "threads": args.train_threads,
            "device": args.device,
        }
        log(f"trained in {train_info['seconds']:.0f}s -> {args.model_out}")
    clf.n_threads = args.threads
    out: dict[str, Any] = {
        "train": train_info,
        "validation": clf.metrics_["validation"],
        "review_maps": clf.metrics_.get("review"),
        "test": {},
    }
    all_maps: list[WaferMap] = []
    for i, (name, noise) in enumerate(TEST_NOISE.items()):
        test = generate_dataset(args.test_per_class, shapes=TEST_SHAPES, seed=1000 + i, noise=noise)
        r = evaluate(clf, test)
        out["test"][name] = {"noise": noise, "n": r["n"], "accuracy": r["accuracy"], "macro_f1": r["macro_f1"]}
        all_maps += test
    r = evaluate(clf, all_maps)
    pred = clf.predict(all_maps)
    by_grid: dict[str, list[bool]] = {}
    for m, p in zip(all_maps, pred, strict=True):
        by_grid.setdefault("x".join(map(str, m.shape)), []).append(p == m.labels[0])
    out["test"]["all"] = {
        "n": r["n"],
        "accuracy": r["accuracy"],
        "macro_f1": r["macro_f1"],
        "grid_shapes": TEST_SHAPES,
        "accuracy_by_grid": {k: float(np.mean(v)) for k, v in sorted(by_grid.items())},
        "per_class_f1": {c: v["f1"] for c, v in r["per_class"].items()},
        "confusion": r["confusion"],
    }
    proba = clf.predict_proba(all_maps)
    y = np.array([clf.classes_.index(m.labels[0]) for m in all_maps])
    details = clf.predict_details(all_maps)
    flagged = np.array([d["needs_review"] for d in details])
    right = proba.argmax(axis=1) == y
    out["test"]["calibration"] = {
        "ece_before": expected_calibration_error(_raw_probs(clf, proba), y, False),
        "ece_after": expected_calibration_error(proba, y, False),
        "temperature": clf.temperature_,
    }
    reasons = [d["review_reason"] or "" for d in details]
    out["test"]["review"] = {
        "flagged_fraction": float(flagged.mean()),
        "flagged_low_confidence": float(np.mean([r.startswith("low confidence") for r in reasons])),
        "flagged_by_grid_rules": float(np.mean([r is not None for r in grid_checks([m.grid for m in all_maps])])),
        "flagged_ood": float(
            np.mean([d["review_reason"] is not None and "distribution" in d["review_reason"] for d in details])
        ),
        "accuracy_of_unflagged": float(right[~flagged].mean()) if (~flagged).any() else None,
        "accuracy_of_flagged": float(right[flagged].mean()) if flagged.any() else None,
    }
    return out, clf


def _disk(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    inside = np.hypot((yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2)) <= 1
    return inside, yy, xx


def ood_maps() -> dict[str, list[np.ndarray]]:
    """Maps of failure signatures none of the nine classes describes."""
    kinds: dict[str, list[np.ndarray]] = {}
    for kind in ("checkerboard-1die", "checkerboard-4dies", "all-fail", "cross", "half-wafer", "stripes"):
        maps = []
        for h, w in ((40, 40), (52, 52), (80, 80), (60, 45)):
            inside, yy, xx = _disk(h, w)
            fail = {
                "checkerboard-1die": (yy + xx) % 2 == 0,
                "checkerboard-4dies": (yy // 4 + xx // 4) % 2 == 0,
                "all-fail": np.ones((h, w), bool),
                "cross": (np.abs(yy - h // 2) <= 1) | (np.abs(xx - w // 2) <= 1),
                "half-wafer": yy < h // 2,
                "stripes": yy % 6 < 2,
            }[kind]
            maps.append(np.where(inside, np.where(fail, 2, 1), 0).astype(np.uint8))
        kinds[kind] = maps
    return kinds


def _reason_kind(reason: str | None) -> str:
    """``review_reason`` reduced to which check fired."""
    if reason is None:
        return "-"
    return "low confidence" if reason.startswith("low confidence") else reason.split(":")[0]


def grid_rule_false_flags(per_class: int) -> dict[str, Any]:
    """How often the raw-grid rules flag ordinary synthetic maps (they never should):
    single-type and mixed maps on every training and test grid, background noise 0-6 %."""
    shapes = tuple(sorted(set(SYNTH_SHAPES) | set(TEST_SHAPES) | set(SHIFTED_SHAPES)))
    single = generate_dataset(per_class, shapes=shapes, noise=(0.0, 0.06), seed=4242)
    mixed = generate_dataset(max(1, per_class // 4), mixed=True, shapes=shapes, noise=(0.0, 0.06), seed=4243)
    out: dict[str, Any] = {"shapes": shapes, "noise": (0.0, 0.06)}
    for name, maps in (("single_type", single), ("mixed_type", mixed)):
        flags = grid_checks([m.grid for m in maps])
        flagged = [("+".join(m.labels), f) for m, f in zip(maps, flags, strict=True) if f is not None]
        out[name] = {"n": len(maps), "flagged": len(flagged), "examples": flagged[:5]}
    return out


def ood_section(clf: WaferClassifier, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, maps in ood_maps().items():
        d = clf.predict_details(maps)
        out[kind] = {
            "flagged": f"{sum(x['needs_review'] for x in d)}/{len(d)}",
            "labels": [x["label"] for x in d],
            "reasons": [_reason_kind(x["review_reason"]) for x in d],
            "ood_score_median": float(np.median([x["ood_score"] for x in d])),
        }
    out["ood_threshold"] = clf.ood_.threshold
    out["grid_rules_on_ordinary_maps"] = grid_rule_false_flags(args.rule_check_per_class)
    return out


def target_maps(per_class: int, seed: int) -> list[WaferMap]:
    return shifted_maps(per_class, WM811K_CLASSES, seed=seed)


def fewshot_section(args: argparse.Namespace, base: WaferClassifier) -> dict[str, Any]:
    test = target_maps(args.fewshot_test_per_class, seed=FEWSHOT_TEST_SEED)
    as_is = evaluate(base, test)
    out: dict[str, Any] = {
        "target": {"shapes": SHIFTED_SHAPES, "noise": SHIFTED_NOISE, "params": SHIFTED_PARAMS, "test_maps": len(test)},
        "synthetic_model_as_is": {"macro_f1": as_is["macro_f1"], "accuracy": as_is["accuracy"]},
        "budgets": {},
    }
    methods = args.methods
    for k in args.budgets:
        scores: dict[str, list[float]] = {m: [] for m in methods}
        for r in range(args.repeats):
            few = target_maps(k, seed=100 + 10 * r + k)
            for m in methods:
                t0 = time.time()
                if m == "scratch":
                    clf = WaferClassifier(epochs=args.fewshot_epochs, n_threads=args.train_threads, random_state=r)
                else:
                    clf = WaferClassifier(
                        init=base, head=m, epochs=args.fewshot_epochs, n_threads=args.train_threads, random_state=r
                    )
                clf.fit(few)
                clf.n_threads = args.threads
                scores[m].append(evaluate(clf, test)["macro_f1"])
                log(f"few-shot k={k} repeat={r} {m}: macro-F1 {scores[m][-1]:.3f} ({time.time() - t0:.0f}s)")
        out["budgets"][str(k)] = {
            m: {
                "macro_f1_mean": float(np.mean(v)),
                "macro_f1_sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
                "runs": v,
            }
            for m, v in scores.items()
        }
    return out


def sits_on_another_pattern(m: WaferMap, name: str) -> bool:
    """Whether the Loc blob or Scratch ``name`` of a generated mixed map lies on or near the
    failing area of another of its patterns (a Center blob, a Donut ring, an Edge-Ring band),
    judged from the generator's truth geometry. Before the generator kept every pattern
    visible, such a pattern's dies often failed anyway and the map could not show it; now
    it shows at least part of itself (truth ``visible_dies``), and this split says how much
    the overlap still costs."""
    patterns = m.extras["patterns"]
    r = patterns[name]["radius"]  # distance of its centre / midpoint from the wafer centre
    reach = 1.3 * patterns[name]["size"] if name == "Loc" else 0.05
    for other, q in patterns.items():
        if other == "Center" and r - reach < q["size"] + 0.05:
            return True
        if other == "Donut" and abs(r - q["ring_radius"]) < q["width"] / 2 + reach:
            return True
        if other == "Edge-Ring" and r + reach > 1 - q["width"]:
            return True
    return False


def mixed_section(args: argparse.Namespace) -> dict[str, Any]:
    if args.reuse:
        clf = load_model(args.mixed_model_out)
        train_info: dict[str, Any] = {"reused": str(args.mixed_model_out), **clf.training_}
    else:
        train = generate_dataset(args.mixed_per_class, mixed=True, shapes=((52, 52),), seed=0)
        log(f"mixed: training on {len(train)} maps")
        t0 = time.time()
        widths, embed_dim = ARCHITECTURES[args.mixed_arch]
        epochs = args.mixed_epochs or args.epochs
        if args.mixed_init:  # fine-tune a trained mixed model (all weights) on these maps
            clf = WaferClassifier(
                multilabel=True,
                init=args.mixed_init,
                head="finetune",
                epochs=epochs,
                n_threads=args.train_threads,
                device=args.device,
                random_state=0,
            )
        else:
            clf = WaferClassifier(
                multilabel=True,
                widths=widths,
                embed_dim=embed_dim,
                epochs=epochs,
                n_threads=args.train_threads,
                device=args.device,
                random_state=0,
            )
        desc = f"fabsight.synth mixed: {args.mixed_per_class} maps x 38 MixedWM38 combinations, 52x52, seed 0"
        load_before = os.getloadavg()
        clf.fit(train, data=desc)
        train_info = {
            "maps": len(train),
            "epochs": epochs,
            "seconds": time.time() - t0,
            "threads": args.train_threads,
            "device": args.device,
            "arch": "from --mixed-init" if args.mixed_init else args.mixed_arch,
            "init": str(args.mixed_init) if args.mixed_init else None,
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        }
        clf.save(args.mixed_model_out)
    clf.n_threads = args.threads
    test = generate_dataset(args.test_per_class, mixed=True, shapes=((52, 52),), seed=777)
    r = evaluate(clf, test)
    pred = clf.predict(test)
    right = [tuple(p) == tuple(m.labels) for m, p in zip(test, pred, strict=True)]
    # exact match per combination size (1, 2, 3, 4 patterns; 'none' counts as 0)
    by_size: dict[str, list[bool]] = {}
    for m, ok in zip(test, right, strict=True):
        by_size.setdefault(str(0 if m.labels == ("none",) else len(m.labels)), []).append(ok)
    # misses of the small patterns, split by whether the map could show them at all
    small: dict[str, Any] = {}
    for name in ("Loc", "Scratch"):
        rows = [
            (sits_on_another_pattern(m, name), name not in p)
            for m, p in zip(test, pred, strict=True)
            if name in m.labels
        ]
        # dies of the pattern no other pattern fails (mixed maps only), missed vs found
        shown = [
            (m.extras["patterns"][name]["visible_dies"], name not in p)
            for m, p in zip(test, pred, strict=True)
            if name in m.labels and len(m.labels) > 1
        ]
        missed_shown = [v for v, miss in shown if miss]
        covered = [miss for cov, miss in rows if cov]
        clear = [miss for cov, miss in rows if not cov]
        small[name] = {
            "maps": len(rows),
            "on_another_pattern": len(covered),
            "missed": int(sum(miss for _, miss in rows)),
            "missed_on_another_pattern": int(sum(covered)),
            "miss_rate_on_another_pattern": float(np.mean(covered)) if covered else None,
            "miss_rate_clear": float(np.mean(clear)) if clear else None,
            "visible_dies_median_missed": float(np.median(missed_shown)) if missed_shown else None,
            "visible_dies_median_found": float(np.median([v for v, miss in shown if not miss])),
        }
    decidable = [
        ok
        for m, ok in zip(test, right, strict=True)
        if not any(n in m.labels and sits_on_another_pattern(m, n) for n in ("Loc", "Scratch"))
    ]
    return {
        "train": train_info,
        "validation": clf.metrics_["validation"],
        "label_thresholds": dict(zip(clf.classes_, clf.label_thresholds_.tolist(), strict=True)),
        "test": {
            "n": r["n"],
            "exact_match_accuracy": r["exact_match_accuracy"],
            "macro_f1": r["macro_f1"],
            "per_label_f1": {c: v["f1"] for c, v in r["per_label"].items()},
            "exact_match_by_number_of_patterns": {k: float(np.mean(v)) for k, v in sorted(by_size.items())},
            "small_pattern_misses": small,
            "exact_match_where_no_small_pattern_is_covered": {
                "n": len(decidable),
                "accuracy": float(np.mean(decidable)),
            },
        },
    }


def speed_section(args: argparse.Namespace, clf: WaferClassifier, model_dir: Path) -> dict[str, Any]:
    import torch

    from fabsight.wafer.net import n_parameters
    from fabsight.wafer.preprocess import maps_to_array

    torch.set_num_threads(args.threads)
    clf.n_threads = args.threads
    maps = generate_dataset(114, shapes=((52, 52),), seed=5)[:1024]
    load_before = os.getloadavg()
    x = maps_to_array(maps, clf.input_size_)
    net = clf.net_.eval()

    def trained_net() -> None:  # the network as trained and exported (NCHW, batch norms)
        with torch.inference_mode():
            for s in range(0, len(x), 256):
                net(torch.from_numpy(x[s : s + 256]))

    def predict_net() -> None:  # the network as predict runs it (folded, channels-last copy)
        for s in range(0, len(x), 256):
            clf.forward(x[s : s + 256])

    net_wall, net_cpu = median_times(predict_net, args.speed_rounds)
    plain_wall, _ = median_times(trained_net, args.speed_rounds)
    e2e_wall, e2e_cpu = median_times(partial(clf.predict_details, maps), args.speed_rounds)
    lat = []
    for m in maps[:50]:
        t0 = time.perf_counter()
        clf.predict_details([m])
        lat.append(time.perf_counter() - t0)
    return {
        "threads": args.threads,
        "batch": 256,
        "grid": [52, 52],
        "network_maps_per_s": len(x) / net_wall,
        "network_maps_per_cpu_s": len(x) / net_cpu,
        "network_as_trained_maps_per_s": len(x) / plain_wall,
        "end_to_end_maps_per_s": len(maps) / e2e_wall,
        "end_to_end_maps_per_cpu_s": len(maps) / e2e_cpu,
        "single_map_latency_ms_median": 1000 * float(np.median(lat)),
        "single_map_latency_ms_p90": 1000 * float(np.percentile(lat, 90)),
        "parameters": n_parameters(net),
        "model_dir_bytes": sum(f.stat().st_size for f in model_dir.iterdir()),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "cpu_count": os.cpu_count(),
    }


def real_section(clf: WaferClassifier, shared: Path) -> list[dict[str, Any]]:
    from fabsight.io import read_maps

    fx = shared / "fixtures"
    files = [*sorted((fx / "klarf").glob("*.000")), fx / "stdf" / "lot2.stdf", *sorted((fx / "g85").glob("*.xml"))]
    rows = []
    for f in files:
        maps = read_maps(f)
        for m, d in zip(maps, clf.predict_details(maps), strict=True):
            rows.append(
                {
                    "file": f.name,
                    "lot": m.lot_id,
                    "wafer": m.wafer_id,
                    "shape": list(m.shape),
                    "dies": m.n_dies,
                    "failing": m.n_fail,
                    "label": d["label"],
                    "probability": d["probability"],
                    "top3": d["top3"],
                    "needs_review": d["needs_review"],
                    "review_reason": d["review_reason"],
                }
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", default="synthetic,ood,fewshot,mixed,speed,real")
    ap.add_argument("--per-class", type=int, default=300)
    ap.add_argument("--test-per-class", type=int, default=60)
    ap.add_argument("--rule-check-per-class", type=int, default=400, help="ood: maps/class for the false-flag rate")
    ap.add_argument("--review-per-class", type=int, default=40, help="shifted maps per class for the review threshold")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--mixed-per-class", type=int, default=500)
    ap.add_argument("--mixed-arch", choices=list(ARCHITECTURES), default="medium")
    ap.add_argument("--mixed-epochs", type=int, default=None, help="mixed: epochs (default --epochs)")
    ap.add_argument("--mixed-init", type=Path, default=None, help="mixed: fine-tune this model, not from scratch")
    ap.add_argument("--budgets", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fewshot-test-per-class", type=int, default=40)
    ap.add_argument("--fewshot-epochs", type=int, default=8)
    ap.add_argument("--methods", nargs="+", default=["prototype", "probe", "finetune", "scratch"])
    ap.add_argument("--train-threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="where models train (cpu, cuda, auto); inference stays on the CPU")
    ap.add_argument("--threads", type=int, default=2, help="threads for inference and the speed section")
    ap.add_argument("--speed-rounds", type=int, default=5)
    ap.add_argument("--model-out", type=Path, default=Path("/tmp/fabsight-models/wafer-synth"))
    ap.add_argument("--mixed-model-out", type=Path, default=Path("/tmp/fabsight-models/wafer-mixed"))
    ap.add_argument(
        "--reuse", action="store_true", help="synthetic / mixed: evaluate --model-out / --mixed-model-out, do not train"
    )
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    result: dict[str, Any] = {"benchmark": "wafer_classify", "args": {k: str(v) for k, v in vars(args).items()}}
    t_start = time.time()
    clf = None
    if "synthetic" in sections:
        result["synthetic"], clf = synthetic_section(args)
    elif sections & {"ood", "fewshot", "speed", "real"}:
        clf = load_model(args.model_out)
        clf.n_threads = args.threads
    if "ood" in sections:
        result["ood"] = ood_section(clf, args)
    if "fewshot" in sections:
        result["fewshot"] = fewshot_section(args, clf)
    if "mixed" in sections:
        result["mixed"] = mixed_section(args)
    if "speed" in sections:
        result["speed"] = speed_section(args, clf, args.model_out)
    if "real" in sections and (args.shared / "fixtures").is_dir():
        result["real"] = real_section(clf, args.shared)
    result["seconds"] = time.time() - t_start
    print(json.dumps(_round(result), indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


if __name__ == "__main__":
    main()
