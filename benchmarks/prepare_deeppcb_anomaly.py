"""Build an MVTec-layout anomaly set from DeepPCB: big images, small defects; prints JSON.

    python benchmarks/prepare_deeppcb_anomaly.py ../shared/data/deeppcb /tmp/pcb_mvtec --group 20085

The case tiling is for: 640×640 binarised PCB scans whose defects (opens, shorts,
pin-holes, spurs) are 20–50 pixels across, 7–17 pixels once the whole image is shrunk to
a 224-pixel network input. Good images are DeepPCB's defect-free templates: ``train/good``
from the pairs of ``trainval.txt``, ``test/good`` from those of ``test.txt``; ``test/pcb``
holds the test pairs' defective images, with masks painted from the annotated boxes (a
box is larger than its defect, so pixel AUROC is pessimistic for every method alike;
region recall is not affected). Images are symlinked; only the masks are written.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from fabsight.errors import FabsightError
from fabsight.inspect.dataset import read_annotations, read_list
from fabsight.utils.atomic import atomic_dir


def build(src: Path, dst: Path, group: str, n_train: int, n_test: int) -> dict[str, int]:
    """Lay out ``dst`` from DeepPCB group ``group``; returns images per folder."""
    def in_group(list_name: str) -> list:
        return [p for p in read_list(src, src / list_name) if p.name.startswith(f"group{group}/")]

    if dst.exists():
        raise FabsightError(dst, "destination already exists")
    train, test = in_group("trainval.txt")[:n_train], in_group("test.txt")[:n_test]
    if not train or not test:
        raise FabsightError(src, f"no pairs of group {group} in trainval.txt / test.txt")
    with atomic_dir(dst, overwrite=False) as tmp:
        for folder in ("train/good", "test/good", "test/pcb", "ground_truth/pcb"):
            (tmp / folder).mkdir(parents=True)
        for p in train:
            (tmp / "train/good" / p.template.name).symlink_to(p.template.resolve())
        for p in test:
            (tmp / "test/good" / p.template.name).symlink_to(p.template.resolve())
            (tmp / "test/pcb" / p.test.name).symlink_to(p.test.resolve())
            img = cv2.imread(str(p.test), cv2.IMREAD_GRAYSCALE)
            if img is None or p.annotations is None:
                raise FabsightError(p.test, "unreadable test image or no annotation file")
            mask = np.zeros(img.shape, np.uint8)
            for b in read_annotations(p.annotations):
                mask[int(b.y1) : int(b.y2), int(b.x1) : int(b.x2)] = 255
            cv2.imwrite(str(tmp / "ground_truth/pcb" / f"{p.test.stem}_mask.png"), mask)
    return {"train/good": len(train), "test/good": len(test), "test/pcb": len(test)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src", type=Path, help="DeepPCB root (groupNNNNN folders, trainval.txt, test.txt)")
    ap.add_argument("dst", type=Path, help="destination root (outside the repository; must not exist)")
    ap.add_argument("--group", default="20085", help="DeepPCB group: one board family")
    ap.add_argument("--n-train", type=int, default=100, help="templates to learn from")
    ap.add_argument("--n-test", type=int, default=40, help="test pairs (good template + defective image each)")
    a = ap.parse_args()
    try:
        counts = build(a.src, a.dst, a.group, a.n_train, a.n_test)
    except FabsightError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    print(json.dumps({"root": str(a.dst), "group": a.group, "counts": counts}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
