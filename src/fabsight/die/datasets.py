"""Turn the public die-level sets into ``ROOT/CLASS`` folders the classifier reads.

- DeepPCB: a crop around every annotated defect of each test image (the original
  ``trainval.txt`` / ``test.txt`` split kept as ``train/`` and ``test/``), and optionally
  the same window from the defect-free template as class ``ok`` — a real no-defect
  example at exactly the same place, for the defect-vs-no-defect level.
- Magnetic tile: a view of the six classes (``Free`` included) as symlinks to the
  ``Imgs/*.jpg`` files, leaving out the same-stem ``.png`` masks.
- ELPV (``elpv-dataset`` package): solar-cell images by defect probability.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fabsight.errors import FabsightError
from fabsight.utils.atomic import atomic_dir
from fabsight.utils.progress import track

DEEPPCB_CLASSES = {1: "open", 2: "short", 3: "mousebite", 4: "spur", 5: "spurious_copper", 6: "pin_hole"}
OK_CLASS = "ok"


def _read_boxes(path: Path) -> list[tuple[int, int, int, int, int]]:
    boxes = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        parts = line.replace(",", " ").split()
        if not parts:
            continue
        if len(parts) != 5:
            raise FabsightError(path, f"line {n}: expected 'x1 y1 x2 y2 type', got {line!r}")
        x1, y1, x2, y2, t = (int(float(v)) for v in parts)
        if t not in DEEPPCB_CLASSES:
            raise FabsightError(path, f"line {n}: defect type {t} is not 1-6")
        boxes.append((x1, y1, x2, y2, t))
    return boxes


def _square(box: tuple[int, int, int, int], shape: tuple[int, int], context: float, min_size: int) -> tuple[int, ...]:
    """A square window ``context`` × the box's longer side (at least ``min_size``), kept inside the image."""
    x1, y1, x2, y2 = box
    side = int(min(max(min_size, context * max(x2 - x1, y2 - y1)), min(shape)))
    cx, cy = (x1 + x2) // 2, (y1 + y2) // 2
    left = int(np.clip(cx - side // 2, 0, shape[1] - side))
    top = int(np.clip(cy - side // 2, 0, shape[0] - side))
    return top, top + side, left, left + side


def prepare_deeppcb_crops(
    deeppcb_root: str | os.PathLike[str],
    out_root: str | os.PathLike[str],
    *,
    context: float = 2.0,
    min_size: int = 64,
    with_ok: bool = False,
    max_pairs: int | None = None,
) -> dict[str, dict[str, int]]:
    """Write ``out_root/{train,test}/CLASS/*.png`` crops; returns per-split class counts.

    ``max_pairs`` keeps only the first pairs of each split list (quick looks, tests).
    """
    import cv2

    from fabsight.die.data import read_image

    root = Path(deeppcb_root)
    counts: dict[str, dict[str, int]] = {}
    with atomic_dir(out_root) as tmp:
        for split, listing in (("train", "trainval.txt"), ("test", "test.txt")):
            lst = root / listing
            if not lst.is_file():
                raise FabsightError(lst, "missing: not a DeepPCB folder (needs trainval.txt and test.txt)")
            counts[split] = {}
            lines = [ln.split() for ln in lst.read_text(encoding="utf-8").splitlines() if ln.strip()][:max_pairs]
            for fields in track(lines, f"cropping DeepPCB {split}"):
                if len(fields) != 2:
                    raise FabsightError(lst, f"expected 'IMAGE ANNOTATION' per line, got {' '.join(fields)!r}")
                image_rel, ann_rel = fields
                stem = Path(image_rel).with_suffix("")
                test_img = read_image(root / f"{stem}_test.jpg")
                temp_img = read_image(root / f"{stem}_temp.jpg") if with_ok else None
                for k, (x1, y1, x2, y2, t) in enumerate(_read_boxes(root / ann_rel)):
                    top, bottom, left, right = _square((x1, y1, x2, y2), test_img.shape[:2], context, min_size)
                    name = f"{stem.name}_{k:02d}.png"
                    targets = [(DEEPPCB_CLASSES[t], test_img)]
                    if temp_img is not None:
                        targets.append((OK_CLASS, temp_img))
                    for cls, img in targets:
                        d = tmp / split / cls
                        d.mkdir(parents=True, exist_ok=True)
                        cv2.imwrite(str(d / name), img[top:bottom, left:right])
                        counts[split][cls] = counts[split].get(cls, 0) + 1
    return counts


def magnetic_tile_view(mt_root: str | os.PathLike[str], out_root: str | os.PathLike[str]) -> dict[str, int]:
    """``out_root/CLASS/*.jpg`` symlinks for the six magnetic-tile classes (masks left out)."""
    root = Path(mt_root)
    class_dirs = sorted(d for d in root.glob("MT_*") if (d / "Imgs").is_dir())
    if not class_dirs:
        raise FabsightError(root, "no MT_<class>/Imgs folders: not the magnetic-tile data set")
    counts = {}
    with atomic_dir(out_root) as tmp:
        for d in class_dirs:
            cls = d.name[3:]
            (tmp / cls).mkdir()
            images = sorted((d / "Imgs").glob("*.jpg"))
            for img in images:
                (tmp / cls / img.name).symlink_to(img.resolve())
            counts[cls] = len(images)
    return counts


def elpv_folders(out_root: str | os.PathLike[str]) -> dict[str, int]:
    """ELPV solar cells as ``out_root/p{0,33,67,100}/*.png`` by annotated defect probability."""
    import cv2

    try:
        from elpv_dataset.utils import load_dataset
    except ImportError:
        raise FabsightError(None, "ELPV needs the 'elpv-dataset' package (pip install elpv-dataset)") from None
    images, probs, types = load_dataset()
    counts: dict[str, int] = {}
    with atomic_dir(out_root) as tmp:
        for i, (img, p, kind) in enumerate(zip(images, probs, types, strict=True)):
            cls = f"p{round(float(p) * 100)}"
            (tmp / cls).mkdir(exist_ok=True)
            cv2.imwrite(str(tmp / cls / f"{i:04d}_{kind}.png"), np.asarray(img))
            counts[cls] = counts.get(cls, 0) + 1
    return counts
