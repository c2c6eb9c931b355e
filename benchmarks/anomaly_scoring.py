"""PatchCore scoring, variant by variant, on one set of features: where fabsight and anomalib differ.

    python benchmarks/anomaly_scoring.py /tmp/anomaly_mt --max-train 200 --holdout 0.1 --test-fraction 0.34

Backbone features (EfficientNet-Lite0, ``blocks.2`` + ``blocks.4``, 224 px) are extracted
once per image; everything after that is varied alone, so each difference in the printed
metrics has one cause:

- local 3×3 averaging over valid pixels only (fabsight in session 1) or with zero padding
  counted (the PatchCore paper's code, anomalib, fabsight now);
- the memory bank: greedy k-center coreset size and seed (its first pick);
- image score: maximum raw patch distance (anomalib), the same times PatchCore's eq. 7
  reweighting (anomalib's default), or maximum of the upsampled, smoothed map (fabsight);
- the map: bilinear (fabsight) or nearest (anomalib) upsampling, then Gaussian σ.

Same split rule as ``benchmarks/anomaly.py``. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import cv2
import faiss
import numpy as np
import torch
import torch.nn.functional as F

from anomaly import _split  # benchmarks/anomaly.py: the same split rule
from fabsight.anomaly import PatchCore, read_image
from fabsight.anomaly.base import gaussian_smooth
from fabsight.anomaly.coreset import greedy_coreset
from fabsight.anomaly.datasets import read_mask
from fabsight.anomaly.metrics import aupro, image_auroc, pixel_auroc
from fabsight.anomaly.tiling import Tiler
from fabsight.utils.progress import track

LAYERS = ("blocks.2", "blocks.4")


def _features(pc: PatchCore, records: list, zero_padded: bool) -> torch.Tensor:
    """N×D×h×w locally aware features; ``zero_padded=True`` is what fabsight computes now."""
    tiler = Tiler(int(pc.input_size))
    out = []
    for k in track(range(0, len(records), 8), f"features (zero padding counted: {zero_padded})"):
        crops = [tiler.split(read_image(r.path))[0][0] for r in records[k : k + 8]]
        if zero_padded:
            out.append(pc._patch_features(crops))
            continue
        # session 1's aggregation, kept here only to measure it
        maps = pc.backbone_.features(pc.backbone_.preprocess(crops), LAYERS)
        parts = [F.avg_pool2d(maps[n].float(), 3, 1, 1, count_include_pad=False) for n in LAYERS]
        size = parts[0].shape[-2:]
        parts = [p if p.shape[-2:] == size else F.interpolate(p, size=size, mode="bilinear", align_corners=False)
                 for p in parts]
        out.append(torch.cat(parts, dim=1).cpu())
    return torch.cat(out)


def _variants(ftr: torch.Tensor, fte: torch.Tensor, n_bank: int, seed: int, s: int, test: list,
              shapes: list, masks: list, pix: list[int]) -> dict[str, Any]:
    d = ftr.shape[1]
    cand = ftr.permute(0, 2, 3, 1).reshape(-1, d).contiguous()
    bank = cand[greedy_coreset(cand, n_bank, seed=seed)].contiguous().numpy()
    index = faiss.IndexFlatL2(d)
    index.add(bank)
    b, h, w = fte.shape[0], fte.shape[2], fte.shape[3]
    q = np.ascontiguousarray(fte.permute(0, 2, 3, 1).reshape(-1, d).numpy())
    d2, nn = index.search(q, 1)
    patch = np.sqrt(np.maximum(d2[:, 0], 0)).reshape(b, h * w).astype(np.float32)
    # PatchCore eq. 7 as anomalib computes it, on each image's most anomalous patch
    worst = patch.argmax(1)
    m_test = q.reshape(b, h * w, d)[np.arange(b), worst]
    m_star = bank[nn[:, 0].reshape(b, -1)[np.arange(b), worst]]
    _, support = index.search(np.ascontiguousarray(m_star), min(9, len(bank)))
    dist = np.linalg.norm(bank[support] - m_test[:, None], axis=2)
    weight = 1 - torch.softmax(torch.from_numpy(dist), 1)[:, 0].numpy()
    labels = np.array([r.is_anomalous for r in test])
    raw = patch.max(1)
    res: dict[str, Any] = {"bank": len(bank), "seed": seed,
                           "reweight_factor_range": [float(weight.min()), float(weight.max())],
                           "image_auroc_raw_max": image_auroc(labels, raw),
                           "image_auroc_raw_max_reweighted": image_auroc(labels, raw * weight)}
    pt = torch.from_numpy(patch.reshape(b, 1, h, w))
    for mode in ("bilinear", "nearest"):
        up = F.interpolate(pt, size=(s, s), mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
        for sigma in (4.0, 8.0):
            sm = gaussian_smooth(up[:, 0].numpy(), sigma)
            maps = [cv2.resize(m, (sh[1], sh[0]), interpolation=cv2.INTER_LINEAR) for m, sh in zip(sm, shapes,
                                                                                                   strict=True)]
            key = f"{mode}_sigma{sigma:g}"
            res[f"image_auroc_map_max_{key}"] = image_auroc(labels, [m.max() for m in maps])
            res[f"pixel_auroc_{key}"] = pixel_auroc([maps[i] for i in pix], [masks[i] for i in pix])
            res[f"aupro_{key}"] = aupro([maps[i] for i in pix], [masks[i] for i in pix])
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("root", type=Path)
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--holdout", type=float, default=0.1)
    ap.add_argument("--max-train", type=int, default=200)
    ap.add_argument("--test-fraction", type=float, default=0.34)
    ap.add_argument("--banks", default="0.001,0.01", help="coreset sizes as fractions of the training patches")
    ap.add_argument("--seeds", default="0,1,2", help="coreset seeds (tried for the smallest bank only)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fit, _, test = _split(args.root, args)
    pc = PatchCore(input_size=args.input_size, layers=LAYERS, device="cpu")
    pc._make_backbone()
    shapes = [read_image(r.path).shape[:2] for r in test]
    masks = [np.zeros(sh, bool) if r.mask_path is None else read_mask(r.mask_path, sh)
             for r, sh in zip(test, shapes, strict=True)]
    pix = [i for i, r in enumerate(test) if r.mask_path is not None or not r.is_anomalous]
    ratios = sorted(float(x) for x in args.banks.split(","))
    seeds = [int(x) for x in args.seeds.split(",")]
    results = []
    for zero_padded in (False, True):
        ftr, fte = _features(pc, fit, zero_padded), _features(pc, test, zero_padded)
        n_patches = ftr.shape[0] * ftr.shape[2] * ftr.shape[3]
        for ratio in ratios:
            for seed in seeds if ratio == ratios[0] else seeds[:1]:
                r = _variants(ftr, fte, max(1, int(ratio * n_patches)), seed, args.input_size, test, shapes, masks,
                              pix)
                results.append({"zero_padding_counted": zero_padded, "bank_ratio": ratio, **r})
                print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({"dataset": str(args.root), "n_train": len(fit), "n_test": len(test),
                      "threads": args.threads, "load_average": round(os.getloadavg()[0], 1), "runs": results},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
