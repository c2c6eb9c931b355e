"""Data sets with planted problems and known answers, to measure the curation checks.

:func:`plant` copies a clean ``ROOT/CLASS`` folder into ``OUT/train|test/CLASS`` and adds
what curation must find: byte-identical copies, resized + JPEG re-encoded + brightened
near copies, Gaussian-blurred images (in place of their sharp original), train images
copied into test (leakage), images copied under another class (label conflicts), blank
frames and broken files. It returns, per check, the relative paths that must be flagged.
:func:`textured_folder` makes the clean input from nothing (tests, no data needed).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fabsight.curate.scan import scan
from fabsight.die.data import read_grey
from fabsight.errors import FabsightError


def textured_folder(root: str | os.PathLike[str], classes: tuple[str, ...] = ("a", "b", "c"), per_class: int = 20,
                    size: int = 96, seed: int = 0) -> Path:
    """``root/CLASS/*.png``: smooth random texture plus a few random rectangles and discs per image, every
    image different (a stand-in for die crops: sharp edges, mid-grey background)."""
    import cv2

    rng = np.random.default_rng(seed)
    root = Path(root)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = cv2.GaussianBlur(rng.normal(128, 40, (size, size)).astype(np.float32), (0, 0), 1.5)
            for _ in range(rng.integers(6, 11)):
                x, y = rng.integers(0, size, 2)
                val = float(rng.integers(0, 256))
                if rng.random() < 0.5:
                    w, h = rng.integers(6, size // 3, 2)
                    cv2.rectangle(img, (int(x), int(y)), (int(x + w), int(y + h)), val, -1)
                else:
                    cv2.circle(img, (int(x), int(y)), int(rng.integers(3, size // 6)), val, -1)
            cv2.imwrite(str(root / c / f"{c}_{i:03d}.png"), np.clip(img, 0, 255).astype(np.uint8))
    return root


def plant(src: str | os.PathLike[str], out: str | os.PathLike[str], *, n: int = 5, test_fraction: float = 0.3,
          seed: int = 0, foreign: Sequence[str | os.PathLike[str]] = ()) -> dict[str, list[str]]:
    """Copy the labelled folder ``src`` into ``out/train|test/CLASS`` and plant ``n`` of each problem.

    Returns ``{check: [paths relative to out that must be flagged]}``; the checks are
    ``duplicate`` (exact and near copies: the planted copy is the one to drop), ``exact``,
    ``near``, ``blurry``, ``leakage``, ``label_conflict`` (both copies), ``blank``,
    ``unreadable`` and ``outlier`` (the ``foreign`` images, e.g. another product's, spread
    over the train classes).
    """
    import cv2

    rng = np.random.default_rng(seed)
    entries = [e for e in scan([src]) if e.label is not None]
    classes = sorted({e.label for e in entries if e.label})
    if len(entries) < 8 * n or len(classes) < 2:
        raise FabsightError(src, f"needs ≥ {8 * n} labelled images in ≥ 2 classes to plant {n} of each problem")
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    order = rng.permutation(len(entries))
    split = {int(i): ("test" if k < test_fraction * len(order) else "train") for k, i in enumerate(order)}
    rel = {}
    for i, e in enumerate(entries):
        r = Path(split[i]) / str(e.label) / e.path.name
        (out / r).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(e.path, out / r)
        rel[i] = r
    train = [i for i in order.tolist() if split[i] == "train"]
    picks = iter(train)

    def take(k: int) -> list[int]:
        return [next(picks) for _ in range(k)]

    truth: dict[str, list[str]] = {k: [] for k in ("exact", "near", "blurry", "leakage", "label_conflict", "blank",
                                                   "unreadable", "outlier")}
    for i in take(n):  # exact: the same bytes under another name, same class
        dst = rel[i].with_name(f"{rel[i].stem}_copy{rel[i].suffix}")  # sorts after the original
        shutil.copyfile(out / rel[i], out / dst)
        truth["exact"].append(str(dst))
    for i in take(n):  # near: 0.6× resized, +12 brightness, JPEG q80
        img = read_grey(out / rel[i])
        small = cv2.resize(img, (max(8, int(img.shape[1] * 0.6)), max(8, int(img.shape[0] * 0.6))),
                           interpolation=cv2.INTER_AREA)
        small = np.clip(small.astype(np.int16) + 12, 0, 255).astype(np.uint8)
        dst = rel[i].with_name(f"near_{rel[i].stem}.jpg")
        cv2.imwrite(str(out / dst), small, [cv2.IMWRITE_JPEG_QUALITY, 80])
        truth["near"].append(str(dst))
    for i in take(n):  # blurry: the sharp original replaced by a Gaussian-blurred one (σ = 2.5 % of the side)
        img = read_grey(out / rel[i])
        cv2.imwrite(str(out / rel[i]), cv2.GaussianBlur(img, (0, 0), max(1.5, 0.025 * max(img.shape))))
        truth["blurry"].append(str(rel[i]))
    for i in take(n):  # leakage: a train image also in test (same class)
        dst = Path("test") / rel[i].parent.name / f"leak_{rel[i].name}"
        (out / dst.parent).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / rel[i], out / dst)
        truth["leakage"].append(str(dst))
    for i in take(n):  # label conflict: the same image under another class, same split
        other = classes[(classes.index(rel[i].parent.name) + 1) % len(classes)]
        dst = Path("train") / other / f"conflict_{rel[i].name}"
        (out / dst.parent).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out / rel[i], out / dst)
        truth["label_conflict"] += [str(rel[i]), str(dst)]
    shape = read_grey(out / rel[train[0]]).shape
    for k in range(n):  # blank frames: flat grey with sensor noise of σ 0.5 grey level
        dst = Path("train") / classes[k % len(classes)] / f"blank_{k}.png"
        frame = np.clip(rng.normal(20 + 200 * k / max(1, n - 1), 0.5, shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(out / dst), frame)
        truth["blank"].append(str(dst))
    for k, i in enumerate(take(n)):  # unreadable: truncated, empty, or not an image at all
        data = (out / rel[i]).read_bytes()
        dst = rel[i].with_name(f"broken_{k}{rel[i].suffix}")
        (out / dst).write_bytes([data[: len(data) // 2], b"", b"not an image\n"][k % 3])
        truth["unreadable"].append(str(dst))
    for k, f in enumerate(foreign):
        dst = Path("train") / classes[k % len(classes)] / f"foreign_{k}{Path(f).suffix}"
        shutil.copyfile(f, out / dst)
        truth["outlier"].append(str(dst))
    truth["duplicate"] = truth["exact"] + truth["near"]
    return truth
