"""Heat-map and mask images people can read at a glance."""

from __future__ import annotations

import os

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
