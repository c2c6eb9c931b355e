"""Defects, not pixels: the connected regions of an anomaly map above the threshold.

An anomaly map says *where* an image looks unlike the good ones; an inspector asks *how
many* defects there are and *how big* each is. Every 8-connected region of the map at or
above the threshold is one defect (the same connectivity the ground-truth masks are split
by in :mod:`fabsight.anomaly.metrics`), with its area (pixels, and µm² when the pixel
size is known), bounding box, centroid and peak score. This is template-free defect
counting: no golden image and no trained detector, only good images.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage

#: 8-connectivity: pixels touching at a corner belong to the same region (as MVTec's masks).
STRUCTURE = np.ones((3, 3), dtype=bool)

#: Upper edges (pixels) of the region-size histogram bins; the last bin is open-ended.
#: Powers of 4 so a pin-hole, a scratch and a stain land in different bins at any scale.
AREA_BIN_EDGES_PX: tuple[int, ...] = (16, 64, 256, 1024, 4096, 16384)


def defect_regions(
    amap: np.ndarray, threshold: float, *, pixel_size_um: float | None = None, min_area: int = 1
) -> list[dict[str, Any]]:
    """One dict per connected region of ``amap >= threshold``, largest peak first.

    Keys: ``area_px``, ``area_um2`` (only with ``pixel_size_um``, the side of one pixel in
    µm), ``bbox`` ``[x0, y0, x1, y1]`` (exclusive ends, image pixels), ``centroid``
    ``[x, y]`` and ``peak_score`` (the map's maximum inside the region). Regions smaller
    than ``min_area`` pixels are left out (a single hot pixel is rarely a defect).
    """
    if pixel_size_um is not None and not pixel_size_um > 0:
        raise ValueError(f"pixel size must be positive, got {pixel_size_um}")
    a = np.asarray(amap)
    labels, n = ndimage.label(a >= threshold, structure=STRUCTURE)
    if n == 0:
        return []
    index = np.arange(1, n + 1)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    peaks = ndimage.maximum(a, labels=labels, index=index)
    centroids = ndimage.center_of_mass(np.ones_like(labels), labels=labels, index=index)
    regions = []
    for k, box in enumerate(ndimage.find_objects(labels)):
        if box is None or areas[k] < min_area:
            continue
        ys, xs = box
        r: dict[str, Any] = {"area_px": int(areas[k]), "bbox": [xs.start, ys.start, xs.stop, ys.stop],
                             "centroid": [round(float(centroids[k][1]), 1), round(float(centroids[k][0]), 1)],
                             "peak_score": float(peaks[k])}
        if pixel_size_um is not None:
            r["area_um2"] = float(areas[k]) * pixel_size_um**2
        regions.append(r)
    return sorted(regions, key=lambda r: -r["peak_score"])


def area_histogram(areas_px: Iterable[int], pixel_size_um: float | None = None) -> list[dict[str, Any]]:
    """Region counts per size bin (:data:`AREA_BIN_EDGES_PX`), each bin also in µm² when the pixel size is known."""
    a = np.asarray(list(areas_px), dtype=np.int64)
    edges = (0, *AREA_BIN_EDGES_PX, None)
    bins = []
    for lo, hi in itertools.pairwise(edges):
        n = int(np.count_nonzero((a > lo) & (a <= hi))) if hi is not None else int(np.count_nonzero(a > lo))
        b: dict[str, Any] = {"area_px": [lo, hi], "count": n}
        if pixel_size_um is not None:
            b["area_um2"] = [lo * pixel_size_um**2, None if hi is None else hi * pixel_size_um**2]
        bins.append(b)
    return bins


def folder_summary(
    folders: Sequence[str], regions: Sequence[list[dict[str, Any]]], pixel_size_um: float | None = None
) -> dict[str, dict[str, Any]]:
    """Per folder: images, images with defects, defects counted, their total area and size histogram."""
    out: dict[str, dict[str, Any]] = {}
    for folder in dict.fromkeys(folders):
        rs = [rr for f, rr in zip(folders, regions, strict=True) if f == folder]
        areas = [reg["area_px"] for rr in rs for reg in rr]
        s: dict[str, Any] = {"n_images": len(rs), "n_images_with_defects": sum(1 for rr in rs if rr),
                             "n_defects": len(areas), "defect_area_px": int(sum(areas)),
                             "median_defect_area_px": float(np.median(areas)) if areas else None,
                             "area_histogram": area_histogram(areas, pixel_size_um)}
        if pixel_size_um is not None:
            s["defect_area_um2"] = float(sum(areas)) * pixel_size_um**2
        out[folder] = s
    return out
