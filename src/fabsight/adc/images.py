"""Find and read the review images a KLARF names, confined to the folders the user allowed.

A KLARF is often produced on another machine and may name any path: a reference is
resolved under the KLARF's own folder, then under each ``--images`` folder, and a path
that leads outside all of them (``..``, an absolute path elsewhere) is refused rather
than read. The check is on the path as written (normalised, not resolved), so symbolic
links the fab placed inside an allowed folder are followed.

Images are PNG, JPEG, BMP or TIFF (8- or 16-bit, grey or colour); in a multi-page TIFF
the image number picks the page, from 1. Single-image files ignore the number, since
review tools write 0 or 1 there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fabsight.die.data import IMAGE_SUFFIXES, read_image, to_uint8
from fabsight.errors import FabsightError, FormatError
from fabsight.io.klarf_classes import ImageRef
from fabsight.io.limits import check_image_header, check_pixels

_TIFF = (".tif", ".tiff")


def allowed_roots(klarf: str | os.PathLike[str], images: Sequence[str | os.PathLike[str]] = ()) -> list[Path]:
    """The KLARF's folder, then each ``--images`` folder (which must exist)."""
    roots = [Path(os.path.abspath(Path(klarf).parent))]
    for d in images:
        p = Path(d)
        if not p.is_dir():
            raise FabsightError(p, "--images is not a folder")
        roots.append(Path(os.path.abspath(p)))
    return roots


def _inside(path: str, root: Path) -> bool:
    return os.path.commonpath([path, str(root)]) == str(root)


def resolve_image(ref: ImageRef, roots: Sequence[Path]) -> Path:
    """The file ``ref`` names, under the first allowed root that holds it.

    Raises a message without a path prefix (the caller names the KLARF and the defect).
    """
    name = ref.file.replace("\\", "/")
    if not name:
        raise ValueError("an image reference with no file name")
    candidates = [os.path.normpath(name)] if os.path.isabs(name) else [os.path.normpath(r / name) for r in roots]
    inside = [c for c in candidates if any(_inside(c, r) for r in roots)]
    if not inside:
        raise ValueError(f"image '{ref.file[:200]}' points outside the allowed folders "
                         f"({', '.join(str(r) for r in roots)}; add one with --images)")
    for c in inside:
        if os.path.isfile(c):
            return Path(c)
    raise ValueError(f"image '{ref.file[:200]}' not found in {', '.join(str(r) for r in roots)}")


class ImageReader:
    """Reads review images; the pages of the last multi-page TIFF are kept, since consecutive
    defects usually point at consecutive pages of one file."""

    def __init__(self) -> None:
        self._tiff: tuple[Path, list[np.ndarray]] | None = None

    def read(self, path: Path, page: int) -> np.ndarray:
        """One image as uint8 grey H×W or RGB H×W×3 (:func:`fabsight.die.data.read_image`'s form)."""
        suffix = path.suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            raise FormatError(path, f"not a review image type ({', '.join(IMAGE_SUFFIXES)})")
        if suffix not in _TIFF:
            return read_image(path)
        pages = self._pages(path)
        if not 1 <= page <= len(pages):
            raise FormatError(path, f"image number {page} is out of range: the TIFF has {len(pages)} page(s)")
        return pages[page - 1]

    def _pages(self, path: Path) -> list[np.ndarray]:
        if self._tiff is not None and self._tiff[0] == path:
            return self._tiff[1]
        import cv2

        try:
            data = path.read_bytes()
        except OSError as exc:
            raise FabsightError(path, f"cannot be read ({exc.strerror or exc})") from None
        if not data:
            raise FormatError(path, "empty file")
        check_image_header(path, data)
        try:
            ok, mats = cv2.imdecodemulti(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            ok, mats = False, []
        if not ok or not mats:
            raise FormatError(path, "cannot be decoded: not a readable TIFF")
        for m in mats:
            check_pixels(path, m.shape[1], m.shape[0])
        pages = [to_uint8(m) for m in mats]
        self._tiff = (path, pages)
        return pages
