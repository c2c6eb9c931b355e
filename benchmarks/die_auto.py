"""``die train --auto`` against fixed probes on every real die-image set here, as JSON.

    PYTHONPATH=src python benchmarks/prepare_deeppcb_crops.py --out /tmp/die_data --no-elpv
    PYTHONPATH=src nice -n 10 python benchmarks/die_auto.py --data /tmp/die_data --threads 1 \
        --out bench_out/die_auto.json

Sets: magnetic tile (6 classes incl. Free), DeepPCB defect crops (6), MVTec 3D-AD tire whole
images (good, contamination, cut, hole; ``--shared``).

For each set, label budget (5, 10, 25 per class) and seeded draw: the labelled images are the
first L of a per-class permutation, the test images are the same for every draw (magnetic
tile: a seeded sample that leaves enough of each class to label; DeepPCB: a seeded sample of
the original test crops).
On the same labelled images the script runs the automatic search (:func:`fabsight.die.auto.search`,
the code ``die train --auto`` runs) and two fixed probes — the former ``die train`` default
(DINOv2 ViT-S/14 block 10, 224 px, C = 0.5) and EfficientNet-Lite0 blocks.6+head — and scores
each on the test images. Embeddings are cached (``$FABSIGHT_CACHE``): a warm pass over every
image first measures embedding seconds per image for each (backbone, input size) the search
tries, so "search seconds per labelled image" = the search on a warm cache plus those passes.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fabsight.die import auto
from fabsight.die.classifier import ProbeClassifier
from fabsight.die.data import ImageFolder, scan_folder
from fabsight.die.embeddings import default_cache
from fabsight.die.metrics import classification_metrics
from fabsight.die.model import features
from fabsight.utils.atomic import write_json

FIXED = {"dinov2_b10_probe": auto.Candidate("dinov2_vits14", 224, ("blocks.10",), "probe", 0.5),
         "effnet_b6head_probe": auto.Candidate("efficientnet_lite0", 224, ("blocks.6", "head"), "probe", 0.5)}


def permutations(folder: ImageFolder, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(np.flatnonzero(folder.labels == c)) for c in range(len(folder.classes))]


def draws(root: Path, name: str, n_draws: int, most: int, test_per_class: int) -> list[dict[str, Any]]:
    """Per draw: the labelled pool (per-class permutations) and the test images, the same for every
    draw (at most ``test_per_class`` of each class; magnetic tile's leave ``most`` per class to label)."""
    out = []
    if name in ("magnetic_tile", "tire"):
        folder = scan_folder(root / name)
        fixed = permutations(folder, 1000)  # the test images: the same for every draw
        test = np.sort(np.concatenate([p[:min(test_per_class, len(p) - most)] for p in fixed]))
        pool = folder.subset(np.setdiff1d(np.arange(len(folder)), test))
        for d in range(n_draws):
            out.append({"pool": pool, "perm": permutations(pool, d), "test": folder.subset(test)})
    elif name == "deeppcb":
        train = scan_folder(root / name / "train")
        test_all = scan_folder(root / name / "test", classes=train.classes)
        test = np.sort(np.concatenate([p[:test_per_class] for p in permutations(test_all, 1000)]))
        for d in range(n_draws):
            out.append({"pool": train, "perm": permutations(train, d), "test": test_all.subset(test)})
    return out


def tire_view(tire_root: Path, out: Path) -> None:
    """``out/{good,contamination,cut,hole}/`` symlinks to the MVTec 3D-AD tire RGB images (whole
    300×400 images; ``combined``, 5 images, left out); good = train/good + test/good."""
    if out.is_dir():
        return
    for split, cls in (("train", "good"), ("test", "good"), ("test", "contamination"), ("test", "cut"),
                       ("test", "hole")):
        (out / cls).mkdir(parents=True, exist_ok=True)
        for img in sorted((tire_root / split / cls).glob("*.png")):
            (out / cls / f"{split}_{img.name}").symlink_to(img.resolve())


def labelled(draw: dict[str, Any], k: int) -> ImageFolder:
    return draw["pool"].subset(np.sort(np.concatenate([p[:k] for p in draw["perm"]])))


def score(cand: auto.Candidate, train: ImageFolder, test: ImageFolder, cache: Path,
          backbones: dict[tuple[str, int], Any]) -> dict[str, float]:
    """Fit the candidate's probe on ``train``, score it on ``test`` (features from the cache)."""
    key = (cand.backbone, cand.input_size)
    if key not in backbones:
        backbones[key] = auto.build_backbone(cand.backbone, None, cand.input_size, "cpu")
    bb = backbones[key]

    def feats(f: ImageFolder) -> np.ndarray:
        return features(bb, f.paths, layers=cand.layers or bb.cfg.default_layers, handcrafted=cand.method == "hybrid",
                        cache=cache)

    y_tr, y_te = np.asarray(train.classes)[train.labels], np.asarray(test.classes)[test.labels]
    pred = ProbeClassifier(C=cand.C, calibrate=False).fit(feats(train), y_tr).predict(feats(test))
    m = classification_metrics(y_te, pred, test.classes)
    return {"accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"]}


