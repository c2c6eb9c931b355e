"""Make ROOT/CLASS folders for die classification from DeepPCB, magnetic tile and ELPV.

    python benchmarks/prepare_deeppcb_crops.py --out /tmp/die_data [--shared ../shared]

writes OUT/deeppcb/{train,test}/CLASS (six defect classes, + ``ok`` template crops in
OUT/deeppcb_ok), OUT/magnetic_tile/CLASS (symlinks) and OUT/elpv/CLASS; prints counts as JSON.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from fabsight.die.datasets import elpv_folders, magnetic_tile_view, prepare_deeppcb_crops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[1].parent / "shared")
    ap.add_argument("--no-elpv", action="store_true")
    args = ap.parse_args()
    data = args.shared / "data"
    counts = {
        "deeppcb": prepare_deeppcb_crops(data / "deeppcb", args.out / "deeppcb"),
        "deeppcb_ok": prepare_deeppcb_crops(data / "deeppcb", args.out / "deeppcb_ok", with_ok=True),
        "magnetic_tile": magnetic_tile_view(data / "magnetic_tile", args.out / "magnetic_tile"),
    }
    if not args.no_elpv:
        counts["elpv"] = elpv_folders(args.out / "elpv")
    print(json.dumps(counts, indent=2))


if __name__ == "__main__":
    main()
