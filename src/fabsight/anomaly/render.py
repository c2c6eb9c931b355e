"""Heat-map and mask images people can read at a glance."""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

from fabsight.utils.atomic import write_bytes


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def heatmap_image(amap: np.ndarray, threshold: float, image: np.ndarray | None = None) -> np.ndarray:
    """BGR heat map: the colour scale runs from 0 to 2 × threshold, so the threshold is always
    the middle of the scale (green–yellow) and red means "well above it"; blended over the image."""
    scale = 2.0 * threshold if threshold > 0 else float(amap.max()) or 1.0
    u8 = np.clip(amap / scale * 255.0, 0, 255).astype(np.uint8)
    heat = cv2.applyColorMap(u8, cv2.COLORMAP_JET)
    if image is None:
        return heat
    base = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    base = cv2.cvtColor(base, cv2.COLOR_RGB2BGR) if image.ndim == 3 else base
    return cv2.addWeighted(base, 0.5, heat, 0.5, 0.0)


def write_heatmap(path: str | os.PathLike[str], amap: np.ndarray, threshold: float, image: np.ndarray | None) -> None:
    write_bytes(path, _png(heatmap_image(amap, threshold, image)))


def write_mask(path: str | os.PathLike[str], mask: np.ndarray) -> None:
    """Binary mask PNG: 255 = defect, 0 = good (the MVTec ground-truth convention)."""
    write_bytes(path, _png(mask.astype(np.uint8) * 255))


def regions_image(image: np.ndarray, regions: list[dict[str, Any]]) -> np.ndarray:
    """BGR picture with each defect region boxed in red and numbered as in predictions.json (1 = highest peak)."""
    base = image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)
    pic = cv2.cvtColor(base, cv2.COLOR_RGB2BGR) if image.ndim == 3 else base.copy()
    thick = max(1, round(max(pic.shape[:2]) / 400))
    for k, r in enumerate(regions, start=1):
        x0, y0, x1, y1 = r["bbox"]
        cv2.rectangle(pic, (x0, y0), (x1 - 1, y1 - 1), (0, 0, 255), thick)
        cv2.putText(pic, str(k), (x0, max(y0 - 2, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.35 * thick, (0, 0, 255), thick)
    return pic


def write_regions(path: str | os.PathLike[str], image: np.ndarray, regions: list[dict[str, Any]]) -> None:
    write_bytes(path, _png(regions_image(image, regions)))
