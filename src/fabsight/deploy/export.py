"""Export a model directory to ONNX, checked against PyTorch before anything is written.

The graph holds the network only: its input is the already preprocessed batch and its
outputs are raw logits and the embedding. Preprocessing, the calibration temperature,
thresholds and OOD statistics stay in ``card.json`` and the weights file, where a user
can read and retune them (anomalib's exports froze thresholds into the graph and users
could not find them; some applied a transform twice because the export already held
it). The card's ``onnx`` section says exactly this, so nobody has to guess.

The graph is exported with the torch.export-based exporter (the TorchScript one is
deprecated), with a dynamic batch axis. Before ``model.onnx`` is moved into the model
directory, ONNX Runtime must reproduce PyTorch's calibrated probabilities on a sample
batch within :data:`FP32_TOLERANCE`; otherwise the export fails and nothing changes.
``int8=True`` adds a quantized graph (:mod:`fabsight.deploy.quantize`: the recipe measured
best for each model type, activations calibrated on real sample inputs) and records the
recipe, how much its predictions move and its speed relative to fp32 on this CPU.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fabsight import calibration as cal
from fabsight.artifacts import ModelCard, load_card, save_card
from fabsight.deploy.quantize import WAFER_RECIPE, quantize, speed_vs_fp32
from fabsight.errors import FabsightError, ModelError
from fabsight.types import WaferMap
from fabsight.utils.atomic import atomic_path
from fabsight.wafer.classifier import TASK as WAFER_TASK
from fabsight.wafer.classifier import WaferClassifier, label_tuple
from fabsight.wafer.preprocess import maps_to_array

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
#: The torch.export-based exporter writes opset 18 natively; older opsets need a version
#: conversion that fails on this network's reductions, so they are refused up front.
DEFAULT_OPSET = 18
MIN_OPSET = 18
#: Largest |probability difference| between ONNX Runtime (fp32) and PyTorch that export accepts.
FP32_TOLERANCE = 1e-4
INPUT_NAME = "maps"
OUTPUT_NAMES = ("logits", "embedding")
#: Sample maps drawn from the synthetic generator when the user gives none.
DEFAULT_SAMPLE = 256


def _sample_maps(clf: WaferClassifier, sample: Sequence[WaferMap] | None, seed: int) -> tuple[list[WaferMap], str]:
    """Maps to check (and calibrate INT8) on: the user's, or generated maps of the model's classes."""
    if sample is not None:
        if len(sample) == 0:
            raise FabsightError(None, "the export sample holds no wafer maps")
        return list(sample), f"{len(sample)} maps given by the user"
    from fabsight.synth import MIXED_COMBINATIONS, generate_dataset
    from fabsight.types import WM811K_CLASSES
    from fabsight.wafer.classifier import SYNTH_SHAPES

    known = set(clf.classes_)
    if clf.multilabel:
        classes = [c for c in MIXED_COMBINATIONS if set(label_tuple(c)) - {"none"} <= known] or list(MIXED_COMBINATIONS)
    else:
        classes = [c for c in WM811K_CLASSES if c in known] or list(WM811K_CLASSES)
    per_class = -(-DEFAULT_SAMPLE // len(classes))
    maps = generate_dataset(per_class, shapes=SYNTH_SHAPES, classes=classes, mixed=clf.multilabel, seed=seed)
    return maps, f"{len(maps)} synthetic maps ({len(classes)} classes, seed {seed})"


def _accuracy(clf: WaferClassifier, maps: Sequence[WaferMap], probs: np.ndarray) -> float | None:
    """Accuracy (single-label) or exact match (multi-label) on the sample maps whose labels the model knows."""
    known = set(clf.classes_) | {"none"}
    truth = [label_tuple(m.labels) if clf.multilabel else tuple(m.labels) for m in maps]
    keep = [i for i, t in enumerate(truth) if t and set(t) <= known and (clf.multilabel or len(t) == 1)]
    if not keep:
        return None
    pred = clf.decode(probs[keep])
    right = [(p if isinstance(p, tuple) else (p,)) == truth[i] for p, i in zip(pred, keep, strict=True)]
    return float(np.mean(right))


def export_module(
    module: Any, example: Any, path: Path, opset: int, *, input_name: str, output_names: Sequence[str]
) -> None:
    """Write ``module`` (one batched input, ``output_names`` outputs) as an ONNX graph with a dynamic batch axis.

    Shared by every model type: the torch.export-based exporter, one self-contained file
    (moved into place atomically by the caller), the exporter's notices silenced.
    """
    import torch

    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's own notices; failures still raise
        try:
            torch.onnx.export(
                module,
                (example,),
                str(path),
                input_names=[input_name],
                output_names=list(output_names),
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
        finally:
            module.eval()  # the exporter may leave submodules in training mode


def checked_opset(model_dir: Path, path: Path, opset: int) -> int:
    """The opset the exporter wrote; a ModelError when it is not the one asked for."""
    import onnx

    got = max(o.version for o in onnx.load(str(path)).opset_import if o.domain in ("", "ai.onnx"))
    if got != opset:
        raise ModelError(model_dir, f"the exporter wrote opset {got}, not the requested {opset}")
    return got


def _export_graph(clf: WaferClassifier, path: Path, opset: int, example: np.ndarray) -> None:
    import torch

    class Graph(torch.nn.Module):
        """The network as exported: preprocessed maps in, raw logits and embedding out."""

        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = self.net.embed(maps)
            return self.net.classify(z), z

    graph = Graph(clf.net_).eval()
    try:
        export_module(graph, torch.from_numpy(example[:2]), path, opset, input_name=INPUT_NAME,
                      output_names=OUTPUT_NAMES)
    finally:
        clf.net_.eval()


def _run(sess: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits, emb = sess.run(list(OUTPUT_NAMES), {INPUT_NAME: x})
    return logits, emb


def _export_wafer(
    model_dir: Path, *, int8: bool, opset: int, sample: Sequence[WaferMap] | None, n_threads: int, seed: int
) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    from fabsight.runtimes import session
    from fabsight.wafer import load_model

    clf = load_model(model_dir)
    clf.n_threads = n_threads
    maps, described = _sample_maps(clf, sample, seed)
    x = maps_to_array(maps, clf.input_size_)
    logits_t, emb_t = clf.forward(x)
    probs_t = cal.probabilities(logits_t, clf.temperature_, clf.multilabel)

    with tempfile.TemporaryDirectory(prefix=".export-", dir=model_dir) as tmp:
        work = Path(tmp)
        fp32 = work / ONNX_FILE
        _export_graph(clf, fp32, opset, x)
        got = checked_opset(model_dir, fp32, opset)
        logits_o, emb_o = _run(session(fp32, n_threads), x)
        probs_o = cal.probabilities(logits_o, clf.temperature_, clf.multilabel)
        dprob = float(np.abs(probs_o - probs_t).max())
        same = clf.decode(probs_o) == clf.decode(probs_t)
        if dprob > FP32_TOLERANCE or not same:
            raise ModelError(
                model_dir, f"ONNX Runtime differs from PyTorch by {dprob:.2e} in probability (> {FP32_TOLERANCE})"
            )
        check: dict[str, Any] = {
            "sample": described,
            "n_maps": len(maps),
            "max_abs_prob_diff": dprob,
            "max_abs_embedding_diff": float(np.abs(emb_o - emb_t).max()),
            "tolerance": FP32_TOLERANCE,
            "predictions_equal": True,
            "accuracy_torch": _accuracy(clf, maps, probs_t),
        }
        int8_info = None
        if int8:
            q = work / INT8_FILE
            how = quantize(fp32, q, x, work, INPUT_NAME, WAFER_RECIPE)
            probs_q = cal.probabilities(_run(session(q, n_threads), x)[0], clf.temperature_, clf.multilabel)
            agree = [a == b for a, b in zip(clf.decode(probs_q), clf.decode(probs_t), strict=True)]
            int8_info = {
                "file": INT8_FILE,
                **how,
                "calibration": described,
                "speed_vs_fp32": speed_vs_fp32(fp32, q, x, INPUT_NAME, n_threads, batch=256),
                "max_abs_prob_diff": float(np.abs(probs_q - probs_t).max()),
                "prediction_agreement": float(np.mean(agree)),
                "accuracy_int8": _accuracy(clf, maps, probs_q),
                "accuracy_fp32": check["accuracy_torch"],
            }
        card = load_card(model_dir, task=WAFER_TASK)
        info = {
            "opset": got,
            "input": INPUT_NAME,
            "input_shape": ["batch", 3, clf.input_size_, clf.input_size_],
            "outputs": list(OUTPUT_NAMES),
            "dynamic_axes": {INPUT_NAME: {"0": "batch"}, **{o: {"0": "batch"} for o in OUTPUT_NAMES}},
            "preprocessing": "NOT in the graph: feed card.input.preprocessing output "
            "(fabsight.wafer.to_model_input), float32, applied once",
            "postprocessing": "NOT in the graph: probabilities = softmax(logits / extra.temperature) "
            "(sigmoid per label when extra.multilabel); extra.review_threshold, extra.label_thresholds, "
            "extra.ood (threshold; means and precision in the weights file) apply to them and to the embedding",
            "check": check,
            "int8": int8_info,
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
            "onnxruntime": ort.__version__,
        }
        install_graphs(model_dir, card, info, fp32, work / INT8_FILE if int8 else None, ONNX_FILE, INT8_FILE)
    return {"model": str(model_dir), "task": card.task, "files": dict(card.files), "onnx": card.extra["onnx"]}


def install_graphs(model_dir: Path, card: ModelCard, info: dict[str, Any], fp32: Path, int8: Path | None,
                   onnx_file: str, int8_file: str) -> None:
    """Move checked graphs from the work folder into the model directory and record them in the card.

    Called only after the ONNX-vs-PyTorch check passed, so a failed export leaves the model
    directory as it was; without a new INT8 graph a stale one from an earlier export is removed
    (it would no longer match the fp32 graph the card describes).
    """
    with atomic_path(model_dir / onnx_file) as dst:
        os.replace(fp32, dst)
    card.files["onnx"] = onnx_file
    if int8 is not None:
        with atomic_path(model_dir / int8_file) as dst:
            os.replace(int8, dst)
        card.files["onnx_int8"] = int8_file
    else:
        card.files.pop("onnx_int8", None)
    card.extra["onnx"] = info
    save_card(model_dir, card)
    if int8 is None:
        (model_dir / int8_file).unlink(missing_ok=True)


def export_onnx(
    model_dir: str | os.PathLike[str],
    *,
    int8: bool = False,
    opset: int = DEFAULT_OPSET,
    sample: Sequence[Any] | None = None,
    n_threads: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Export the network of a wafer, die or anomaly model directory to ONNX and record it in its card.

    Wafer models write ``model.onnx`` (``model.int8.onnx``), die models ``backbone.onnx``,
    anomaly models ``network.onnx``; each export is checked against PyTorch on ``sample``
    (wafer maps, or die/anomaly images as paths or arrays; default: generated maps or
    images from the model's training data) before anything is written. Returns the
    card's new ``onnx`` section with the files written.
    """
    if opset < MIN_OPSET:
        raise FabsightError(None, f"--opset must be ≥ {MIN_OPSET} (the torch.export-based exporter), got {opset}")
    d = Path(model_dir)
    card = load_card(d)
    kw: dict[str, Any] = {"int8": int8, "opset": opset, "n_threads": n_threads, "seed": seed}
    if card.task == WAFER_TASK:
        return _export_wafer(d, sample=sample, **kw)
    from fabsight.deploy import anomaly, die

    if card.task == die.TASK:
        return die.export_die(d, sample=sample, **kw)
    if card.task == anomaly.TASK:
        from fabsight.die.data import read_image

        images = None if sample is None else [read_image(s) if isinstance(s, str | os.PathLike) else s for s in sample]
        return anomaly.export_anomaly(d, sample=images, **kw)
    raise ModelError(d, f"export to ONNX is implemented for wafer-pattern, die and anomaly models, not '{card.task}'")
