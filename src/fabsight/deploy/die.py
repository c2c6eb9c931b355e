"""Die classifiers in ONNX: the backbone's pooled embedding as a graph, the scikit-learn heads unchanged.

A die model is a frozen backbone (EfficientNet-Lite0, DINOv2, an adapted directory) whose
pooled layer outputs feed a probe / hybrid / hierarchical scikit-learn classifier. Only
the backbone needs PyTorch, so only it becomes a graph (``backbone.onnx``: normalised
B×3×H×W images in, the B×D embedding of the model's layers out). The classifier stays
``classifier.joblib`` with its temperature and review thresholds; GLCM + Zernike features
are numpy already. :class:`OnnxBackbone` offers the few ``Backbone`` methods the die
pipeline calls, with the preprocessing in numpy (:mod:`fabsight.deploy.preprocess`), so
``DieModel(..., runtime="onnx")`` predicts and evaluates without importing torch.

A fine-tuned model (``--method finetune``) has no frozen backbone: the network *is* the
classifier, and its ``classifier.joblib`` cannot be unpickled without torch. Its export is
one graph, ``network.onnx`` (normalised images in; ``logits`` and the pooled ``embedding``
out), and ``decision.npz`` holds the rest of the fitted decision in plain arrays
(temperature, embedding mean / std, class centroids, OOD threshold, min_confidence).
:class:`OnnxFinetuneClassifier` runs them with the same post-processing code as the PyTorch
classifier (:class:`fabsight.die.classifier.NetworkDecisionsMixin`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.artifacts import ModelCard, load_card
from fabsight.deploy.preprocess import preprocess
from fabsight.deploy.runtime import onnx_section, session
from fabsight.die.classifier import NetworkDecisionsMixin, _softmax
from fabsight.die.embeddings import Item, load_item
from fabsight.die.model import TASK
from fabsight.die.views import average_views
from fabsight.errors import FabsightError, ModelError
from fabsight.utils.atomic import atomic_path
from fabsight.utils.progress import track

ONNX_FILE = "backbone.onnx"
INT8_FILE = "backbone.int8.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "embedding"
#: Largest |calibrated probability difference| between the ONNX and PyTorch pipelines that export accepts.
PROB_TOLERANCE = 1e-3
#: Images checked (and INT8-calibrated) on when the sample comes from the training folder.
MAX_SAMPLE = 96
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

    def _logits_and_embedding(self, X: Sequence[Item], tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
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


def _sample(model: Any, sample: Sequence[Any] | None, seed: int) -> tuple[list[Any], list[str] | None, str]:
    """Images to check on, their labels when known, and how they were chosen."""
    from fabsight.die.data import scan_folder

    if sample is not None:
        if len(sample) == 0:
            raise FabsightError(None, "the export sample holds no images")
        return list(sample), None, f"{len(sample)} images given by the user"
    data = model.card.training.get("data")
    if data and Path(data).is_dir():
        try:
            folder = scan_folder(data, classes=model.classes)
        except FabsightError:
            folder = None
        if folder is not None:
            pick = np.linspace(0, len(folder) - 1, min(MAX_SAMPLE, len(folder))).round().astype(int)
            labels = [model.classes[i] for i in folder.labels[pick]]
            return [folder.paths[i] for i in pick], labels, f"{len(pick)} training images of {data}"
    rng = np.random.default_rng(seed)
    size = tuple(model.card.input["size"])
    images = [(rng.random(size) * 255).astype(np.uint8) for _ in range(16)]
    return images, None, f"16 random-noise images (seed {seed}): the training folder {data} is not here"


def _accuracy(pred: np.ndarray, labels: list[str] | None) -> float | None:
    return None if labels is None else float(np.mean(pred == np.asarray(labels)))


def _check_interpolation(model_dir: Path, bb: Any) -> None:
    if bb.cfg.interpolation not in ("bilinear", "bicubic"):
        raise ModelError(model_dir, f"backbone interpolation '{bb.cfg.interpolation}' has no numpy twin for ONNX")


def _int8_entry(file: str, how: dict[str, Any], calibration: str, speed: float,
                probs: tuple[np.ndarray, np.ndarray], preds: tuple[np.ndarray, np.ndarray], labels: Any,
                accuracy_fp32: float | None) -> dict[str, Any]:
    """The card's ``onnx.int8`` record: recipe, calibration, speed and the change against fp32
    (``probs`` / ``preds`` are (INT8, PyTorch) pairs on the export sample)."""
    (probs_q, probs_t), (pred_q, pred_t) = probs, preds
    return {"file": file, **how, "calibration": calibration, "speed_vs_fp32": speed,
            "max_abs_prob_diff": float(np.abs(probs_q - probs_t).max()),
            "prediction_agreement": float(np.mean(pred_q == pred_t)), "accuracy_int8": _accuracy(pred_q, labels),
            "accuracy_fp32": accuracy_fp32}


def export_die(
    model_dir: Path, *, int8: bool, opset: int, sample: Sequence[Any] | None, n_threads: int, seed: int
) -> dict[str, Any]:
    """Export the backbone of a die model, check the whole pipeline against PyTorch, update the card."""
    import onnxruntime as ort
    import torch

    from fabsight.deploy.export import checked_opset, export_module, install_graphs
    from fabsight.deploy.quantize import FEATURE_RECIPE, quantize, speed_vs_fp32
    from fabsight.die.model import DieModel

    torch_model = DieModel(model_dir, device="cpu")
    if torch_model.finetuned:
        return _export_finetune(model_dir, torch_model, int8=int8, opset=opset, sample=sample, n_threads=n_threads,
                                seed=seed)
    bb = torch_model.backbone
    _check_interpolation(model_dir, bb)
    items, labels, described = _sample(torch_model, sample, seed)
    if int8 and sample is None and labels is None:
        raise FabsightError(torch_model.card.training.get("data"), "INT8 calibration needs real images and the "
                            "training folder is not here: pass --sample with images of this kind")
    images = [load_item(it) for it in items]
    layers = torch_model.layers
    x = bb.preprocess(images).numpy()

    class Graph(torch.nn.Module):
        """Normalised images in, the die model's pooled embedding out."""

        def __init__(self) -> None:
            super().__init__()
            self.net = bb.model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return bb.embed(images, layers)

    clf = torch_model.classifier
    feats_t = torch_model.features(images)
    probs_t, pred_t = clf.predict_proba(feats_t), clf.predict(feats_t)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=model_dir) as tmp:
        work = Path(tmp)
        fp32 = work / ONNX_FILE
        export_module(Graph().eval(), torch.from_numpy(x[:2]), fp32, opset, input_name=INPUT_NAME,
                      output_names=[OUTPUT_NAME])
        got = checked_opset(model_dir, fp32, opset)
        info: dict[str, Any] = {
            "opset": got, "input": INPUT_NAME, "output": OUTPUT_NAME, "outputs": [OUTPUT_NAME],
            "input_shape": ["batch", 3, *bb.cfg.input_size],
            "layer_widths": {n: bb.embed_dim_for([n]) for n in layers},
            "dynamic_axes": {INPUT_NAME: {"0": "batch"}, OUTPUT_NAME: {"0": "batch"}},
        }
        card = load_card(model_dir, task=TASK)

        def run(graph: Path) -> tuple[np.ndarray, np.ndarray]:
            """Probabilities and labels of the whole die pipeline with ``graph`` as its backbone."""
            torch_model.backbone = OnnxBackbone(graph, card, info, n_threads)
            try:
                feats = torch_model.features(images)
            finally:
                torch_model.backbone = bb
            return clf.predict_proba(feats), clf.predict(feats)

        probs_o, pred_o = run(fp32)
        dprob = float(np.abs(probs_o - probs_t).max())
        if dprob > PROB_TOLERANCE:
            raise ModelError(model_dir, f"ONNX Runtime differs from PyTorch by {dprob:.2e} in probability "
                                        f"(> {PROB_TOLERANCE})")
        emb_t = bb.embed(bb.preprocess(images[:8]), layers).numpy()
        emb_o = OnnxBackbone(fp32, card, info, n_threads).embed(x[:8])
        info["check"] = {
            "sample": described, "n_images": len(images), "max_abs_prob_diff": dprob,
            "max_abs_embedding_diff": float(np.abs(emb_o - emb_t).max()), "tolerance": PROB_TOLERANCE,
            "prediction_agreement": float(np.mean(pred_o == pred_t)), "accuracy_torch": _accuracy(pred_t, labels),
        }
        info["int8"] = None
        if int8:
            q = work / INT8_FILE
            how = quantize(fp32, q, x, work, INPUT_NAME, FEATURE_RECIPE)
            probs_q, pred_q = run(q)
            info["int8"] = _int8_entry(INT8_FILE, how, described, speed_vs_fp32(fp32, q, x, INPUT_NAME, n_threads),
                                       (probs_q, probs_t), (pred_q, pred_t), labels, info["check"]["accuracy_torch"])
        info.update({
            "preprocessing": "NOT in the graph: card.input (RGB, /255, antialiased resize to size, mean/std); "
                             "fabsight.deploy.preprocess reproduces it in numpy",
            "postprocessing": "NOT in the graph: ⊕ GLCM + Zernike when training.handcrafted, then classifier.joblib "
                              "(scikit-learn, with its temperature and the review thresholds in extra)",
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
            "onnxruntime": ort.__version__,
        })
        install_graphs(model_dir, card, info, fp32, work / INT8_FILE if int8 else None, ONNX_FILE, INT8_FILE)
    return {"model": str(model_dir), "task": card.task, "files": dict(card.files), "onnx": info}


