"""Run an exported wafer model in ONNX Runtime with the same API as the PyTorch model.

(Die and anomaly models: :mod:`fabsight.deploy.die`, :mod:`fabsight.deploy.anomaly`; the
session, runtime names and card lookup here are shared by all three.)

``load_predictor(model_dir, runtime="onnx")`` returns an object with ``predict``,
``predict_proba``, ``predict_details`` and ``embed``, so every ``predict`` / ``eval``
command takes ``--runtime onnx`` and a deployment (a tool PC, a batch job) needs
ONNX Runtime, numpy and scipy but not PyTorch. Nothing in this module imports torch:
the tests run it in a subprocess that refuses ``import torch``.

What the graph does not contain is read from the card, as the PyTorch loader reads it:
the preprocessing (the same numpy code, so it is applied exactly once), the calibration
temperature, the review / label / OOD thresholds and the OOD statistics. They stay
visible and editable in the model directory instead of being frozen into the graph.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.artifacts import load_card
from fabsight.errors import FabsightError, ModelError
from fabsight.runtimes import check_runtime, onnx_section, session
from fabsight.wafer.classifier import TASK as WAFER_TASK
from fabsight.wafer.classifier import WEIGHTS_FILE, WaferClassifier, card_params, restore_fitted
from fabsight.wafer.pretrained import resolve_model


class OnnxWaferClassifier(WaferClassifier):
    """A fitted :class:`~fabsight.wafer.WaferClassifier` whose network runs in ONNX Runtime.

    Everything except the forward pass (preprocessing, calibration, review routing, OOD,
    label decoding) is inherited, so the two runtimes cannot drift apart. Inference only:
    to retrain, train the PyTorch model and export it again.

    Attributes (besides the inherited fitted state)
    ----------
    session_ : the ``onnxruntime.InferenceSession``.
    onnx_ : the card's ``onnx`` section (opset, input/output names, export check).
    """

    #: The session's threads are fixed when it is made: a worker beside it would
    #: oversubscribe the cores (see :meth:`WaferClassifier._outputs`).
    OVERLAP = False

    def forward(self, x: np.ndarray, n_threads: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        io = self.onnx_
        logits, embedding = self.session_.run(io["outputs"], {io["input"]: x})
        return logits, embedding

    def fit(self, *args: Any, **kwargs: Any) -> OnnxWaferClassifier:
        raise FabsightError(None, "an ONNX model is for inference only: train the PyTorch model, then export it")

    def save(self, *args: Any, **kwargs: Any) -> Path:
        raise FabsightError(None, "an ONNX model is for inference only: the model directory already holds it")


def load_onnx_wafer(
    model_dir: str | os.PathLike[str], *, int8: bool = False, n_threads: int = 2
) -> OnnxWaferClassifier:
    """The ONNX Runtime twin of :func:`fabsight.wafer.load_model` (no PyTorch needed)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    card = load_card(model_dir, task=WAFER_TASK)
    graph, info = onnx_section(model_dir, card, int8)
    weights = Path(model_dir) / card.files.get("weights", WEIGHTS_FILE)
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelError(weights, f"unreadable weights ({exc})") from None
    if "ood.means" not in tensors or "ood.precision" not in tensors:
        raise ModelError(weights, "weights file lacks the OOD statistics (ood.means, ood.precision)")
    clf = OnnxWaferClassifier(**card_params(model_dir, card))
    clf.n_threads = n_threads
    restore_fitted(clf, model_dir, card, (tensors["ood.means"], tensors["ood.precision"]))
    clf.onnx_ = info
    clf.session_ = session(graph, n_threads)
    return clf


def load_predictor(model_dir: str | os.PathLike[str], runtime: str = "torch", *, n_threads: int = 2) -> Any:
    """A fitted model from ``model_dir`` running on ``runtime`` (one of :data:`RUNTIMES`).

    All runtimes return objects with the same ``predict`` / ``predict_proba`` /
    ``predict_details`` / ``embed`` methods and the same fitted attributes. ``model_dir`` may be
    the name ``pretrained`` (the shipped WM-811K model, :mod:`fabsight.wafer.pretrained`).
    """
    check_runtime(runtime)
    model_dir = resolve_model(model_dir)
    card = load_card(model_dir)
    if card.task != WAFER_TASK:
        raise ModelError(model_dir, f"is a '{card.task}' model, not a wafer-pattern model (die models load with "
                                    "fabsight.die.model.DieModel(dir, runtime=...), anomaly models with "
                                    "fabsight.deploy.load_anomaly_model)")
    if runtime == "torch":
        from fabsight.wafer import load_model

        clf = load_model(model_dir)
        clf.n_threads = n_threads
        return clf
    return load_onnx_wafer(model_dir, int8=runtime == "onnx-int8", n_threads=n_threads)
