"""Die-image folders: ``ROOT/CLASS/*.(png|jpg|jpeg|bmp|tif|tiff)``, any size, grey or colour.

Images are returned as uint8 arrays, H×W for grey and H×W×3 RGB for colour, which is
what :meth:`fabsight.backbones.Backbone.preprocess` takes. Every file that cannot be read
is reported by name instead of surfacing as an OpenCV ``None``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fabsight.errors import FabsightError, FormatError
from fabsight.io.limits import check_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """One image file → uint8 H×W (grey) or H×W×3 (RGB); 16-bit images are scaled to 8 bits.

    Images over :mod:`fabsight.io.limits` ``max_image_pixels`` are refused from their header.
    """
    import cv2

    p = Path(path)
    if not p.is_file():
        raise FabsightError(p, "image file does not exist")
    data = p.read_bytes()  # cv2.imread cannot report why it failed
    check_image(p, data)  # width × height from the header, before OpenCV allocates the pixels
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None:
        raise FormatError(p, "cannot be decoded: not a readable image (corrupt or unsupported format)")
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[..., 0]
        elif img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
        else:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    if img.ndim == 3 and np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2]):
        img = img[..., 0]  # JPEG-in-RGB of a grey image: keep one channel
    return img


@dataclass
class ImageFolder:
    """A labelled image folder: ``paths[i]`` has class ``classes[labels[i]]``."""

    root: Path
    paths: list[Path]
    labels: np.ndarray
    classes: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        return {c: int((self.labels == i).sum()) for i, c in enumerate(self.classes)}

    def subset(self, index: Sequence[int] | np.ndarray) -> ImageFolder:
        idx = np.asarray(index, dtype=int)
        return ImageFolder(self.root, [self.paths[i] for i in idx], self.labels[idx], self.classes)


def list_images(root: str | os.PathLike[str], *, recursive: bool = False) -> list[Path]:
    """Image files directly under ``root`` or, for a file, the file itself (sorted).

    ``recursive`` searches every sub-folder too (class folders, an MVTec tree, a tool's
    per-lot folders), leaving out hidden files and folders such as ``.ipynb_checkpoints``.
    """
    p = Path(root)
    if p.is_file():
        return [p]
    if not p.is_dir():
        raise FabsightError(p, "does not exist")
    if not recursive:
        return sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
    return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
                  and not any(part.startswith(".") for part in f.relative_to(p).parts))


def expand_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files as given; directories expanded to the images inside them, sub-folders included
    (a folder of class folders, or of lots, is predicted whole)."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = list_images(p, recursive=True)
            if not found:
                raise FabsightError(p, "contains no images (.png, .jpg, .jpeg, .bmp, .tif, .tiff)")
            paths += found
        elif p.is_file():
            paths.append(p)
        else:
            raise FabsightError(p, "does not exist")
    if not paths:
        raise FabsightError(None, "no images given")
    return paths


def scan_folder(root: str | os.PathLike[str], *, classes: Sequence[str] | None = None,
                min_per_class: int = 1) -> ImageFolder:
    """Read the class structure of ``ROOT/CLASS/*``; ``classes`` fixes the order (e.g. a model's).

    A folder with no class sub-folders, an empty class, or (with ``classes``) a class the
    model does not know is a user mistake and raises :class:`FabsightError`.
    """
    r = Path(root)
    if not r.is_dir():
        raise FabsightError(r, "is not a directory of class folders (ROOT/CLASS/*.png)")
    found = sorted(d.name for d in r.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise FabsightError(r, "has no class sub-folders (expected ROOT/CLASS/*.png|jpg|bmp|tif)")
    if classes is not None:
        unknown = [c for c in found if c not in classes]
        if unknown:
            raise FabsightError(r / unknown[0],
                                f"class '{unknown[0]}' is not one the model knows ({', '.join(classes)})")
        order = list(classes)
    else:
        order = found
    paths: list[Path] = []
    labels: list[int] = []
    for name in found:
        files = list_images(r / name)
        if len(files) < min_per_class:
            raise FabsightError(r / name, f"has {len(files)} images; need at least {min_per_class}")
        paths += files
        labels += [order.index(name)] * len(files)
    if not paths:
        raise FabsightError(r, "contains no images")
    return ImageFolder(r, paths, np.asarray(labels, dtype=int), order)


def _brightness_contrast(img: np.ndarray, gain: float, offset: float) -> np.ndarray:
    return np.clip(img.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


# Deterministic variants: an augmented embedding is cached like any other (keyed by name).
# Inspection images have no canonical orientation, so flips and 90° turns keep the label;
# gain/offset mimic illumination and detector drift between tools.
AUGMENTATIONS = {
    "hflip": lambda im: im[:, ::-1],
    "vflip": lambda im: im[::-1],
    "rot90": lambda im: np.rot90(im, 1),
    "rot180": lambda im: np.rot90(im, 2),
    "rot270": lambda im: np.rot90(im, 3),
    "bright": lambda im: _brightness_contrast(im, 1.0, 25.0),
    "dark": lambda im: _brightness_contrast(im, 1.0, -25.0),
    "contrast": lambda im: _brightness_contrast(im, 1.25, -32.0),
}
DEFAULT_AUGMENT = ("hflip", "vflip", "rot90", "rot270", "bright", "contrast")


def augment(image: np.ndarray, name: str) -> np.ndarray:
    """Apply the named deterministic augmentation (see ``AUGMENTATIONS``)."""
    if name not in AUGMENTATIONS:
        raise FabsightError(None, f"unknown augmentation '{name}' (known: {', '.join(AUGMENTATIONS)})")
    return np.ascontiguousarray(AUGMENTATIONS[name](image))