def _export_finetune(model_dir: Path, torch_model: Any, *, int8: bool, opset: int, sample: Sequence[Any] | None,
                     n_threads: int, seed: int) -> dict[str, Any]:
    """Export a fine-tuned die model: the network as one graph, its decision state as ``decision.npz``.

    The whole pipeline (numpy preprocessing, graph, shared post-processing) is checked
    against ``FinetuneClassifier`` on the sample before anything enters the model directory.
    """
    import onnxruntime as ort
    import torch

    from fabsight.deploy.export import checked_opset, export_module, install_graphs
    from fabsight.deploy.quantize import FEATURE_RECIPE, quantize, speed_vs_fp32

    clf = torch_model.classifier
    bb = clf.backbone_
    _check_interpolation(model_dir, bb)
    items, labels, described = _sample(torch_model, sample, seed)
    images = [load_item(it) for it in items]
    logits_t, emb_t = clf._logits_and_embedding(images)
    x = bb.preprocess(images).numpy()
    probs_t = _softmax(logits_t / clf.temperature_)
    dec_t = clf.decide_outputs(logits_t, emb_t)
    pred_t = np.asarray([d["label"] for d in dec_t])

    class Graph(torch.nn.Module):
        """Normalised images in; the linear head's logits and the pooled embedding out."""

        def __init__(self) -> None:
            super().__init__()
            self.net = clf.network_

        def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.net(images)

    with tempfile.TemporaryDirectory(prefix=".export-", dir=model_dir) as tmp:
        work = Path(tmp)
        fp32 = work / NETWORK_ONNX_FILE
        export_module(Graph().eval(), torch.from_numpy(x[:2]), fp32, opset, input_name=INPUT_NAME,
                      output_names=NETWORK_OUTPUTS)
        with open(work / DECISION_FILE, "wb") as fh:
            np.savez(fh, **{k: np.asarray(getattr(clf, k)) for k in DECISION_KEYS})
        card = load_card(model_dir, task=TASK)
        info: dict[str, Any] = {
            "opset": checked_opset(model_dir, fp32, opset), "input": INPUT_NAME, "output": NETWORK_OUTPUTS[0],
            "outputs": list(NETWORK_OUTPUTS), "input_shape": ["batch", 3, *bb.cfg.input_size],
            "embedding_dim": int(emb_t.shape[1]),
            "dynamic_axes": {n: {"0": "batch"} for n in (INPUT_NAME, *NETWORK_OUTPUTS)},
        }

        def run(graph: Path) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]], np.ndarray]:
            """Probabilities, labels, decisions, logits of the torch-free pipeline (its own preprocessing)."""
            onnx_clf = OnnxFinetuneClassifier(graph, work / DECISION_FILE, card, info, n_threads)
            logits, z = onnx_clf._logits_and_embedding(images)
            dec = onnx_clf.decide_outputs(logits, z)
            return _softmax(logits / onnx_clf.temperature_), np.asarray([d["label"] for d in dec]), dec, logits

        probs_o, pred_o, dec_o, logits_o = run(fp32)
        dprob = float(np.abs(probs_o - probs_t).max())
        if dprob > PROB_TOLERANCE:
            raise ModelError(model_dir, f"ONNX Runtime differs from PyTorch by {dprob:.2e} in probability "
                                        f"(> {PROB_TOLERANCE})")
        same_input = OnnxFinetuneClassifier(fp32, work / DECISION_FILE, card, info, n_threads).run(x)
        info["check"] = {
            "sample": described, "n_images": len(images), "max_abs_prob_diff": dprob,
            "max_abs_logit_diff": float(np.abs(logits_o - logits_t).max()),
            "max_abs_logit_diff_same_input": float(np.abs(same_input[0] - logits_t).max()),
            "max_abs_embedding_diff_same_input": float(np.abs(same_input[1] - emb_t).max()),
            "tolerance": PROB_TOLERANCE,
            "prediction_agreement": float(np.mean(pred_o == pred_t)),
            "review_agreement": float(np.mean([a["needs_review"] == b["needs_review"]
                                               for a, b in zip(dec_o, dec_t, strict=True)])),
            "accuracy_torch": _accuracy(pred_t, labels),
        }
        info["int8"] = None
        if int8:
            q = work / NETWORK_INT8_FILE
            how = quantize(fp32, q, x, work, INPUT_NAME, FEATURE_RECIPE)
            probs_q, pred_q, _, logits_q = run(q)
            info["int8"] = _int8_entry(NETWORK_INT8_FILE, how, described,
                                       speed_vs_fp32(fp32, q, x, INPUT_NAME, n_threads), (probs_q, probs_t),
                                       (pred_q, pred_t), labels, info["check"]["accuracy_torch"])
            info["int8"]["max_abs_logit_diff"] = float(np.abs(logits_q - logits_t).max())
        info.update({
            "preprocessing": "NOT in the graph: card.input (RGB, /255, antialiased resize to size, mean/std); "
                             "fabsight.deploy.preprocess reproduces it in numpy",
            "postprocessing": f"NOT in the graph: {DECISION_FILE} holds {', '.join(DECISION_KEYS)}; probabilities = "
                              "softmax(logits / temperature_), needs_review from min_confidence and the embedding's "
                              "nearest-centroid distance (fabsight.die.classifier.NetworkDecisionsMixin)",
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
            "onnxruntime": ort.__version__,
        })
        with atomic_path(model_dir / DECISION_FILE) as dst:
            os.replace(work / DECISION_FILE, dst)
        card.files["decision"] = DECISION_FILE
        install_graphs(model_dir, card, info, fp32, work / NETWORK_INT8_FILE if int8 else None, NETWORK_ONNX_FILE,
                       NETWORK_INT8_FILE)
    return {"model": str(model_dir), "task": card.task, "files": dict(card.files), "onnx": info}