def warm(folders: list[ImageFolder], cache: Path, backbones: dict[tuple[str, int], Any]) -> dict[str, float]:
    """Embed every image once per (backbone, size) the search will try; seconds per image of each pass."""
    from fabsight.die.handcrafted import extract_handcrafted

    paths = sorted({p for f in folders for p in f.paths})
    summary = auto.image_summary(paths)
    cost = {}
    for name in auto.BUILTIN_BACKBONES:
        base = auto.build_backbone(name, None, None, "cpu")
        for size in auto.candidate_sizes(base, summary):
            bb = base if size == base.cfg.input_size[0] else auto.build_backbone(name, None, size, "cpu")
            backbones[(name, size)] = bb
            t0 = time.monotonic()
            auto.embed_candidates(bb, paths, cache, 32)
            cost[f"{name}@{size}"] = (time.monotonic() - t0) / len(paths)
    t0 = time.monotonic()
    extract_handcrafted(paths, cache_dir=cache)
    cost["handcrafted"] = (time.monotonic() - t0) / len(paths)
    return cost


def run_set(root: Path, name: str, args: argparse.Namespace, cache: Path, result: dict[str, Any]) -> None:
    """Fill ``result["sets"][name]``, rewriting ``args.out`` after every row (a long run keeps what it did)."""
    ds = draws(root, name, args.draws, max(args.labels), args.test_per_class)
    backbones: dict[tuple[str, int], Any] = {}
    folders = [labelled(d, max(args.labels)) for d in ds] + [d["test"] for d in ds]
    cold = warm(folders, cache, backbones)
    rows: list[dict[str, Any]] = []
    result["sets"][name] = {"rows": rows, "embed_seconds_per_image": cold}
    for k in args.labels:
        for i, d in enumerate(ds):
            train = labelled(d, k)
            t0 = time.monotonic()
            found = auto.search(train, max_minutes=args.max_minutes, cache=cache)
            seconds = time.monotonic() - t0
            row = {"labels_per_class": k, "draw": i, "n_train": len(train), "n_test": len(d["test"]),
                   "winner": found.winner.name, "why": found.why, "search_seconds_warm": seconds,
                   "auto": score(found.winner, train, d["test"], cache, backbones),
                   "cv_best": max(s.mean for s in found.scores), "notes": found.notes}
            for label, cand in FIXED.items():
                row[label] = score(cand, train, d["test"], cache, backbones)
            rows.append(row)
            result["sets"][name]["summary"] = summarise(rows, cold)
            write_json(args.out, result)
            print(f"{name} k={k} draw={i}: auto {row['auto']['accuracy']:.4f} ({row['winner']}) "
                  f"fixed {row['dinov2_b10_probe']['accuracy']:.4f}", flush=True)


def summarise(rows: list[dict[str, Any]], cold: dict[str, float]) -> dict[str, Any]:
    """Per label budget: mean and sd over draws of each method; the search's cost per labelled image."""
    out = {}
    per_image = sum(cold.values())
    for k in sorted({r["labels_per_class"] for r in rows}):
        rs = [r for r in rows if r["labels_per_class"] == k]
        entry: dict[str, Any] = {}
        for m in ("auto", *FIXED):
            for metric in ("accuracy", "balanced_accuracy"):
                v = np.asarray([r[m][metric] for r in rs])
                sd = float(v.std(ddof=1)) if len(v) > 1 else 0.0
                entry[f"{m}_{metric}"] = [round(float(v.mean()), 4), round(sd, 4)]
        n = np.mean([r["n_train"] for r in rs])
        entry["search_seconds_per_labelled_image"] = round(float(np.mean([r["search_seconds_warm"] for r in rs]) / n
                                                                 + per_image), 3)
        entry["winners"] = [r["winner"] for r in rs]
        out[str(k)] = entry
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="root with deeppcb/{train,test} and magnetic_tile/")
    ap.add_argument("--sets", default="magnetic_tile,deeppcb,tire")
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared",
                    help="for the tire set: data/mvtec3d_tire is viewed as DATA/tire class folders (symlinks)")
    ap.add_argument("--labels", default="5,10,25")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--test-per-class", type=int, default=100, help="most test images per class")
    ap.add_argument("--max-minutes", type=float, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.labels = [int(v) for v in args.labels.split(",")]
    torch.set_num_threads(args.threads)
    cache = default_cache()
    result = {"args": {k: str(v) for k, v in vars(args).items()}, "sets": {}}
    for name in args.sets.split(","):
        if name == "tire":
            tire_view(args.shared / "data" / "mvtec3d_tire", args.data / "tire")
        run_set(args.data, name, args, cache, result)
    print(json.dumps({name: r["summary"] for name, r in result["sets"].items()}, indent=1))


if __name__ == "__main__":
    main()
