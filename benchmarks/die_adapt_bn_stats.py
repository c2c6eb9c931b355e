"""Why short `die adapt` runs used to hurt: BatchNorm statistics re-estimated on multi-crop views.

    PYTHONPATH=src python benchmarks/die_adapt_bn_stats.py --images /tmp/die_data/deeppcb/train \
        --out /tmp/bn_only
    PYTHONPATH=src python benchmarks/die_classify.py --data /tmp/die_data --datasets deeppcb \
        --sizes deeppcb=64 --backbones efficientnet_lite0 --pool-per-class 100 --test-per-class 100 \
        --budgets 25,50 --repeats 3 --adapted /tmp/bn_only

Runs the base backbone in training mode, without gradients, over as many batches of
:class:`fabsight.die.adapt.MultiCrop` views as the old CPU adaptation run took (46 batches of
32 images, 2 global + 2 local crops): no weight changes, only the BatchNorm running statistics
move, exactly as they did inside that run before ``die adapt`` froze them. The result is
written as a backbone directory, so ``die_classify.py --adapted`` probes it against its base
on the same label draws. Prints JSON (what ran, how long).
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import time
from pathlib import Path

import torch

from fabsight.backbones import Backbone, BackboneConfig, create_backbone, save_backbone_dir
from fabsight.die.adapt import MultiCrop, _pooled, unlabeled_images
from fabsight.die.data import read_image
from fabsight.utils.atomic import atomic_dir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=Path, required=True, help="unlabeled images (any depth)")
    ap.add_argument("--out", type=Path, required=True, help="backbone directory to write")
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--batches", type=int, default=46)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--local-crops", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    base = create_backbone(args.backbone, input_size=args.input_size)
    files = unlabeled_images(args.images)
    random.Random(args.seed).shuffle(files)
    crops = MultiCrop(base, args.local_crops)
    model = copy.deepcopy(base.model).train()
    t0 = time.perf_counter()
    with torch.no_grad():
        for b in range(args.batches):
            views = [crops(read_image(f)) for f in files[b * args.batch_size:(b + 1) * args.batch_size]]
            for k in range(len(views[0])):
                _pooled(model, torch.stack([v[k] for v in views]))
    cfg = BackboneConfig.from_dict(base.cfg.to_dict())
    cfg.name = str(args.out.resolve())
    with atomic_dir(args.out) as tmp:
        save_backbone_dir(tmp, Backbone(model.eval(), cfg),
                          training={"method": "BatchNorm statistics re-estimated on multi-crop views only",
                                    "batches": args.batches, "batch_size": args.batch_size})
    print(json.dumps({"out": str(args.out), "images_seen": min(len(files), args.batches * args.batch_size),
                      "seconds": round(time.perf_counter() - t0, 1)}, indent=2))


if __name__ == "__main__":
    main()
