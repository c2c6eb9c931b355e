"""Precision / recall of each curation check on planted problems, what it finds on the real data
as-is, and images/s; prints JSON.

    PYTHONPATH=src python -P benchmarks/curate.py --mt /tmp/mt --pcb /tmp/pcb --work /tmp/curate_bench \
        [--n 10] [--base 300] [--backbone efficientnet_lite0 --input-size 112]

``--mt`` is the magnetic-tile class view (``fabsight.die.datasets.magnetic_tile_view``),
``--pcb`` the DeepPCB crop folder (``benchmarks/prepare_deeppcb_crops.py``), both outside
the repository. For each set: (1) curate it as it is; (2) take ``--base`` images the as-is
run left unflagged, plant ``--n`` of each problem (``fabsight.curate.plant``) and score
each check against the planted answers. A third set is generated from nothing
(``textured_folder``). Planted label-conflict copies are also duplicates of their twin;
they are left out of the duplicate check's scoring (either twin may be the one dropped).
With ``--backbone`` the planted sets (not the as-is runs: too slow on a shared CPU) also get
the embedding checks, and ``--n`` images of the other data set are planted as "foreign"
(irrelevant) images the outlier check must find; planted blank and blurry frames are far from
everything too (and dropped by their own checks), so they are left out of its scoring.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.curate import CurateOptions, curate_images
from fabsight.curate.plant import plant, textured_folder

CHECKS = ("unreadable", "duplicate", "blurry", "blank", "leakage", "label_conflict", "outlier")


def _score(manifest: dict[str, Any], root: Path, truth: dict[str, list[str]]) -> dict[str, Any]:
    flagged: dict[str, set[str]] = {c: set() for c in CHECKS}
    for row in manifest["files"]:
        rel = str(Path(row["path"]).relative_to(root))
        for f in row["flags"]:
            if f["check"] in flagged:
                flagged[f["check"]].add(rel)
    # planted blank and blurry frames are far from everything too; they are dropped by their own check
    ignore = {"duplicate": set(truth["label_conflict"]), "outlier": set(truth["blank"]) | set(truth["blurry"])}
    truth = {**truth, "duplicate": truth["exact"] + truth["near"] + truth["leakage"]}
    out = {}
    for c in CHECKS:
        if c == "outlier" and not manifest["backbone"]:
            continue
        t, p = set(truth[c]), flagged[c] - ignore.get(c, set())
        tp = len(t & p)
        out[c] = {"planted": len(t), "flagged": len(p), "precision": round(tp / len(p), 3) if p else None,
                  "recall": round(tp / len(t), 3) if t else None}
    out["near_duplicate_recall"] = round(len(set(truth["near"]) & flagged["duplicate"]) / len(truth["near"]), 3)
    return out


def _as_is(root: Path, options: CurateOptions) -> dict[str, Any]:
    t0 = time.perf_counter()
    m = curate_images([root], options=options)
    wall = time.perf_counter() - t0
    s = m["summary"]
    return {"manifest": m, "files": s["files"], "kept": s["kept"], "flagged": s["flagged"],
            "groups_by_kind": s["duplicate_groups_by_kind"], "label_conflict_groups": s["label_conflict_groups"],
            "leakage_groups": s["leakage_groups"], "images_per_second_read": s["images_per_second"],
            "images_per_second_total": round(s["files"] / wall, 1), "blur_threshold": m["thresholds"]["blurry"].get(
                "threshold"), "largest_groups": sorted((len(g["members"]) for g in m["groups"]), reverse=True)[:5]}


def _clean_base(manifest: dict[str, Any], dst: Path, count: int, seed: int) -> Path:
    """Symlink ``count`` unflagged images (in proportion to their classes) into ``dst/CLASS``."""
    rows = [r for r in manifest["files"] if not r["flags"] and r["label"]]
    pick = np.random.default_rng(seed).permutation(len(rows))[:count]
    if dst.exists():
        shutil.rmtree(dst)
    for i in pick:
        r = rows[int(i)]
        (dst / r["label"]).mkdir(parents=True, exist_ok=True)
        os.symlink(Path(r["path"]).resolve(), dst / r["label"] / Path(r["path"]).name)
    return dst


def _planted(base: Path, work: Path, name: str, n: int, options: CurateOptions, backbone: str | None,
             input_size: int | None, foreign: list[Path], seed: int) -> dict[str, Any]:
    root = work / f"{name}_planted"
    truth = plant(base, root, n=n, seed=seed, foreign=foreign[:n] if backbone else ())
    t0 = time.perf_counter()
    m = curate_images([root], options=options, backbone=backbone, input_size=input_size)
    wall = time.perf_counter() - t0
    return {"files": m["summary"]["files"], "scores": _score(m, root, truth),
            "images_per_second_total": round(m["summary"]["files"] / wall, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mt", type=Path, help="magnetic-tile ROOT/CLASS view")
    ap.add_argument("--pcb", type=Path, help="DeepPCB crops ROOT/train|test/CLASS")
    ap.add_argument("--work", type=Path, required=True, help="scratch folder outside the repository")
    ap.add_argument("--n", type=int, default=10, help="planted problems of each kind")
    ap.add_argument("--base", type=int, default=300, help="clean images each planted set starts from")
    ap.add_argument("--backbone", default=None, help="also run the embedding checks with this backbone")
    ap.add_argument("--input-size", type=int, default=None, help="backbone input size")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    opts = CurateOptions()
    a.work.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"options": vars(opts), "backbone": a.backbone, "cpu_count": os.cpu_count()}
    synthetic = a.work / "synthetic_base"
    if not synthetic.exists():
        textured_folder(synthetic, per_class=a.base // 3, seed=a.seed)
    sets = {"synthetic": (None, synthetic), "magnetic_tile": (a.mt, None), "deeppcb_crops": (a.pcb, None)}
    foreign = {"synthetic": a.mt, "magnetic_tile": a.pcb, "deeppcb_crops": a.mt}
    for name, (root, base) in sets.items():
        if root is None and base is None:
            continue
        entry: dict[str, Any] = {}
        if root is not None:
            entry["as_is"] = _as_is(root, opts)
            base = _clean_base(entry["as_is"].pop("manifest"), a.work / f"{name}_base", a.base, a.seed)
        other = foreign[name]
        strangers = sorted(other.rglob("*.png")) + sorted(other.rglob("*.jpg")) if other else []
        strangers = [strangers[int(i)] for i in np.random.default_rng(a.seed).permutation(len(strangers))[:a.n]]
        entry["planted"] = _planted(base, a.work, name, a.n, opts, a.backbone, a.input_size, strangers, a.seed)
        report[name] = entry
    report["loadavg"] = os.getloadavg()
    json.dump(report, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
