"""Unsupervised anomaly detection and pixel localisation from good images only (MISSION D6, D7).

    from fabsight.anomaly import PatchCore, load_split, read_image
    train = [read_image(r.path) for r in load_split(ROOT, "train")]
    model = PatchCore(tile=256).fit(train).calibrate_good(held_out_good, false_alarm_rate=0.01)
    model.anomaly_maps(images); model.score_samples(images); model.predict(images)

Methods: :class:`PatchCore` (memory bank), :class:`PaDiM` (per-position Gaussians),
:class:`ReconDetector` (small UNet trained on synthetic defects), :class:`StudentTeacher`
(a small student imitating the backbone on good images; anomaly = disagreement). Models save as
directories with a card (:func:`save_model` / :func:`load_model`).
"""

from __future__ import annotations

import importlib
from typing import Any

from fabsight.anomaly.base import AnomalyModel, NotFittedError
from fabsight.anomaly.datasets import (
    AnomalyRecord,
    build_mvtec_layout_from_magnetic_tile,
    load_split,
    read_mask,
)
from fabsight.anomaly.evaluate import evaluate
from fabsight.anomaly.thresholds import Threshold
from fabsight.die.data import read_image

# The PyTorch methods load on first use (PEP 562), so the torch-free parts above can be
# imported without PyTorch: the ONNX runtime (fabsight.deploy.anomaly) relies on it.
_TORCH_EXPORTS = {
    "PaDiM": "padim", "PatchCore": "patchcore", "ReconDetector": "recon", "StudentTeacher": "student",
    "METHODS": "persist", "load_model": "persist", "make_model": "persist", "save_model": "persist",
}


def __getattr__(name: str) -> Any:
    if name not in _TORCH_EXPORTS:
        raise AttributeError(f"module 'fabsight.anomaly' has no attribute {name!r}")
    return getattr(importlib.import_module(f"fabsight.anomaly.{_TORCH_EXPORTS[name]}"), name)


__all__ = [
    "METHODS",
    "AnomalyModel",
    "AnomalyRecord",
    "NotFittedError",
    "PaDiM",
    "PatchCore",
    "ReconDetector",
    "StudentTeacher",
    "Threshold",
    "build_mvtec_layout_from_magnetic_tile",
    "evaluate",
    "load_model",
    "load_split",
    "make_model",
    "read_image",
    "read_mask",
    "save_model",
]
