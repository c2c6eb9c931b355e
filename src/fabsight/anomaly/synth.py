"""Synthetic surface defects pasted into good images, to train a detector without defects.

A reconstruction/segmentation network only learns what a defect *is* if it sees some; a
new fab line has none labelled. DRAEM (Zavrtanik et al., ICCV 2021) and the ChipDiffusion
slides paste pseudo-defects into good images and train against the known paste mask.
The generators here imitate what surface inspection finds: irregular Perlin-noise regions
filled with foreign texture (stains, uneven coating), brightness shifts, thin scratches
and cracks, and round pits (blowholes). Everything is float32 in [0, 1], H×W×C.
"""

from __future__ import annotations

import math

import cv2
import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """2-D gradient (Perlin) noise in about [-1, 1] with ``res`` lattice cells per axis."""
    h, w = shape
    ry, rx = res
    angles = rng.uniform(0.0, 2.0 * math.pi, size=(ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    y = np.arange(h, dtype=np.float64) * ry / h
    x = np.arange(w, dtype=np.float64) * rx / w
    yi, xi = np.floor(y).astype(int), np.floor(x).astype(int)
    yf, xf = (y - yi)[:, None], (x - xi)[None, :]
    yi, xi = yi[:, None], xi[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gy[yi + dy, xi + dx] * (yf - dy) + gx[yi + dy, xi + dx] * (xf - dx)

    u, v = _fade(xf), _fade(yf)
    top = corner(0, 0) * (1 - u) + corner(0, 1) * u
    bottom = corner(1, 0) * (1 - u) + corner(1, 1) * u
    return (math.sqrt(2.0) * (top * (1 - v) + bottom * v)).astype(np.float32)


def perlin_mask(shape: tuple[int, int], rng: np.random.Generator, threshold: float = 0.5) -> np.ndarray:
    """An irregular blob-like region (bool) from thresholded Perlin noise at a random scale."""
    for _ in range(10):
        res = (2 ** int(rng.integers(0, 5)), 2 ** int(rng.integers(0, 5)))
        noise = perlin_noise(shape, res, rng)
        noise = _rotate(noise, float(rng.uniform(-90, 90)))
        mask = noise > threshold
        if mask.mean() > 0.002:
            return mask
    return _ellipse_mask(shape, rng)


def _rotate(a: np.ndarray, angle: float) -> np.ndarray:
    h, w = a.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    return cv2.warpAffine(a, m, (w, h), borderMode=cv2.BORDER_REFLECT_101)


def _ellipse_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    r = max(2.0, min(h, w) * float(rng.uniform(0.02, 0.08)))
    axes = (max(1, round(r * rng.uniform(0.6, 1.4))), max(1, round(r * rng.uniform(0.6, 1.4))))
    center = (int(rng.integers(0, w)), int(rng.integers(0, h)))
    cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
    return mask.astype(bool)


def _scratch_mask(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A thin crack: a random polyline of 1–4 px width."""
    h, w = shape
    mask = np.zeros((h, w), np.uint8)
    n = int(rng.integers(2, 5))
    pt = np.array([rng.uniform(0, w), rng.uniform(0, h)])
    step = min(h, w) * float(rng.uniform(0.1, 0.35))
    angle = rng.uniform(0, 2 * math.pi)
    pts = [pt.copy()]
    for _ in range(n):
        angle += rng.uniform(-0.8, 0.8)
        pt = pt + step * np.array([math.cos(angle), math.sin(angle)])
        pts.append(pt.copy())
    poly = np.round(np.array(pts)).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(mask, [poly], False, 1, thickness=int(rng.integers(1, 5)))
    return mask.astype(bool)


def _foreign_texture(image: np.ndarray, others: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Fill for a pasted region: another image reshaped, or smoothed noise, with new contrast."""
    h, w, c = image.shape
    if others is not None and len(others) and rng.random() < 0.7:
        src = others[int(rng.integers(0, len(others)))].astype(np.float32)
        src = np.rot90(src, int(rng.integers(0, 4)))
        src = cv2.resize(np.ascontiguousarray(src), (w, h), interpolation=cv2.INTER_LINEAR).reshape(h, w, -1)
        if src.shape[2] != c:
            src = np.repeat(src.mean(axis=2, keepdims=True), c, axis=2)
    else:
        k = int(rng.integers(1, 4)) * 2 + 1
        src = cv2.GaussianBlur(rng.random((h, w, c), dtype=np.float32), (k, k), 0).reshape(h, w, c)
        src = (src - src.min()) / max(1e-6, float(src.max() - src.min()))
    if rng.random() < 0.3:
        src = 1.0 - src
    gain, bias = rng.uniform(0.5, 1.5), rng.uniform(-0.3, 0.3)
    return np.clip(src * gain + bias, 0.0, 1.0)


def add_synthetic_defect(
    image: np.ndarray, rng: np.random.Generator, others: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``image`` (H×W×C float in [0, 1]) with one pseudo-defect, and the bool mask of where it is.

    ``others`` (N×H×W×C) are other good images whose texture may be pasted in; a defect
    always changes the pixels under its mask visibly (at least about 0.1 in intensity).
    """
    h, w, _ = image.shape
    kind = rng.choice(["texture", "shift", "scratch", "pit"], p=[0.4, 0.2, 0.2, 0.2])
    if kind in ("texture", "shift"):
        mask = perlin_mask((h, w), rng)
    elif kind == "scratch":
        mask = _scratch_mask((h, w), rng)
    else:
        mask = _ellipse_mask((h, w), rng)
    if kind == "texture":
        fill = _foreign_texture(image, others, rng)
        beta = rng.uniform(0.5, 1.0)
        out = image * (1 - beta) + fill * beta
    else:
        delta = rng.uniform(0.15, 0.6) * (1 if rng.random() < 0.4 else -1)
        out = image + delta
    m = mask[:, :, None].astype(np.float32)
    if kind in ("shift", "pit"):
        m = cv2.GaussianBlur(m, (3, 3), 0).reshape(h, w, 1)  # soft edge, label stays the hard mask
    result = np.clip(image * (1 - m) + out * m, 0.0, 1.0).astype(np.float32)
    # Where the paste happened to change nothing visible there is no defect to find.
    visible = mask & (np.abs(result - image).max(axis=2) > 0.05)
    return result, visible
