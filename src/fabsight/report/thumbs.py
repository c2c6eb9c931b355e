"""Inline PNG thumbnails for self-contained HTML reports (demo, curation, discovery).

A ``data:`` URI keeps a report one file that opens anywhere, with no folder of pictures
to lose beside it.
"""

from __future__ import annotations

import base64

import numpy as np


def png_uri(img: np.ndarray, size: int | None = None) -> str:
    """A ``data:`` URI of ``img`` (uint8 grey or RGB), shrunk to fit ``size`` px when given."""
    import cv2

    if size is not None:
        scale = min(1.0, size / max(img.shape[:2]))
        if scale < 1.0:
            img = cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                             interpolation=cv2.INTER_AREA)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", img)
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode() if ok else ""
