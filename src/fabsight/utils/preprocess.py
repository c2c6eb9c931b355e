"""The backbones' preprocessing in numpy, so an exported die or anomaly model runs without PyTorch.

:meth:`fabsight.backbones.Backbone.preprocess` resizes with ``torch.nn.functional.interpolate``
(``antialias=True``) and normalises; the exported graphs start after that step, so the
ONNX runtime must reproduce it exactly. An antialiased resize is separable: each output
pixel is a normalised, scaled-filter-weighted sum of input pixels along each axis, so it is
two small matrix products here. The weights follow PyTorch's CPU kernel (PIL's scheme:
triangle filter for bilinear, Keys cubic with a = -0.5 for bicubic, support widened by the
down-scaling factor); ``tests/test_deploy_models.py`` checks the result against
``Backbone.preprocess`` on images of many sizes and pixel types.

The same weights without widening are plain bilinear interpolation with half-pixel
centres (``align_corners=False``) when enlarging, which the anomaly runtime uses to bring
patch scores to input resolution as the PyTorch models do.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from fabsight.errors import FabsightError
from fabsight.utils.imaging import as_float_image
from fabsight.utils.threads import single_blas_thread

#: Filter support (taps at scale 1) per interpolation mode, as in PyTorch's antialiased kernel.
_SUPPORT = {"bilinear": 2, "bicubic": 4}


def _filter(mode: str, x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    if mode == "bilinear":
        return np.clip(1.0 - x, 0.0, None)
    a = -0.5
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


@functools.lru_cache(maxsize=64)
def resize_weights(n_in: int, n_out: int, mode: str) -> np.ndarray:
    """``n_out``×``n_in`` float64 matrix: row i holds the input weights of output pixel i."""
    if mode not in _SUPPORT:
        raise FabsightError(None, f"interpolation '{mode}' has no numpy twin (known: {', '.join(_SUPPORT)})")
    scale = n_in / n_out
    support = _SUPPORT[mode] * 0.5 * (scale if scale >= 1.0 else 1.0)
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(n_out) + 0.5)
    lo = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)  # trunc, as the C++ cast does
    hi = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), n_in)
    idx = lo[:, None] + np.arange(max(int((hi - lo).max()), 0))[None, :]
    inside = idx < hi[:, None]
    taps = np.where(inside, _filter(mode, (idx - center[:, None] + 0.5) * invscale), 0.0)
    total = taps.sum(axis=1, keepdims=True)
    taps = np.divide(taps, total, out=taps.copy(), where=total != 0)
    w = np.zeros((n_out, n_in))
    rows = np.broadcast_to(np.arange(n_out)[:, None], idx.shape)
    w[rows[inside], idx[inside]] = taps[inside]
    return w


def resize(image: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """H×W or H×W×C float image → ``size`` (h, w), antialiased like ``F.interpolate(antialias=True)``."""
    wy = resize_weights(image.shape[0], int(size[0]), mode)
    wx = resize_weights(image.shape[1], int(size[1]), mode)
    with single_blas_thread():
        out = np.tensordot(wy, image.astype(np.float64), axes=(1, 0))  # h×W(×C)
        out = np.tensordot(wx, out, axes=(1, 1))  # w×h(×C)
    return np.swapaxes(out, 0, 1).astype(np.float32)


def preprocess(
    images: Sequence[np.ndarray],
    *,
    size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    interpolation: str,
) -> np.ndarray:
    """uint8 grey/RGB images of any size → normalised float32 B×3×H×W, as ``Backbone.preprocess``."""
    if len(images) == 0:
        raise FabsightError(None, "no images to preprocess")
    hw = (int(size[0]), int(size[1]))
    m = np.asarray(mean, np.float32).reshape(3, 1, 1)
    s = np.asarray(std, np.float32).reshape(3, 1, 1)
    out = np.empty((len(images), 3, *hw), np.float32)
    for i, img in enumerate(images):
        a = as_float_image(img, i)
        if a.shape[:2] != hw:
            a = np.clip(resize(a, hw, interpolation), 0.0, 1.0)
        chw = np.broadcast_to(a, (3, *hw)) if a.ndim == 2 else a.transpose(2, 0, 1)
        out[i] = (chw - m) / s
    return out
