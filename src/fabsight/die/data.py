"""Die-image folders: ``ROOT/CLASS/*.(png|jpg|jpeg|bmp|tif|tiff)``, any size, grey or colour.

Images are returned as uint8 arrays, H×W for grey and H×W×3 RGB for colour, which is
what :meth:`fabsight.backbones.Backbone.preprocess` takes. Every file that cannot be read
is reported by name instead of surfacing as an OpenCV ``None``.

Models read images lazily, in batches, long after a folder is listed; so listing with a
:class:`fabsight.io.ReadLog` checks each image once, cheaply (:func:`check_image`), records
the unreadable ones there and leaves them out, and one bad file never stops the others.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fabsight.errors import FabsightError, FormatError, NothingReadable
from fabsight.io import ReadLog
from fabsight.io.limits import check_image_header

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _file_bytes(p: Path) -> bytes:
    if not p.is_file():
        raise FabsightError(p, "image file does not exist")
    try:
        return p.read_bytes()  # cv2.imread cannot report why it failed
    except OSError as exc:  # no permission, an I/O error: this image cannot be read, others may
        raise FabsightError(p, f"cannot be read ({exc.strerror or exc})") from None


def _check_declared(p: Path, data: bytes) -> None:
    """Refuse an empty file, or one whose header declares more pixels than the limit
    (:mod:`fabsight.io.limits`), before OpenCV allocates anything."""
    if not data:
        raise FormatError(p, "empty file")
    check_image_header(p, data)


def _decode(data: bytes, flags: int) -> np.ndarray | None:
    import cv2

    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None


def check_image(path: str | os.PathLike[str]) -> None:
    """Raise the error :func:`read_image` would raise for ``path``, at a fraction of its cost.

    A PNG is checked whole by Pillow without inflating it (every chunk's CRC, up to ``IEND``:
    a truncated or damaged file fails); any other image is decoded by OpenCV at 1/8 scale,
    which for a JPEG reads every coded block yet skips most of the work (a cut-off JPEG fails).
    Only when that quick look fails does :func:`read_image` itself decide, so a file it can
    read is never refused here. Measured (benchmarks/image_check.py, docs/security.md): about
    0.2 ms a PNG and 0.5 ms a JPEG, against ~140 ms to embed one on a CPU.
    """
    import cv2

    p = Path(path)
    data = _file_bytes(p)
    _check_declared(p, data)
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        ok = _png_intact(p)
    else:
        ok = _decode(data, cv2.IMREAD_REDUCED_GRAYSCALE_8) is not None
    if not ok:
        read_image(p)


def _png_intact(p: Path) -> bool:
    from PIL import Image

    try:
        with Image.open(p) as im:
            im.verify()
    except Exception:  # any failure of the quick look (Pillow raises many kinds): read_image decides
        return False
    return True


def readable_images(paths: Iterable[Path], log: ReadLog) -> list[Path]:
    """``paths`` less the images :func:`check_image` refuses, each of those recorded in ``log``."""
    good = []
    for p in paths:
        try:
            check_image(p)
        except FabsightError as exc:
            log.record(exc)
        else:
            log.files_read += 1
            good.append(p)
    return good


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """One image file → uint8 H×W (grey) or H×W×3 (RGB); 16-bit images are scaled to 8 bits.

    Images over :mod:`fabsight.io.limits` ``max_image_pixels`` are refused from their header.
    """
    import cv2

    p = Path(path)
    data = _file_bytes(p)
    _check_declared(p, data)
    img = _decode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise FormatError(p, "cannot be decoded: not a readable image (corrupt or unsupported format)")
    return to_uint8(img)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """An image as OpenCV decodes it (any depth, BGR/BGRA) → uint8 grey H×W or RGB H×W×3.

    16-bit images keep their top 8 bits; other depths are stretched to 0–255. Shared by
    :func:`read_image` and readers of other containers (multi-page TIFF review images).
    """
    import cv2

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


def read_grey(path: str | os.PathLike[str]) -> np.ndarray:
    """One image file as 8-bit grey H×W, decoded as ``cv2.imread(path, IMREAD_GRAYSCALE)`` would,
    after the same checks as :func:`read_image` (empty file, pixel limit from the header)."""
    import cv2

    p = Path(path)
    data = _file_bytes(p)
    _check_declared(p, data)
    img = _decode(data, cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise FormatError(p, "cannot be decoded: not a readable image (corrupt or unsupported format)")
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


def expand_inputs(inputs: Sequence[str | os.PathLike[str]], log: ReadLog | None = None) -> list[Path]:
    """The readable images of ``inputs``: files as given, directories expanded to the images
    inside them, sub-folders included (a folder of class folders, or of lots, is predicted whole).

    With a lenient ``log`` a missing input, a folder without images and an unreadable image are
    recorded there and left out (the result may be empty: the caller decides); without one the
    first of them raises.
    """
    log = log if log is not None else ReadLog(strict=True)
    paths: list[Path] = []
    for item in inputs:
        try:
            found = _images_of(Path(item))
        except FabsightError as exc:
            log.record(exc)
            continue
        paths += readable_images(found, log)
    if not paths and not log.errors:
        raise FabsightError(None, "no images given")
    return paths


def _images_of(p: Path) -> list[Path]:
    if p.is_dir():
        found = list_images(p, recursive=True)
        if not found:
            raise FabsightError(p, "contains no images (.png, .jpg, .jpeg, .bmp, .tif, .tiff)")
        return found
    if p.is_file():
        return [p]
    raise FabsightError(p, "does not exist")


def scan_folder(root: str | os.PathLike[str], *, classes: Sequence[str] | None = None,
                min_per_class: int = 1, log: ReadLog | None = None) -> ImageFolder:
    """Read the class structure of ``ROOT/CLASS/*``; ``classes`` fixes the order (e.g. a model's).

    A folder with no class sub-folders, an empty class, or (with ``classes``) a class the
    model does not know is a user mistake and raises :class:`FabsightError`. With a ``log``
    every image is checked (:func:`check_image`): the unreadable ones are recorded there and
    left out, and a class needs ``min_per_class`` readable images.
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
        files = _class_images(r / name, min_per_class, log)
        paths += files
        labels += [order.index(name)] * len(files)
    if not paths:
        raise FabsightError(r, "contains no images")
    return ImageFolder(r, paths, np.asarray(labels, dtype=int), order)


def _class_images(folder: Path, min_per_class: int, log: ReadLog | None) -> list[Path]:
    """The (readable, with ``log``) images of one class folder; too few is an error that names
    every unreadable file so far (they may be why)."""
    files = list_images(folder)
    listed = len(files)
    if log is not None:
        files = readable_images(files, log)
    if len(files) < min_per_class:
        unreadable = listed - len(files)
        detail = f" readable images ({unreadable} could not be read)" if unreadable else " images"
        raise NothingReadable(folder, f"has {len(files)}{detail}; need at least {min_per_class}",
                              log.errors if log is not None and unreadable else [])
    return files


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
