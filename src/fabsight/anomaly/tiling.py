"""From images of any size to fixed-size network inputs and back.

Resizing a 2,000-pixel die image to 256 pixels erases a 5-pixel defect; tiling keeps the
native scale: the image is cut into overlapping ``tile``×``tile`` crops (each resized to
the network's input size), each crop gets its own anomaly map, and the maps are stitched
back by averaging where tiles overlap. Images smaller than a tile are reflect-padded so
every crop has the same scale. Without a tile size the whole image is resized to a
square; with ``max_aspect`` an image longer than that (long side / short side) keeps its
aspect ratio instead: it is scaled so its short side is the input size and cut into
overlapping squares along its long side, so a 500×1250 strip is not squashed 2.5×.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class Placement:
    """Where the crops of one image came from, to stitch their maps back."""

    shape: tuple[int, int]
    boxes: tuple[tuple[int, int], ...]  # (y0, x0) of each crop in the padded (or scaled) image
    padded: tuple[int, int]
    scaled: bool = False  # the image is first resized to ``padded`` (aspect kept), then cut into input-size squares


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)  # last tile flush with the border, so nothing is left out
    return starts


@dataclass(frozen=True)
class Tiler:
    """Cuts images into network inputs of ``input_size``² and stitches maps back."""

    input_size: int
    tile: int | None = None
    overlap: float = 0.25
    max_aspect: float | None = None

    def __post_init__(self) -> None:
        if self.input_size < 16:
            raise ValueError(f"input size must be at least 16 pixels, got {self.input_size}")
        if self.tile is not None and self.tile < 16:
            raise ValueError(f"tile must be at least 16 pixels, got {self.tile}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"tile overlap must be in [0, 1), got {self.overlap}")
        if self.max_aspect is not None and self.max_aspect < 1.0:
            raise ValueError(f"max aspect must be at least 1, got {self.max_aspect}")

    def _boxes(self, ph: int, pw: int, t: int) -> tuple[tuple[int, int], ...]:
        stride = max(1, round(t * (1.0 - self.overlap)))
        return tuple((y, x) for y in _starts(ph, t, stride) for x in _starts(pw, t, stride))

    def placement(self, shape: tuple[int, int]) -> Placement:
        h, w = int(shape[0]), int(shape[1])
        if self.tile is None:
            if self.max_aspect is None or max(h, w) <= self.max_aspect * min(h, w):
                return Placement((h, w), ((0, 0),), (h, w))
            s = self.input_size
            f = s / min(h, w)
            sh, sw = (s, max(s, round(w * f))) if h <= w else (max(s, round(h * f)), s)
            return Placement((h, w), self._boxes(sh, sw, s), (sh, sw), scaled=True)
        t = self.tile
        ph, pw = max(h, t), max(w, t)
        return Placement((h, w), self._boxes(ph, pw, t), (ph, pw))

    def n_crops(self, shape: tuple[int, int]) -> int:
        return len(self.placement(shape).boxes)

    def split(self, image: np.ndarray) -> tuple[list[np.ndarray], Placement]:
        """The network inputs of one image (uint8, ``input_size``², same channels)."""
        pl = self.placement(image.shape[:2])
        s = self.input_size
        if pl.scaled:
            ph, pw = pl.padded
            shrink = ph * pw < image.shape[0] * image.shape[1]
            image = cv2.resize(image, (pw, ph), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
            return [np.ascontiguousarray(image[y : y + s, x : x + s]) for y, x in pl.boxes], pl
        if self.tile is None:
            return [cv2.resize(image, (s, s), interpolation=cv2.INTER_AREA)], pl
        h, w = pl.shape
        ph, pw = pl.padded
        if (ph, pw) != (h, w):
            image = cv2.copyMakeBorder(image, 0, ph - h, 0, pw - w, cv2.BORDER_REFLECT_101)
        t = self.tile
        crops = [image[y : y + t, x : x + t] for y, x in pl.boxes]
        if t != s:
            crops = [cv2.resize(c, (s, s), interpolation=cv2.INTER_AREA if t > s else cv2.INTER_LINEAR) for c in crops]
        return [np.ascontiguousarray(c) for c in crops], pl

    def stitch(self, maps: list[np.ndarray], pl: Placement) -> np.ndarray:
        """One H×W float32 map from the ``input_size``² maps of an image's crops."""
        h, w = pl.shape
        if pl.scaled:
            whole = _mean_of_tiles(maps, pl, self.input_size)
            return cv2.resize(whole, (w, h), interpolation=cv2.INTER_LINEAR)
        if self.tile is None:
            return cv2.resize(maps[0].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        return _mean_of_tiles(maps, pl, self.tile)[:h, :w]


def _mean_of_tiles(maps: list[np.ndarray], pl: Placement, t: int) -> np.ndarray:
    """The ``padded``-size map averaging each tile's map (resized to ``t``²) where tiles overlap."""
    acc = np.zeros(pl.padded, dtype=np.float32)
    cnt = np.zeros(pl.padded, dtype=np.float32)
    for m, (y, x) in zip(maps, pl.boxes, strict=True):
        m = m.astype(np.float32)
        if m.shape[0] != t:
            m = cv2.resize(m, (t, t), interpolation=cv2.INTER_LINEAR)
        acc[y : y + t, x : x + t] += m
        cnt[y : y + t, x : x + t] += 1.0
    return acc / cnt
