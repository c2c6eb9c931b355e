"""Thresholds from the data's own distribution, and class-balance weights.

A fixed blur threshold does not transfer: binarised PCB scans, grey magnetic tiles and SEM
frames have variances of the Laplacian decades apart. Outliers are judged against the
set's own spread instead: median ± k·MAD (MAD scaled by 1.4826, so k is in standard
deviations for Gaussian data), in log space for quantities that spread multiplicatively.
The median and MAD barely move when a minority of images is bad, which a mean/std would.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

MAD_TO_SIGMA = 1.4826
#: Fewer values than this give no data-driven threshold (the median/MAD would be noise).
MIN_FOR_THRESHOLD = 8


def robust_threshold(values: np.ndarray, k: float, *, side: str, log: bool) -> dict[str, Any] | None:
    """``median − k·MAD`` (``side="low"``) or ``median + k·MAD`` (``"high"``), optionally in log space.

    Returns ``{"threshold", "median", "mad", "k", "space", "n"}`` (threshold back in the
    original units), or ``None`` when there are too few values or no spread at all.
    """
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if log:
        v = np.log(np.maximum(v, 1e-12))
    if v.size < MIN_FOR_THRESHOLD:
        return None
    med = float(np.median(v))
    mad = MAD_TO_SIGMA * float(np.median(np.abs(v - med)))
    if mad == 0.0:
        return None
    t = med - k * mad if side == "low" else med + k * mad
    back = (lambda x: float(np.exp(x))) if log else float
    return {"threshold": back(t), "median": back(med), "mad": mad, "k": k,
            "space": "log" if log else "linear", "n": int(v.size)}


def balance(counts: Mapping[str, int], beta: float | None = None) -> dict[str, Any]:
    """Per-class sampling weights for a training set with these class counts.

    - ``inverse_frequency``: w_c = N / (C · n_c): each class contributes equally to an
      epoch; the weights average to 1 over the samples.
    - ``effective_number`` (Cui et al., CVPR 2019): w_c ∝ (1 − β) / (1 − β^n_c), which
      grows more slowly than 1/n for big classes (their extra images are partly redundant);
      β = (N − 1) / N by default; normalised so the weights sum to C.
    """
    classes = [c for c, n in counts.items() if n > 0]
    if not classes:
        return {"counts": dict(counts), "n_classes": 0}
    n = np.array([counts[c] for c in classes], dtype=np.float64)
    total, c = float(n.sum()), len(classes)
    b = (total - 1.0) / total if beta is None else beta
    inv = total / (c * n)
    eff = (1.0 - b) / (1.0 - np.power(b, n)) if b < 1.0 else 1.0 / n
    eff = eff * c / eff.sum()
    return {
        "counts": {k: int(counts[k]) for k in counts},
        "n_classes": c,
        "imbalance_ratio": float(n.max() / n.min()),
        "inverse_frequency": {k: round(float(w), 4) for k, w in zip(classes, inv, strict=True)},
        "effective_number": {k: round(float(w), 4) for k, w in zip(classes, eff, strict=True)},
        "effective_number_beta": b,
    }
