"""Test-time augmentation for networks that see whole defect crops.

An inspection crop has no canonical orientation: a spur turned a quarter or mirrored is
still a spur. Averaging a network's logits over the symmetries of the image therefore
removes the part of its error that depends on how the crop happened to be oriented, at
the cost of one forward pass per view. Torch-free (numpy, N×C×H×W) so the PyTorch network
and its ONNX Runtime twin share it and cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Forward = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def dihedral_views(x: np.ndarray) -> list[np.ndarray]:
    """``x`` under the symmetries that keep its shape: for square images the 8 of the square
    (4 quarter turns, each also mirrored); otherwise the 4 of the rectangle (identity, both
    flips, half turn). The identity comes first."""
    if x.shape[-1] == x.shape[-2]:
        turns = [np.rot90(x, k, axes=(-2, -1)) for k in range(4)]
        views = turns + [t[..., ::-1] for t in turns]
    else:
        views = [x, x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1]]
    return [np.ascontiguousarray(v) for v in views]


def average_views(forward: Forward, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the batch ``x`` averaged over :func:`dihedral_views`, and its pooled embedding.
    The embedding stays the identity view's: the out-of-distribution gate was fitted on
    single-view embeddings, and an average of views would sit closer to the class centroids
    than any image the gate was calibrated on."""
    outs = [forward(v) for v in dihedral_views(x)]
    return np.mean([o[0] for o in outs], axis=0), outs[0][1]
