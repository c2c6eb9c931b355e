"""Build the MVTec-layout magnetic-tile split the anomaly benchmark uses; prints JSON.

    python benchmarks/prepare_magnetic_tile.py ../shared/data/magnetic_tile /tmp/mt_mvtec --train-fraction 0.8

Train on ``train_fraction`` of MT_Free, test on the rest plus every defect class (with
masks). Files are symlinked, so the read-only original is never copied into the repo.
"""

from __future__ import annotations

import argparse
import json
import sys

from fabsight.anomaly.datasets import build_mvtec_layout_from_magnetic_tile
from fabsight.errors import FabsightError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", help="magnetic-tile dataset (MT_<Class>/Imgs)")
    ap.add_argument("dst", help="destination root (outside the repository)")
    ap.add_argument("--train-fraction", type=float, default=0.8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copy", action="store_true", help="copy instead of symlinking")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args()
    try:
        counts = build_mvtec_layout_from_magnetic_tile(a.src, a.dst, a.train_fraction, a.seed,
                                                       copy=a.copy, overwrite=a.overwrite)
    except FabsightError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    print(json.dumps({"root": a.dst, "train_fraction": a.train_fraction, "seed": a.seed, "counts": counts}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
