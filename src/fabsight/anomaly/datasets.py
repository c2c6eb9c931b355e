"""Anomaly-detection datasets in the MVTec AD layout, and a builder for magnetic tile.

The MVTec AD layout is what every anomaly-detection tool (anomalib included) reads, so a
fab that already has one can point fabsight at it unchanged::

    ROOT/train/good/*.png                    defect-free images to learn from
    ROOT/test/good/*.png                     defect-free images to measure false alarms on
    ROOT/test/<defect_type>/*.png            images with defects
    ROOT/ground_truth/<defect_type>/<stem>_mask.png   optional pixel masks (non-zero = defect)

Records carry paths, not pixels: a dataset of thousands of large die images is listed
instantly and read one image at a time.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fabsight.die.data import read_grey, readable_images
from fabsight.errors import FabsightError, FormatError, NothingReadable
from fabsight.io import ReadLog
from fabsight.utils.atomic import atomic_dir

#: Image file suffixes the loader accepts (case-insensitive).
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

GOOD = "good"


@dataclass(frozen=True)
class AnomalyRecord:
    """One image of an anomaly dataset: where it is, what it is, where its mask is."""

    path: Path
    defect_type: str = GOOD
    mask_path: Path | None = None

    @property
    def is_anomalous(self) -> bool:
        return self.defect_type != GOOD


def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted so runs are reproducible."""
    return sorted(p for p in folder.iterdir() if _is_image(p))


def read_mask(path: str | os.PathLike[str], shape: tuple[int, int] | None) -> np.ndarray:
    """A ground-truth mask as bool H×W; values above 127 are defect.

    Masks saved as JPEG-ish PNGs (magnetic tile) have soft edges, hence the mid threshold
    rather than ``!= 0``. A mask of another size than its image (``shape``; None when only
    the mask matters) is a user error.
    """
    p = Path(path)
    m = read_grey(p)
    if shape is not None and m.shape != tuple(shape):
        raise FormatError(p, f"mask is {m.shape[1]}×{m.shape[0]} but its image is {shape[1]}×{shape[0]}")
    return m > 127


def load_split(root: str | os.PathLike[str], split: str, log: ReadLog | None = None) -> list[AnomalyRecord]:
    """The records of ``ROOT/<split>`` (``train`` or ``test``) of an MVTec-layout dataset.

    ``train`` may only hold ``good``; every defect image in ``test`` gets its mask path when
    ``ground_truth/<type>/<stem>_mask.png`` (or ``<stem>.png``) exists. With a ``log`` each
    image and mask is checked once (:func:`~fabsight.die.data.readable_images`): a record with
    an unreadable file is recorded there and left out, since models read images lazily later.
    """
    root = Path(root)
    if not root.is_dir():
        raise FabsightError(root, "dataset root not found (expected ROOT/train/good, ROOT/test/...)")
    folder = root / split
    if not folder.is_dir():
        raise FabsightError(folder, f"no '{split}' folder: not an MVTec-layout dataset")
    records: list[AnomalyRecord] = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if split == "train" and sub.name != GOOD:
            raise FabsightError(sub, "training images must all be good: only train/good is allowed")
        for img in list_images(sub):
            mask = None
            if sub.name != GOOD:
                gt = root / "ground_truth" / sub.name
                for cand in (gt / f"{img.stem}_mask.png", gt / f"{img.stem}.png"):
                    if cand.is_file():
                        mask = cand
                        break
            records.append(AnomalyRecord(img, sub.name, mask))
    if not records:
        raise FabsightError(folder, f"no images in {split}/*/ (accepted: {', '.join(IMAGE_SUFFIXES)})")
    if split == "train" and not (folder / GOOD).is_dir():
        raise FabsightError(folder, "no train/good folder")
    if log is None:
        return records
    readable = _readable(records, log)
    if not readable:
        raise NothingReadable(folder, f"none of the {len(records)} images in {split}/*/ could be read", log.errors)
    return readable


def _readable(records: list[AnomalyRecord], log: ReadLog) -> list[AnomalyRecord]:
    """The records whose image (and mask) can be read; each unreadable file goes to ``log``."""
    keep = []
    for r in records:
        files = [r.path] if r.mask_path is None else [r.path, r.mask_path]
        if len(readable_images(files, log)) == len(files):
            keep.append(r)
    return keep


def build_mvtec_layout_from_magnetic_tile(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    train_fraction: float = 0.8,
    seed: int = 0,
    *,
    copy: bool = False,
    overwrite: bool = False,
) -> dict[str, int]:
    """Arrange the magnetic-tile dataset (``MT_<Class>/Imgs/*.jpg`` + same-stem ``.png``
    masks) as an MVTec layout under ``dst``.

    ``train_fraction`` of ``MT_Free`` (shuffled with ``seed``) becomes ``train/good``, the
    rest ``test/good``; every other class becomes ``test/<class in lower case>`` with its
    masks in ``ground_truth``. Files are symlinked (or copied with ``copy=True``) so the
    read-only original is never duplicated; ``dst`` appears complete or not at all.
    Returns the number of images per folder.
    """
    src, dst = Path(src).resolve(), Path(dst)
    if not 0.0 < train_fraction < 1.0:
        raise FabsightError(None, f"train_fraction must be between 0 and 1, got {train_fraction}")
    free = src / "MT_Free" / "Imgs"
    if not free.is_dir():
        raise FabsightError(src, "not the magnetic-tile dataset (no MT_Free/Imgs)")
    if dst.resolve().is_relative_to(src):
        raise FabsightError(dst, "destination must not be inside the source dataset")
    if dst.exists() and any(dst.iterdir()) and not overwrite:
        raise FabsightError(dst, "destination exists and is not empty (pass overwrite=True / --overwrite)")

    def place(source: Path, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if copy:
            shutil.copy2(source, target)
        else:
            target.symlink_to(source)

    good = sorted(p for p in free.iterdir() if p.suffix.lower() == ".jpg")
    random.Random(seed).shuffle(good)
    n_train = max(1, min(len(good) - 1, round(train_fraction * len(good))))
    counts: dict[str, int] = {}
    with atomic_dir(dst) as tmp:
        for i, img in enumerate(good):
            split = "train" if i < n_train else "test"
            place(img, tmp / split / GOOD / img.name)
        counts["train/good"], counts["test/good"] = n_train, len(good) - n_train
        for cls_dir in sorted(src.glob("MT_*")):
            if cls_dir.name == "MT_Free" or not (cls_dir / "Imgs").is_dir():
                continue
            name = cls_dir.name[3:].lower()
            imgs = sorted(p for p in (cls_dir / "Imgs").iterdir() if p.suffix.lower() == ".jpg")
            for img in imgs:
                place(img, tmp / "test" / name / img.name)
                mask = img.with_suffix(".png")
                if mask.is_file():
                    place(mask, tmp / "ground_truth" / name / f"{img.stem}_mask.png")
            counts[f"test/{name}"] = len(imgs)
    return counts
