"""Unsupervised anomaly detection and pixel localisation from good images only (MISSION D6, D7).

    from fabsight.anomaly import PatchCore, load_split, read_image
    train = [read_image(r.path) for r in load_split(ROOT, "train")]
    model = PatchCore(tile=256).fit(train).calibrate_good(held_out_good, false_alarm_rate=0.01)
    model.anomaly_maps(images); model.score_samples(images); model.predict(images)

Methods: :class:`PatchCore` (memory bank), :class:`PaDiM` (per-position Gaussians),
:class:`ReconDetector` (small UNet trained on synthetic defects). Models save as
directories with a card (:func:`save_model` / :func:`load_model`).
"""

from fabsight.anomaly.base import AnomalyModel, NotFittedError
from fabsight.anomaly.datasets import (
    AnomalyRecord,
    build_mvtec_layout_from_magnetic_tile,
    load_split,
    read_mask,
)
from fabsight.anomaly.evaluate import evaluate
from fabsight.anomaly.padim import PaDiM
from fabsight.anomaly.patchcore import PatchCore
from fabsight.anomaly.persist import METHODS, load_model, make_model, save_model
from fabsight.anomaly.recon import ReconDetector
from fabsight.anomaly.thresholds import Threshold
from fabsight.die.data import read_image

__all__ = [
    "METHODS",
    "AnomalyModel",
    "AnomalyRecord",
    "NotFittedError",
    "PaDiM",
    "PatchCore",
    "ReconDetector",
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
