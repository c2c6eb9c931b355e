"""Die models in ONNX Runtime: the exported backbone or fine-tuned network, no PyTorch.

A die model is a frozen backbone whose pooled layer outputs feed a probe / hybrid /
hierarchical scikit-learn classifier; only the backbone needs PyTorch, so only it becomes a
graph (``backbone.onnx``). :class:`OnnxBackbone` offers the few ``Backbone`` methods the die
pipeline calls, with the preprocessing in numpy (:mod:`fabsight.utils.preprocess`), so
``DieModel(..., runtime="onnx")`` predicts and evaluates without importing torch.

A fine-tuned model (``--method finetune``) is one graph, ``network.onnx`` (``logits`` and the
pooled ``embedding``), plus ``decision.npz`` with the fitted decision in plain arrays;
:class:`OnnxFinetuneClassifier` runs them with the same post-processing code as the PyTorch
classifier (:class:`fabsight.die.classifier.NetworkDecisionsMixin`). The export itself, which
needs PyTorch, is :mod:`fabsight.deploy.die`.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.artifacts import ModelCard
from fabsight.die.classifier import NetworkDecisionsMixin
from fabsight.die.embeddings import Item, load_item
from fabsight.die.views import average_views
from fabsight.errors import FabsightError, ModelError
from fabsight.runtimes import onnx_section, session
from fabsight.utils.preprocess import preprocess
from fabsight.utils.progress import track

ONNX_FILE = "backbone.onnx"
INT8_FILE = "backbone.int8.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "embedding"
#: Fine-tuned models: the whole network as one graph, and the fitted decision state beside it.
NETWORK_ONNX_FILE = "network.onnx"
NETWORK_INT8_FILE = "network.int8.onnx"
DECISION_FILE = "decision.npz"
NETWORK_OUTPUTS = ("logits", "embedding")
#: Arrays of ``decision.npz``: the :class:`NetworkDecisionsMixin` state, named as its attributes.
DECISION_KEYS = ("temperature_", "embed_mean_", "embed_std_", "centroids_", "ood_threshold_", "min_confidence")
#: Images per ONNX Runtime call of a fine-tuned network (as ``FinetuneClassifier`` batches them).
BATCH = 64


@dataclass(frozen=True)
class _Cfg:
    """The part of ``BackboneConfig`` the die pipeline reads (name, default layers)."""

    name: str
    default_layers: tuple[str, ...]


class OnnxBackbone:
    """The exported backbone graph behind the ``Backbone`` methods die embedding extraction uses."""

    def __init__(self, graph: Path, card: ModelCard, info: dict[str, Any], n_threads: int) -> None:
        bb = card.backbone or {}
        self.layers = tuple(bb["layers"])
        self.cfg = _Cfg(str(bb["name"]), self.layers)
        self.input = card.input
        self.widths = {str(k): int(v) for k, v in info["layer_widths"].items()}
        self.info = info
        self.session = session(graph, n_threads)
        with open(graph, "rb") as fh:
            self._graph_hash = hashlib.sha256(fh.read()).hexdigest()[:16]
        self._weights_hash = bb.get("weights_hash")

    def __repr__(self) -> str:
        return f"OnnxBackbone({self.cfg.name!r}, layers={self.layers})"

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        i = self.input
        return preprocess(images, size=i["size"], mean=i["mean"], std=i["std"], interpolation=i["interpolation"])

    def check_layers(self, layers: Sequence[str]) -> None:
        unknown = [n for n in layers if n not in self.widths]
        if unknown or not layers:
            raise FabsightError(self.cfg.name, f"the exported graph gives layers {', '.join(self.layers)} only")

    def embed_dim_for(self, layers: Sequence[str] | None = None) -> int:
        layers = tuple(layers or self.layers)
        self.check_layers(layers)
        return sum(self.widths[n] for n in layers)

    def embed(self, x: np.ndarray, layers: Sequence[str] | None = None) -> np.ndarray:
        """B×D embedding of the exported layers (all of them: the graph computes them together)."""
        if tuple(layers or self.layers) != self.layers:
            raise FabsightError(self.cfg.name, f"the exported graph gives exactly layers {', '.join(self.layers)}")
        (emb,) = self.session.run([self.info["output"]], {self.info["input"]: x})
        return emb

    def fingerprint(self) -> str:
        """Cache key: ONNX embeddings are cached apart from PyTorch's (they differ in the last digits)."""
        return f"{self.cfg.name}|{self._weights_hash}|{self.input['size']}|onnx:{self._graph_hash}"


