"""Die classifiers in ONNX: the backbone's pooled embedding as a graph, the scikit-learn heads unchanged.

A die model is a frozen backbone (EfficientNet-Lite0, DINOv2, an adapted directory) whose
pooled layer outputs feed a probe / hybrid / hierarchical scikit-learn classifier. Only
the backbone needs PyTorch, so only it becomes a graph (``backbone.onnx``: normalised
B×3×H×W images in, the B×D embedding of the model's layers out). The classifier stays
``classifier.joblib`` with its temperature and review thresholds; GLCM + Zernike features
are numpy already. :class:`fabsight.die.onnx.OnnxBackbone` runs the graph with the
preprocessing in numpy (:mod:`fabsight.utils.preprocess`), so ``DieModel(..., runtime="onnx")``
predicts and evaluates without importing torch.

A fine-tuned model (``--method finetune``) has no frozen backbone: the network *is* the
classifier, and its ``classifier.joblib`` cannot be unpickled without torch. Its export is
one graph, ``network.onnx`` (normalised images in; ``logits`` and the pooled ``embedding``
out), and ``decision.npz`` holds the rest of the fitted decision in plain arrays
(temperature, embedding mean / std, class centroids, OOD threshold, min_confidence).
:class:`fabsight.die.onnx.OnnxFinetuneClassifier` runs them with the same post-processing
code as the PyTorch classifier. This module writes and checks those files (it needs PyTorch).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import softmax

from fabsight.artifacts import load_card
from fabsight.die.embeddings import load_item
from fabsight.die.model import TASK
from fabsight.die.onnx import (
    DECISION_FILE,
    DECISION_KEYS,
    INPUT_NAME,
    INT8_FILE,
    NETWORK_INT8_FILE,
    NETWORK_ONNX_FILE,
    NETWORK_OUTPUTS,
    ONNX_FILE,
    OUTPUT_NAME,
    OnnxBackbone,
    OnnxFinetuneClassifier,
)
from fabsight.errors import FabsightError, ModelError
from fabsight.utils.atomic import atomic_path

#: Largest |calibrated probability difference| between the ONNX and PyTorch pipelines that export accepts.
PROB_TOLERANCE = 1e-3
#: Images checked (and INT8-calibrated) on when the sample comes from the training folder.
MAX_SAMPLE = 96

def check_sample(model: Any, sample: Sequence[Any] | None, seed: int) -> tuple[list[Any], list[str] | None, str]:
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
    items, labels, described = check_sample(torch_model, sample, seed)
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
                             "fabsight.utils.preprocess reproduces it in numpy",
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
    items, labels, described = check_sample(torch_model, sample, seed)
    images = [load_item(it) for it in items]
    logits_t, emb_t = clf.logits_and_embedding(images)
    x = bb.preprocess(images).numpy()
    probs_t = softmax(logits_t / clf.temperature_, axis=1)
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
            logits, z = onnx_clf.logits_and_embedding(images)
            dec = onnx_clf.decide_outputs(logits, z)
            return softmax(logits / onnx_clf.temperature_, axis=1), np.asarray([d["label"] for d in dec]), dec, logits

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
                             "fabsight.utils.preprocess reproduces it in numpy",
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
