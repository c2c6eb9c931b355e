"""Everything curation needs from one image file, computed in a single read.

Each file is read once: the bytes are hashed, PIL ``verify()`` checks the container, a
full decode catches truncated data (PIL refuses a JPEG that ends early, where OpenCV would
silently grey-fill it), and the decoded pixels give the content hash, the perceptual hash
and the sharpness / information measures. Nothing here compares two images: pairwise work
happens later on these small per-file records.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fabsight.errors import FormatError
from fabsight.io.limits import check_pixels

#: Longest side the sharpness / information measures are computed at. Variance of the
#: Laplacian grows with resolution, so measuring every image at (at most) one scale keeps
#: a 2,000-px frame and a 200-px crop on the same footing; the hash uses 32×32 anyway.
MEASURE_SIDE = 512
#: Side of the grey thumbnail kept per image to confirm perceptual-hash matches (1 KiB each).
THUMB_SIDE = 32


@dataclass
class ImageRecord:
    """What one pass over a file learned; ``error`` is set (and the rest empty) when it cannot be decoded."""

    path: Path
    bytes_sha: str
    size: int
    error: str | None = None
    mode: str = ""
    width: int = 0
    height: int = 0
    pixel_sha: str = ""
    phash: int = 0
    thumb: np.ndarray | None = None
    sharpness: float = 0.0
    entropy: float = 0.0
    std: float = 0.0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def pixels(self) -> int:
        return self.width * self.height


def thumbnail(grey: np.ndarray) -> np.ndarray:
    """The image shrunk to :data:`THUMB_SIDE` × :data:`THUMB_SIDE` (area averaging), uint8."""
    import cv2

    return cv2.resize(grey, (THUMB_SIDE, THUMB_SIDE), interpolation=cv2.INTER_AREA)


def phash(small: np.ndarray) -> int:
    """64-bit perceptual hash (Zauner 2010 / pHash) of a 32×32 thumbnail: the low-frequency
    8×8 DCT block, one bit per coefficient above the block's median.

    Resizing, re-encoding and mild brightness changes move few bits; unrelated content
    moves about half of them, so a small Hamming distance means "probably the same picture".
    """
    from scipy.fft import dctn

    block = dctn(small.astype(np.float32), norm="ortho")[:8, :8].ravel()
    bits = block > np.median(block[1:])  # the DC term (mean brightness) is left out of the median
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def grey_entropy(grey: np.ndarray) -> float:
    """Shannon entropy (bits) of the 256-bin intensity histogram: 0 for a blank frame, ≤ 8."""
    hist = np.bincount(grey.ravel(), minlength=256).astype(np.float64)
    p = hist[hist > 0] / hist.sum()
    return float(-(p * np.log2(p)).sum())


def sharpness(grey: np.ndarray) -> float:
    """Variance of the Laplacian (Pech-Pacheco et al. 2000): low when edges are soft (blur)."""
    import cv2

    return float(cv2.Laplacian(grey, cv2.CV_64F, ksize=3).var())


def _to_grey_u8(arr: np.ndarray) -> np.ndarray:
    import cv2

    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = cv2.normalize(arr.astype(np.float64), None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr[..., :3], cv2.COLOR_RGB2GRAY)
    return arr


def measure(grey: np.ndarray) -> tuple[float, float, float]:
    """(sharpness, entropy, std) of a uint8 grey image at :data:`MEASURE_SIDE`."""
    import cv2

    h, w = grey.shape
    if max(h, w) > MEASURE_SIDE:
        s = MEASURE_SIDE / max(h, w)
        grey = cv2.resize(grey, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)
    return sharpness(grey), grey_entropy(grey), float(grey.std())


def read_record(path: str | os.PathLike[str]) -> ImageRecord:
    """One file → :class:`ImageRecord`; a file that does not decode gets ``error`` set, never raises."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    data = p.read_bytes()
    rec = ImageRecord(p, hashlib.sha256(data).hexdigest(), len(data))
    if not data:
        rec.error = "empty file"
        return rec
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.verify()  # container structure and checksums (PNG CRC); the image is unusable after
        with Image.open(io.BytesIO(data)) as im:
            check_pixels(p, *im.size)  # from the header, before the decode allocates (fabsight.io.limits)
            im.load()  # full decode: a truncated JPEG/PNG raises here
            rec.mode, (rec.width, rec.height) = im.mode, im.size
            if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
            arr = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        rec.error = f"cannot be decoded: {str(exc)[:120] or type(exc).__name__}"
        return rec
    except FormatError as exc:
        rec.error = exc.message
        return rec
    if arr.size == 0:
        rec.error = "decodes to an empty image"
        return rec
    h = hashlib.sha256(str((arr.shape, arr.dtype.str)).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    rec.pixel_sha = h.hexdigest()
    grey = _to_grey_u8(arr)
    rec.thumb = thumbnail(grey)
    rec.phash = phash(rec.thumb)
    rec.sharpness, rec.entropy, rec.std = measure(grey)
    return rec
