"""Anomaly model directories: ``model.safetensors`` + ``card.json``.

The card holds everything a person or a loader needs without running code: method and
its parameters, backbone name with weights source and hash, layers, input size, tiling,
the threshold with how it was chosen, and metrics with the data they were measured on.
The threshold is never folded into the weights, so it can be read and changed
(``fabsight anomaly predict --threshold``) long after training.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from fabsight.anomaly.base import AnomalyModel
from fabsight.anomaly.padim import PaDiM
from fabsight.anomaly.patchcore import PatchCore
from fabsight.anomaly.recon import ReconDetector
from fabsight.anomaly.student import StudentTeacher
from fabsight.anomaly.thresholds import Threshold
from fabsight.artifacts import ModelCard, load_card, save_card
from fabsight.errors import ModelError
from fabsight.utils.atomic import atomic_dir
from fabsight.utils.tensors import save_tensors

TASK = "anomaly"
WEIGHTS = "model.safetensors"

METHODS: dict[str, type[AnomalyModel]] = {cls.method: cls for cls in (PatchCore, PaDiM, ReconDetector, StudentTeacher)}


def make_model(method: str, **params: Any) -> AnomalyModel:
    """A new, unfitted model of ``method`` (patchcore, padim, recon, student)."""
    if method not in METHODS:
        raise ModelError(None, f"unknown anomaly method '{method}' (known: {', '.join(METHODS)})")
    return METHODS[method](**params)


def _input_block(model: AnomalyModel) -> dict[str, Any]:
    block: dict[str, Any] = {
        "size": [int(model.input_size), int(model.input_size)],
        "tiling": None if model.tile is None else {"tile": int(model.tile), "overlap": float(model.tile_overlap),
                                                   "stitch": "mean of overlapping tile maps"},
        "resize": _resize_rule(model),
    }
    bb = model.describe_backbone()
    if bb is not None:
        block["preprocessing"] = (f"grey → 3 channels, scale to [0, 1], normalise mean={bb['mean']} std={bb['std']}, "
                                  f"{bb['interpolation']} resize")
    else:
        block["preprocessing"] = "scale to [0, 1]; grey or RGB as trained"
        block["channels"] = int(getattr(model, "channels_", 1))
    return block


def _resize_rule(model: AnomalyModel) -> str:
    if model.tile:
        return "each tile resized to the input size"
    if model.max_aspect is not None:
        return (f"images up to {model.max_aspect:g}:1 resized whole to the input size; longer ones keep their aspect "
                "ratio: short side scaled to the input size, overlapping squares along the long side")
    return "whole image resized to the input size"


def save_model(
    model: AnomalyModel,
    out_dir: str | os.PathLike[str],
    *,
    training: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` (fitted; threshold optional) as a model directory, atomically."""
    model._check_fitted()
    threshold = getattr(model, "threshold_", None)
    card = ModelCard(
        task=TASK,
        classes=["good", "anomalous"],
        input=_input_block(model),
        backbone=model.describe_backbone(),
        training={"n_images": model.n_train_images_, "n_network_inputs": model.n_train_crops_,
                  "fit_seconds": round(model.fit_seconds_, 1), **(training or {})},
        metrics=metrics or {},
        files={"weights": WEIGHTS},
        extra={
            "method": model.method,
            "params": model.get_params(),
            "fitted": model._fitted_info(),
            "score": "maximum of the image's anomaly map; higher = more anomalous",
            "threshold": None if threshold is None else threshold.to_dict(),
            "threshold_meaning": None if threshold is None else threshold.describe(),
        },
    )
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        save_tensors(model._state(), tmp / WEIGHTS)
        save_card(tmp, card)
    return out


def load_model(model_dir: str | os.PathLike[str], *, device: str = "auto") -> tuple[AnomalyModel, ModelCard]:
    """A fitted model and its card from a directory written by :func:`save_model`."""
    card = load_card(model_dir, task=TASK)
    method = card.extra.get("method")
    if method not in METHODS:
        raise ModelError(model_dir, f"card names unknown anomaly method {method!r}")
    params = dict(card.extra.get("params", {}))
    params["device"] = device
    try:
        model = make_model(method, **params)
    except TypeError as exc:
        raise ModelError(model_dir, f"card parameters do not fit this fabsight version ({exc})") from None
    try:
        state = load_file(str(Path(model_dir) / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise ModelError(Path(model_dir) / WEIGHTS, f"unreadable weights ({exc})") from None
    try:
        model._restore(state, card.extra.get("fitted", {}))
    except KeyError as exc:
        raise ModelError(model_dir, f"weights or card lack {exc}: not written by this fabsight version") from None
    model.n_train_images_ = int(card.training.get("n_images", 0))
    model.n_train_crops_ = int(card.training.get("n_network_inputs", 0))
    model.fit_seconds_ = float(card.training.get("fit_seconds", 0.0))
    t = card.extra.get("threshold")
    model.threshold_ = None if t is None else Threshold.from_dict(t)
    return model, card
