"""Die-level classification benchmark: datasets × backbones × label budgets × methods, as JSON.

    PYTHONPATH=src python benchmarks/prepare_deeppcb_crops.py --out /tmp/die_data
    PYTHONPATH=src python benchmarks/die_classify.py --data /tmp/die_data --out bench_out/die.json \
        --sizes deeppcb=112,magnetic_tile=224,elpv=224

Data: DeepPCB defect crops (six classes; labels drawn from the original trainval crops —
``--pool-per-class 0`` keeps all 5,078 — scored on the original test split, all 2,055
crops unless ``--test-per-class``), magnetic tile (six classes incl. Free) and ELPV solar
cells (four defect-probability classes), both with repeated stratified 70/30 splits. Each
dataset runs at its own input size (``--sizes``). For each backbone: optionally a layer
scan (``--scan``), the label-budget curve (10/25/50/all per class, ``--repeats`` seeded
draws, mean ± sd), probe vs hybrid (⊕ GLCM + Zernike) vs hierarchical, augmentation at a
small budget, ``--adapted DIR`` (a ``die adapt`` backbone probed on the same splits as its
base), and embedding throughput / peak memory. Embeddings are cached
(``$FABSIGHT_CACHE``), so a rerun costs only the classifier fits.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fabsight.backbones import create_backbone
from fabsight.die.classifier import DieClassifier, ProbeClassifier
from fabsight.die.data import DEFAULT_AUGMENT, ImageFolder, read_image, scan_folder
from fabsight.die.embeddings import default_cache, extract, extract_layers
from fabsight.die.handcrafted import extract_handcrafted
from fabsight.die.metrics import classification_metrics
from fabsight.utils.atomic import to_jsonable, write_json

SCAN_LAYERS = {
    "efficientnet_lite0": ["blocks.2", "blocks.4", "blocks.6", "head"],
    "dinov2_vits14": [f"blocks.{i}" for i in range(3, 12)],
}
COMBOS = {"efficientnet_lite0": [("blocks.4", "head"), ("blocks.6", "head")],
          "dinov2_vits14": [("blocks.6", "blocks.9"), ("blocks.8", "blocks.11")]}


def per_class_sample(folder: ImageFolder, k: int, rng: np.random.Generator) -> np.ndarray:
    idx = []
    for c in range(len(folder.classes)):
        members = np.flatnonzero(folder.labels == c)
        idx += list(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.sort(np.asarray(idx))


def datasets(root: Path, names: list[str], pool_per_class: int, test_per_class: int,
             repeats: int) -> dict[str, dict[str, Any]]:
    """name → {"folder": all images used, "splits": [(pool_idx, test_idx), ...]}."""
    from sklearn.model_selection import StratifiedShuffleSplit

    rng = np.random.default_rng(0)
    out: dict[str, dict[str, Any]] = {}
    if "deeppcb" in names:
        train = scan_folder(root / "deeppcb" / "train")
        test = scan_folder(root / "deeppcb" / "test", classes=train.classes)
        pool = train.subset(per_class_sample(train, pool_per_class, rng)) if pool_per_class else train
        held = test.subset(per_class_sample(test, test_per_class, rng)) if test_per_class else test
        both = ImageFolder(root, pool.paths + held.paths, np.concatenate([pool.labels, held.labels]), train.classes)
        split = (np.arange(len(pool)), np.arange(len(pool), len(both)))
        out["deeppcb"] = {"folder": both, "splits": [split] * repeats, "distinct_splits": False,
                          "split": f"original trainval ({len(pool)} crops) / test ({len(held)} crops) split"}
    for name in ("magnetic_tile", "elpv"):
        if name not in names:
            continue
        folder = scan_folder(root / name)
        sss = StratifiedShuffleSplit(n_splits=repeats, test_size=0.3, random_state=0)
        out[name] = {"folder": folder, "splits": list(sss.split(folder.labels, folder.labels)),
                     "distinct_splits": True, "split": f"repeated stratified 70/30 of {len(folder)} images"}
    return out


def score(clf: Any, X: np.ndarray, y: np.ndarray, tr: np.ndarray, te: np.ndarray, classes: list[str]) -> dict:
    clf.fit(X[tr], y[tr])
    m = classification_metrics(y[te], clf.predict(X[te]), classes)
    return {"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}


def budget_draw(labels: np.ndarray, pool: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    if k is None:
        return pool
    rng = np.random.default_rng(seed)
    idx = []
    for c in np.unique(labels[pool]):
        members = pool[labels[pool] == c]
        idx += list(rng.choice(members, size=min(k, len(members)), replace=False))
    return np.asarray(idx)


def summarise(runs: list[dict]) -> dict:
    return {f"{k}_{s}": float(getattr(np, s)([r[k] for r in runs])) for k in ("accuracy", "macro_f1")
            for s in ("mean", "std")} | {"repeats": len(runs)}


def throughput(bb_name: str, size: int, paths: list[Path], threads: int) -> dict:
    torch.set_num_threads(threads)
    bb = create_backbone(bb_name, input_size=size)
    images = [read_image(p) for p in paths]
    bb.embed(bb.preprocess(images[:4]))  # warm-up
    t = time.perf_counter()
    for i in range(0, len(images), 32):
        bb.embed(bb.preprocess(images[i:i + 32]))
    dt = time.perf_counter() - t
    return {"images": len(images), "threads": threads, "images_per_s": len(images) / dt,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def adapted_gain(bb_dir: Path, base: str, size: int, ds: dict, budgets: list[int | None], cache: Path) -> dict:
    """Probe on an adapted backbone vs its base: same layers, same label draws, same test images."""
    folder: ImageFolder = ds["folder"]
    y = np.asarray(folder.classes)[folder.labels]
    out: dict[str, Any] = {"backbone_dir": str(bb_dir)}
    probe = ProbeClassifier(calibrate=False)
    feats = {}
    for label, name in (("base", base), ("adapted", str(bb_dir))):
        bb = create_backbone(name, input_size=size)
        feats[label] = extract(bb, folder.paths, 32, cache)
    for k in budgets:
        runs: dict[str, list] = {"base": [], "adapted": []}
        distinct = ds["splits"] if k is not None or ds["distinct_splits"] else ds["splits"][:1]
        for r, (pool, te) in enumerate(distinct):
            tr = budget_draw(y, pool, k, seed=r)
            for label, X in feats.items():
                runs[label].append(score(probe, X, y, tr, te, folder.classes))
        out["all" if k is None else str(k)] = {m: summarise(v) for m, v in runs.items()}
    return out


def run_backbone(name: str, sizes: dict[str, int], data: dict, args: argparse.Namespace) -> dict:
    budgets = [None if b == "all" else int(b) for b in args.budgets.split(",")]
    result: dict[str, Any] = {}
    for ds_name, ds in data.items():
        size = sizes[ds_name]
        bb = create_backbone(name, input_size=size)
        layers_needed = SCAN_LAYERS[name] if args.scan else list(bb.cfg.default_layers)
        folder: ImageFolder = ds["folder"]
        y = np.asarray(folder.classes)[folder.labels]
        t = time.perf_counter()
        per_layer = extract_layers(bb, folder.paths, layers_needed, 32, args.cache)
        hand = extract_handcrafted(folder.paths, cache_dir=args.cache)
        res: dict[str, Any] = {"n_images": len(folder), "split": ds["split"], "input_size": size,
                               "weights": bb.cfg.weights_source, "layers": bb.cfg.default_layers,
                               "embed_s": time.perf_counter() - t}
        probe = ProbeClassifier(calibrate=False)
        if args.scan:
            scan = {}
            tr, te = ds["splits"][0]  # one split: the scan only ranks layers
            for layers in [*([layer] for layer in SCAN_LAYERS[name]), *COMBOS[name]]:
                X = np.concatenate([per_layer[layer] for layer in layers], axis=1)
                scan["+".join(layers)] = score(probe, X, y, tr, te, folder.classes)
            res["layer_scan_all_labels_first_split"] = scan
        deep = np.concatenate([per_layer[layer] for layer in bb.cfg.default_layers], axis=1)
        hybrid = np.concatenate([deep, hand], axis=1)
        curves: dict[str, Any] = {}
        for k in budgets:
            runs: dict[str, list] = {"probe": [], "hybrid": [], "hierarchical": [], "handcrafted_only": []}
            distinct = ds["splits"] if k is not None or ds["distinct_splits"] else ds["splits"][:1]
            for r, (pool, te) in enumerate(distinct):
                tr = budget_draw(y, pool, k, seed=r)
                runs["probe"].append(score(probe, deep, y, tr, te, folder.classes))
                runs["hybrid"].append(score(probe, hybrid, y, tr, te, folder.classes))
                runs["handcrafted_only"].append(score(probe, hand, y, tr, te, folder.classes))
                ok = next((c for c in ("Free", "p0") if c in folder.classes), None)
                hier = DieClassifier(method="hierarchical", calibrate=False, ok_class=ok)
                runs["hierarchical"].append(score(hier, hybrid, y, tr, te, folder.classes))
            curves["all" if k is None else str(k)] = {m: summarise(v) for m, v in runs.items()}
        res["label_budget"] = curves
        if args.augment and (name == "efficientnet_lite0" or args.augment_all):
            k = args.augment_budget
            runs_plain, runs_aug = [], []
            for r, (pool, te) in enumerate(ds["splits"]):
                tr = budget_draw(y, pool, k, seed=r)
                paths = [folder.paths[i] for i in tr]
                Xa = [deep[tr]] + [extract(bb, paths, 32, args.cache, augmentation=a) for a in DEFAULT_AUGMENT]
                ya = np.concatenate([y[tr]] * len(Xa))
                runs_plain.append(score(probe, deep, y, tr, te, folder.classes))
                probe.fit(np.concatenate(Xa), ya)
                m = classification_metrics(y[te], probe.predict(deep[te]), folder.classes)
                runs_aug.append({"accuracy": m["accuracy"], "macro_f1": m["macro_f1"]})
            res["augmentation"] = {"labels_per_class": k, "variants": list(DEFAULT_AUGMENT),
                                   "plain": summarise(runs_plain), "augmented": summarise(runs_aug)}
        if args.adapted:
            res["adapt_gain"] = adapted_gain(args.adapted, name, size, ds, budgets, args.cache)
        if args.throughput:
            paths = ds["folder"].paths[-64:]
            res["throughput"] = [throughput(name, size, paths, t) for t in (1, 2)]
            torch.set_num_threads(args.threads)
        result[ds_name] = res
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="output of prepare_deeppcb_crops.py")
    ap.add_argument("--backbones", default="efficientnet_lite0,dinov2_vits14")
    ap.add_argument("--datasets", default="deeppcb,magnetic_tile,elpv")
    ap.add_argument("--sizes", default="deeppcb=112,magnetic_tile=224,elpv=224",
                    help="input size per dataset: DeepPCB crops are 64-130 px, tiles ~200-400 px, ELPV 300 px")
    ap.add_argument("--budgets", default="10,25,50,all")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--pool-per-class", type=int, default=0, help="DeepPCB label pool per class (0: all)")
    ap.add_argument("--test-per-class", type=int, default=0, help="DeepPCB test crops per class (0: all)")
    ap.add_argument("--scan", action="store_true", help="probe every layer once to rank them")
    ap.add_argument("--adapted", type=Path, help="a 'die adapt' directory: probe it against its base backbone")
    ap.add_argument("--threads", type=int, default=1, help="torch threads for embedding (1 is fastest on a shared box)")
    ap.add_argument("--augment", action="store_true")
    ap.add_argument("--throughput", action="store_true", help="time uncached embedding of 64 images")
    ap.add_argument("--augment-all", action="store_true", help="augmentation experiment for DINOv2 too (slow)")
    ap.add_argument("--augment-budget", type=int, default=10)
    ap.add_argument("--cache", type=Path, default=default_cache())
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    sizes = {k: int(v) for k, v in (item.split("=") for item in args.sizes.split(","))}
    data = datasets(args.data, args.datasets.split(","), args.pool_per_class, args.test_per_class, args.repeats)
    report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "loadavg_before": os.getloadavg()}
    for name in args.backbones.split(","):
        report[name] = run_backbone(name, sizes, data, args)
        torch.set_num_threads(args.threads)
    report["loadavg_after"] = os.getloadavg()
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2, default=to_jsonable))


if __name__ == "__main__":
    main()