def onnx_backbone(model_dir: str | os.PathLike[str], card: ModelCard, runtime: str, n_threads: int = 2) -> OnnxBackbone:
    """The exported backbone of a die model directory for ``runtime`` ``onnx`` or ``onnx-int8``."""
    graph, info = onnx_section(model_dir, card, runtime == "onnx-int8")
    return OnnxBackbone(graph, card, info, n_threads)


class OnnxFinetuneClassifier(NetworkDecisionsMixin):
    """A fine-tuned die classifier whose network runs in ONNX Runtime (inference only).

    Preprocessing is the numpy twin of ``Backbone.preprocess``; probabilities, top-k and
    ``needs_review`` come from the shared :class:`~fabsight.die.classifier.NetworkDecisionsMixin`.

    Attributes
    ----------
    classes_, temperature_, embed_mean_, embed_std_, centroids_, ood_threshold_, min_confidence :
        the fitted decision, from the card's classes and ``decision.npz``.
    session_ : the ``onnxruntime.InferenceSession``.  onnx_ : the card's ``onnx`` section.
    """

    def __init__(self, graph: Path, decision: Path, card: ModelCard, info: dict[str, Any], n_threads: int) -> None:
        self.input = card.input
        self.onnx_ = info
        self.classes_ = np.asarray(card.classes)
        try:
            with np.load(decision, allow_pickle=False) as z:
                state = {k: z[k] for k in DECISION_KEYS}
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise ModelError(decision, f"unreadable fine-tuned decision state ({exc}); export the model again") \
                from None
        self.temperature_ = float(state["temperature_"])
        self.embed_mean_, self.embed_std_ = state["embed_mean_"], state["embed_std_"]
        self.centroids_ = state["centroids_"]
        self.ood_threshold_ = float(state["ood_threshold_"])
        self.min_confidence = float(state["min_confidence"])
        if self.centroids_.shape[0] != len(self.classes_):
            raise ModelError(decision, f"holds {self.centroids_.shape[0]} class centroids but the card names "
                                       f"{len(self.classes_)} classes; export the model again")
        self.session_ = session(graph, n_threads)

    def preprocess(self, images: Sequence[np.ndarray]) -> np.ndarray:
        i = self.input
        return preprocess(images, size=i["size"], mean=i["mean"], std=i["std"], interpolation=i["interpolation"])

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Logits and pooled embedding of a preprocessed batch."""
        io = self.onnx_
        logits, embedding = self.session_.run(io["outputs"], {io["input"]: x})
        return logits, embedding

    def logits_and_embedding(self, X: Sequence[Item], tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if len(X) == 0:
            raise FabsightError(None, "no images to classify")
        batches = [X[i:i + BATCH] for i in range(0, len(X), BATCH)]
        forward = (lambda x: average_views(self.run, x)) if tta else self.run
        parts = [forward(self.preprocess([load_item(it) for it in b])) for b in track(batches, "images")]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def fit(self, *args: Any, **kwargs: Any) -> OnnxFinetuneClassifier:
        raise FabsightError(None, "an ONNX model is for inference only: fine-tune in PyTorch, then export again")


def onnx_finetune(model_dir: str | os.PathLike[str], card: ModelCard, runtime: str,
                  n_threads: int = 2) -> OnnxFinetuneClassifier:
    """The exported network and decision state of a fine-tuned die model for ``onnx`` / ``onnx-int8``."""
    graph, info = onnx_section(model_dir, card, runtime == "onnx-int8")
    if "decision" not in card.files:
        raise ModelError(model_dir, f"has no {DECISION_FILE}: run `fabsight export {model_dir} --onnx` again")
    return OnnxFinetuneClassifier(graph, Path(model_dir) / card.files["decision"], card, info, n_threads)
