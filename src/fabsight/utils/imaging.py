"""Image pixels to floats, without PyTorch: shared by the backbones and the ONNX runtime.

Every network input starts the same way, whatever runs the network: grey, grey+alpha,
RGB or RGBA arrays of uint8, uint16, bool or float become float32 in [0, 1]. Keeping it in
one torch-free place lets :mod:`fabsight.backbones` and the torch-free deployment path
(:mod:`fabsight.deploy`) read images identically.
"""

from __future__ import annotations

import numpy as np

from fabsight.errors import FabsightError


def as_float_image(image: np.ndarray, index: int) -> np.ndarray:
    """One image → float32 H×W (grey) or H×W×3 (RGB) in [0, 1]; alpha dropped.

    ``index`` names the image in the error a wrong shape or pixel type raises.
    """
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[2] in (2, 4):
        arr = arr[..., :-1]  # drop alpha
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3) or min(arr.shape[:2]) < 1:
        raise FabsightError(f"image #{index}", f"expected H×W grey or H×W×3 RGB, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == bool or np.issubdtype(arr.dtype, np.floating):
        return arr.astype(np.float32)
    raise FabsightError(f"image #{index}", f"unsupported pixel type {arr.dtype} (use uint8, uint16 or float)")
