"""How much context around each DeepPCB defect box, and which input size, a classifier needs.

    PYTHONPATH=src python benchmarks/die_crop_protocol.py --contexts 1.5,2,3 --sizes 64,112 \
        --out bench_out/die_crops.json

For each crop window (``context`` × the box's longer side, at least ``--min-size`` px; see
:func:`fabsight.die.datasets.prepare_deeppcb_crops`) and input size: a frozen-feature probe
(default layers of ``--backbone``) trained on a seeded ``--per-class`` draw of the original
trainval crops and scored on a seeded ``--per-class`` draw of the original test crops —
the same boxes for every setting, so only the crop protocol changes.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from fabsight.backbones import create_backbone
from fabsight.die.classifier import ProbeClassifier
from fabsight.die.data import scan_folder
from fabsight.die.datasets import prepare_deeppcb_crops
from fabsight.die.embeddings import default_cache, extract
from fabsight.die.metrics import classification_metrics
from fabsight.utils.atomic import to_jsonable, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--contexts", default="1.5,2,3")
    ap.add_argument("--min-size", type=int, default=64)
    ap.add_argument("--sizes", default="64,112")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "loadavg_before": os.getloadavg(),
                    "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for context in (float(c) for c in args.contexts.split(",")):
            root = Path(tmp) / f"ctx{context}"
            prepare_deeppcb_crops(args.shared / "data" / "deeppcb", root, context=context, min_size=args.min_size)
            train = scan_folder(root / "train")
            test = scan_folder(root / "test", classes=train.classes)
            rng = np.random.default_rng(0)  # same file names → the same boxes for every context
            pick = [np.sort(np.concatenate([rng.choice(np.flatnonzero(f.labels == c), args.per_class, replace=False)
                                            for c in range(len(f.classes))])) for f in (train, test)]
            tr, te = train.subset(pick[0]), test.subset(pick[1])
            names = np.asarray(train.classes)
            for size in (int(s) for s in args.sizes.split(",")):
                bb = create_backbone(args.backbone, input_size=size)
                X_tr = extract(bb, tr.paths, 32, default_cache())
                X_te = extract(bb, te.paths, 32, default_cache())
                probe = ProbeClassifier(calibrate=False).fit(X_tr, names[tr.labels])
                m = classification_metrics(names[te.labels], probe.predict(X_te), train.classes)
                report["results"].append({"context": context, "input_size": size, "accuracy": m["accuracy"],
                                          "macro_f1": m["macro_f1"], "n_train": len(tr), "n_test": len(te)})
                print(json.dumps(report["results"][-1]), flush=True)
    report["loadavg_after"] = os.getloadavg()
    if args.out:
        write_json(args.out, report)
    print(json.dumps(report, indent=2, default=to_jsonable))


if __name__ == "__main__":
    main()
