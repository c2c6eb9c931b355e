"""Drawing inspection results: boxes, types and confidences over the test image."""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np

from fabsight.errors import FabsightError
from fabsight.inspect.dataset import Box
from fabsight.inspect.model import Detection
from fabsight.utils.atomic import atomic_path

# BGR colours per type, chosen to stay distinguishable on black-and-white scans.
_COLOURS = {
    "open": (0, 0, 230),
    "short": (0, 140, 255),
    "mousebite": (200, 0, 200),
    "spur": (230, 120, 0),
    "spurious-copper": (0, 170, 0),
    "pin-hole": (160, 160, 0),
    "defect": (0, 0, 230),
}
_TRUTH = (120, 120, 120)


def draw(
    image: np.ndarray,
    detections: Sequence[Detection],
    truths: Sequence[Box] = (),
    *,
    scale: int = 1,
) -> np.ndarray:
    """A BGR picture of ``image`` with ground-truth boxes (thin grey) and detections (type colours)."""
    vis = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image.copy()
    if scale != 1:
        vis = cv2.resize(vis, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for t in truths:
        p1 = (round(t.x1 * scale), round(t.y1 * scale))
        p2 = (round(t.x2 * scale) - 1, round(t.y2 * scale) - 1)
        cv2.rectangle(vis, p1, p2, _TRUTH, 1)
        cv2.putText(vis, t.type, (p1[0], p2[1] + 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, _TRUTH, 1, cv2.LINE_AA)
    for d in detections:
        colour = _COLOURS.get(d.type, (0, 0, 230))
        x1, y1, x2, y2 = (round(v * scale) for v in d.box)
        cv2.rectangle(vis, (x1, y1), (x2 - 1, y2 - 1), colour, 2)
        label = f"{d.type} {d.confidence:.2f}"
        cv2.putText(vis, label, (x1, max(10, y1 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    return vis


def save_image(path: str | os.PathLike[str], image: np.ndarray) -> None:
    """Write an image atomically; the extension picks the format (``.png`` recommended)."""
    with atomic_path(path) as tmp:
        try:
            ok = cv2.imwrite(str(tmp), image)
        except cv2.error:
            ok = False
        if not ok:
            raise FabsightError(path, "cannot write an image with this extension (use .png or .jpg)")
