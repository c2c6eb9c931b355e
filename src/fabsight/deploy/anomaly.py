"""Anomaly models in ONNX: the network as a graph; memory bank, Gaussians and thresholds outside it.

What becomes a graph is the part that needs PyTorch: for PatchCore and PaDiM the backbone
with the locally aware patch-feature step (normalised crops in, B×D×h×w features out);
for the recon UNet the whole network (crops in [0, 1] in, reconstruction and defect
probability out); for the teacher–student model both networks and their disagreement
(normalised crops in, B×h×w patch scores out). The nearest-neighbour search (faiss, on the memory bank read from
``model.safetensors``), the per-position Mahalanobis distance, upsampling, smoothing,
tiling, stitching and the threshold stay in numpy and in the card, where a user can read
and retune them: anomalib 2.x folded post-processing and thresholds into its exported
graph and users could not find them any more (issues #2620, #2933, #3033).

The runtime classes subclass :class:`fabsight.anomaly.base.AnomalyModel`, so tiling,
batching, stitching, image scores, ``predict`` and threshold calibration are the same
code for both runtimes; only ``_map_batch`` differs, and the export checks it against
the PyTorch model on sample images before anything is written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.anomaly.base import AnomalyModel, gaussian_smooth, match_channels
from fabsight.anomaly.thresholds import Threshold
from fabsight.artifacts import ModelCard, load_card
from fabsight.errors import FabsightError, ModelError
from fabsight.runtimes import check_runtime, onnx_section, session
from fabsight.utils.preprocess import preprocess, resize

TASK = "anomaly"  # fabsight.anomaly.persist.TASK, which cannot be imported here: that module loads torch
ONNX_FILE = "network.onnx"
INT8_FILE = "network.int8.onnx"
INPUT_NAME = "crops"
#: Largest |score difference| between ONNX Runtime (fp32) and PyTorch that export accepts,
#: relative to the largest score magnitude on the sample (scores have no fixed scale).
SCORE_TOLERANCE = 1e-3
#: Images checked (and INT8-calibrated) on when the sample comes from the training root.
MAX_SAMPLE = 48


class _OnnxAnomaly(AnomalyModel):
    """An exported anomaly model: graph in ONNX Runtime, the rest inherited from ``AnomalyModel``.

    Inference only (``fit`` refuses). Fitted state is read from the model directory by
    :func:`load_onnx_anomaly`: ``session_`` and ``onnx_`` (the card's section) for the
    graph, ``smoothing_sigma_``, the method's learned arrays and ``threshold_``.
    """

    def _fit_crops(self, crops: list[np.ndarray], n_images: int) -> None:
        raise FabsightError(None, "an ONNX model is for inference only: fit the PyTorch model, then export it")

    def _state(self) -> dict[str, Any]:
        raise FabsightError(None, "an ONNX model is for inference only: the model directory already holds it")

    def _restore(self, state: dict[str, Any], info: dict[str, Any]) -> None:
        raise FabsightError(None, "an ONNX model is built by load_onnx_anomaly, not restored")

    def _run(self, x: np.ndarray) -> list[np.ndarray]:
        return self.session_.run(self.onnx_["outputs"], {self.onnx_["input"]: x})

    def _upsample(self, patch: np.ndarray) -> np.ndarray:
        """B×h×w patch scores → B×S×S smoothed maps (bilinear, half-pixel centres, as the torch models)."""
        s = int(self.input_size)
        up = np.stack([resize(p, (s, s), "bilinear") for p in patch])
        return gaussian_smooth(up, float(self.smoothing_sigma_))

    def _features(self, crops: list[np.ndarray]) -> np.ndarray:
        i = self.onnx_["preprocessing_args"]
        x = preprocess(crops, size=i["size"], mean=i["mean"], std=i["std"], interpolation=i["interpolation"])
        (feats,) = self._run(x)
        return feats


class OnnxPatchCore(_OnnxAnomaly):
    """PatchCore with the feature graph in ONNX Runtime and the memory bank in faiss."""

    method = "patchcore"

    def _index(self) -> Any:
        import faiss

        if getattr(self, "_index_", None) is None:
            self._index_ = faiss.IndexFlatL2(self.memory_bank_.shape[1])
            self._index_.add(self.memory_bank_)
        return self._index_

    def _map_batch(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        feats = self._features(crops)
        b, d, h, w = feats.shape
        q = np.ascontiguousarray(feats.transpose(0, 2, 3, 1).reshape(-1, d))
        dist2, nn = self._index().search(q, 1)
        patch = np.sqrt(np.maximum(dist2[:, 0], 0.0)).reshape(b, h, w).astype(np.float32)
        maps = self._upsample(patch)
        if not self.reweight_:
            return maps, None
        return maps, self._reweight_factors(q.reshape(b, h * w, d), patch.reshape(b, -1), nn[:, 0].reshape(b, -1))

    def _reweight_factors(self, q: np.ndarray, patch: np.ndarray, nn: np.ndarray) -> np.ndarray:
        """PatchCore eq. 7 for each input's most anomalous patch, as ``PatchCore._reweight_factors``."""
        bank = self.memory_bank_
        k = max(1, min(int(self.reweight_neighbors_), bank.shape[0]))
        worst = patch.argmax(axis=1)
        rows = np.arange(len(q))
        m_test = q[rows, worst]
        _, neigh = self._index().search(np.ascontiguousarray(bank[nn[rows, worst]]), k)
        d = np.linalg.norm(bank[neigh] - m_test[:, None, :], axis=2).astype(np.float64)
        e = np.exp(d - d.max(axis=1, keepdims=True))
        return (1.0 - e[:, 0] / e.sum(axis=1)).astype(np.float32)


class OnnxPaDiM(_OnnxAnomaly):
    """PaDiM with the feature graph in ONNX Runtime and the per-position Gaussians in numpy."""

    method = "padim"

    def _map_batch(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        feats = self._features(crops)
        b, _, h, w = feats.shape
        diff = feats[:, self.channels_].reshape(b, len(self.channels_), h * w).transpose(0, 2, 1) - self.mean_
        m2 = np.einsum("bpi,pij,bpj->bp", diff, self.inv_covariance_, diff)
        return self._upsample(np.sqrt(np.maximum(m2, 0.0)).reshape(b, h, w).astype(np.float32)), None


class OnnxStudent(_OnnxAnomaly):
    """Teacher–student with both networks and their disagreement in one graph (patch scores out)."""

    method = "student"

    def _map_batch(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        return self._upsample(self._features(crops).astype(np.float32)), None


class OnnxRecon(_OnnxAnomaly):
    """The recon UNet in ONNX Runtime (the graph ends in the defect probability)."""

    method = "recon"

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        return match_channels(image, self.channels_)

    def _map_batch(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        _, prob = self._run(_recon_input(crops))
        return gaussian_smooth(prob.astype(np.float32), float(self.smoothing_sigma_)), None


def _recon_input(crops: list[np.ndarray]) -> np.ndarray:
    """uint8 crops → B×C×S×S float32 in [0, 1] (what ``ReconDetector`` feeds its UNet)."""
    a = np.stack(crops).astype(np.float32) / 255.0
    a = a[..., None] if a.ndim == 3 else a
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


_CLASSES: dict[str, type[_OnnxAnomaly]] = {c.method: c for c in (OnnxPatchCore, OnnxPaDiM, OnnxRecon, OnnxStudent)}


def load_onnx_anomaly(model_dir: str | os.PathLike[str], *, int8: bool = False, n_threads: int = 2) -> AnomalyModel:
    """The ONNX Runtime twin of :func:`fabsight.anomaly.load_model` (no PyTorch needed)."""
    card = load_card(model_dir, task=TASK)
    graph, info = onnx_section(model_dir, card, int8)
    return _assemble(model_dir, card, graph, info, n_threads)


def _assemble(model_dir: str | os.PathLike[str], card: ModelCard, graph: Path, info: dict[str, Any],
              n_threads: int) -> _OnnxAnomaly:
    """The runtime model of ``card`` + the weights file, running ``graph``."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    method = card.extra.get("method")
    if method not in _CLASSES:
        raise ModelError(model_dir, f"card names unknown anomaly method {method!r}")
    params = card.extra.get("params", {})
    keys = ("input_size", "tile", "tile_overlap", "max_aspect", "batch_size", "seed")
    base = {k: params[k] for k in keys if k in params}
    model = _CLASSES[method](device="cpu", **base)
    weights = Path(model_dir) / card.files.get("weights", "model.safetensors")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise ModelError(weights, f"unreadable weights ({exc})") from None
    fitted = card.extra.get("fitted", {})
    try:
        if method == "patchcore":
            model.memory_bank_ = np.ascontiguousarray(state["memory_bank"], dtype=np.float32)
            model.reweight_ = bool(params.get("reweight", False))
            model.reweight_neighbors_ = int(params.get("reweight_neighbors", 9))
        elif method == "padim":
            model.channels_ = state["channels"].astype(np.int64)
            model.mean_ = state["mean"].astype(np.float32)
            model.inv_covariance_ = state["inv_covariance"].astype(np.float32)
        elif method == "recon":
            model.channels_ = int(fitted["channels"])
    except KeyError as exc:
        raise ModelError(model_dir, f"weights or card lack {exc}: not written by this fabsight version") from None
    model.smoothing_sigma_ = float(params.get("smoothing_sigma", 4.0))
    model.n_train_images_ = int(card.training.get("n_images", 0))
    model.n_train_crops_ = int(card.training.get("n_network_inputs", 0))
    model.fit_seconds_ = float(card.training.get("fit_seconds", 0.0))
    t = card.extra.get("threshold")
    model.threshold_ = None if t is None else Threshold.from_dict(t)
    model.onnx_ = info
    model.session_ = session(graph, n_threads)
    return model


def load_anomaly_model(
    model_dir: str | os.PathLike[str], runtime: str = "torch", *, device: str = "auto", n_threads: int = 2
) -> AnomalyModel:
    """A fitted anomaly model on ``runtime``: ``torch`` (:func:`fabsight.anomaly.load_model`), ``onnx``
    or ``onnx-int8``; all have the same ``iter_maps`` / ``score_samples`` / ``predict`` API."""
    check_runtime(runtime)
    if runtime == "torch":
        from fabsight.anomaly.persist import load_model

        return load_model(model_dir, device=device)[0]
    return load_onnx_anomaly(model_dir, int8=runtime == "onnx-int8", n_threads=n_threads)


# export ---------------------------------------------------------------------------------
def _sample(card: ModelCard, sample: list[np.ndarray] | None, seed: int) -> tuple[list[np.ndarray], np.ndarray | None,
                                                                                      str]:
    """Images to check on, whether each is anomalous when known, and how they were chosen."""
    from fabsight.anomaly.datasets import load_split
    from fabsight.die.data import read_image

    if sample is not None:
        if len(sample) == 0:
            raise FabsightError(None, "the export sample holds no images")
        return list(sample), None, f"{len(sample)} images given by the user"
    root = card.training.get("root")
    for split in ("test", "train"):
        if root and (Path(root) / split).is_dir():
            records = load_split(root, split)
            pick = np.linspace(0, len(records) - 1, min(MAX_SAMPLE, len(records))).round().astype(int)
            chosen = [records[i] for i in pick]
            labels = np.array([r.is_anomalous for r in chosen])
            return ([read_image(r.path) for r in chosen], labels if labels.any() and not labels.all() else None,
                    f"{len(chosen)} images of {Path(root) / split}")
    rng = np.random.default_rng(seed)
    s = int(card.extra["params"]["input_size"])
    images = [(rng.random((s, s)) * 255).astype(np.uint8) for _ in range(8)]
    return images, None, f"8 random-noise images (seed {seed}): the training root {root} is not here"


def _calibration_images(card: ModelCard, sample: list[np.ndarray] | None) -> tuple[list[np.ndarray], str]:
    """Real images the INT8 activation ranges are calibrated on: the user's sample, else good training images.

    Not the check sample (test images, some anomalous: calibrating on the data the INT8
    change is then measured on would flatter it) and never noise (its ranges clip real
    activations); without real images an INT8 export is refused.
    """
    from fabsight.anomaly.datasets import load_split
    from fabsight.die.data import read_image

    if sample is not None:
        return list(sample), f"{len(sample)} images given by the user"
    root = card.training.get("root")
    if root and (Path(root) / "train").is_dir():
        records = load_split(root, "train")
        pick = np.linspace(0, len(records) - 1, min(MAX_SAMPLE, len(records))).round().astype(int)
        return [read_image(records[i].path) for i in pick], f"{len(pick)} good training images of {root}/train"
    raise FabsightError(root, "INT8 calibration needs real images and the training root is not here: "
                              "pass --sample with good images of this surface")


def _scores(model: AnomalyModel, images: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
    pairs = list(model.iter_maps(images))
    return np.array([s for s, _ in pairs]), [m for _, m in pairs]


def _graph(model: Any) -> tuple[Any, list[str]]:
    """The torch module to export and its output names."""
    import torch

    if model.method == "recon":

        class Recon(torch.nn.Module):
            """Crops in [0, 1] in; reconstruction and defect probability (sigmoid of the mask logits) out."""

            def __init__(self) -> None:
                super().__init__()
                self.net = model.net_

            def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                recon, logits = self.net(crops)
                return recon, torch.sigmoid(logits)[:, 0]

        return Recon().eval(), ["reconstruction", "defect_probability"]

    if model.method == "student":

        class Disagreement(torch.nn.Module):
            """Normalised crops in; teacher–student mean squared difference per patch out."""

            def __init__(self) -> None:
                super().__init__()
                self.teacher = model.backbone_.model
                self.student = model.student_

            def forward(self, crops: torch.Tensor) -> torch.Tensor:
                return model.patch_disagreement(crops)

        return Disagreement().eval(), ["patch_scores"]

    class Features(torch.nn.Module):
        """Normalised crops in; locally aware patch features of the model's layers out."""

        def __init__(self) -> None:
            super().__init__()
            self.net = model.backbone_.model

        def forward(self, crops: torch.Tensor) -> torch.Tensor:
            return model._locally_aware(crops)

    return Features().eval(), ["features"]


def _network_input(model: Any, images: list[np.ndarray]) -> np.ndarray:
    """The preprocessed crops of ``images`` the graph sees (also INT8 calibration data)."""
    tiler = model._tiler()
    crops = [c for img in images for c in tiler.split(model._prepare(img))[0]]
    if model.method == "recon":
        return _recon_input(crops)
    return model.backbone_.preprocess(crops).cpu().numpy()


def _postprocessing(method: str) -> str:
    """What runs after the graph, in numpy, for ``method``."""
    if method == "recon":
        return "Gaussian smoothing of the defect probability"
    if method == "student":
        return "bilinear upsampling of the patch scores to the input size, Gaussian smoothing"
    return ("patch distances to the memory bank (faiss) or Mahalanobis distances to the per-position Gaussians "
            "(model.safetensors), bilinear upsampling to the input size, Gaussian smoothing")


def _auroc(labels: np.ndarray | None, scores: np.ndarray) -> float | None:
    from fabsight.anomaly.metrics import image_auroc

    return None if labels is None else float(image_auroc(labels, scores))


def export_anomaly(
    model_dir: Path, *, int8: bool, opset: int, sample: list[np.ndarray] | None, n_threads: int, seed: int
) -> dict[str, Any]:
    """Export an anomaly model's network, check scores and maps against PyTorch, update the card."""
    import onnxruntime as ort
    import torch

    from fabsight.anomaly.persist import load_model
    from fabsight.deploy.export import checked_opset, export_module, install_graphs
    from fabsight.deploy.quantize import FEATURE_RECIPE, quantize, speed_vs_fp32

    model, card = load_model(model_dir, device="cpu")
    if int8 and model.method == "student":
        # Measured (tests/test_deploy_models.py): the score is a squared difference of two
        # quantised feature maps, and INT8 moved defect scores by up to 60 %.
        raise FabsightError(model_dir, "INT8 is not offered for teacher–student models (quantisation error is "
                                       "squared in their score): export without --int8 and deploy the fp32 graph")
    images, labels, described = _sample(card, sample, seed)
    calib, calib_described = _calibration_images(card, sample) if int8 else ([], "")  # fails before any work
    x = _network_input(model, images)
    module, outputs = _graph(model)
    scores_t, maps_t = _scores(model, images)
    threshold = None if model.threshold_ is None else model.threshold_.value
    scale = max(float(np.abs(scores_t).max()), abs(threshold or 0.0), 1e-12)
    info: dict[str, Any] = {"input": INPUT_NAME, "outputs": outputs, "input_shape": ["batch", *x.shape[1:]],
                            "dynamic_axes": {n: {"0": "batch"} for n in (INPUT_NAME, *outputs)}}
    if model.method != "recon":
        cfg = model.backbone_.cfg
        info["preprocessing_args"] = {"size": list(x.shape[-2:]), "mean": list(cfg.mean), "std": list(cfg.std),
                                      "interpolation": cfg.interpolation}
    with tempfile.TemporaryDirectory(prefix=".export-", dir=model_dir) as tmp:
        work = Path(tmp)
        fp32 = work / ONNX_FILE
        try:
            export_module(module, torch.from_numpy(x[:2]), fp32, opset, input_name=INPUT_NAME, output_names=outputs)
        finally:
            module.eval()
        info["opset"] = checked_opset(model_dir, fp32, opset)

        def run(graph: Path) -> tuple[np.ndarray, list[np.ndarray]]:
            return _scores(_assemble(model_dir, card, graph, info, n_threads), images)

        scores_o, maps_o = run(fp32)
        dscore = float(np.abs(scores_o - scores_t).max())
        if dscore > SCORE_TOLERANCE * scale:
            raise ModelError(model_dir, f"ONNX Runtime differs from PyTorch by {dscore:.3g} in score "
                                        f"(> {SCORE_TOLERANCE} × {scale:.3g})")
        agree = None if threshold is None else float(np.mean((scores_o >= threshold) == (scores_t >= threshold)))
        info["check"] = {
            "sample": described, "n_images": len(images), "n_network_inputs": len(x),
            "max_abs_score_diff": dscore, "score_scale": scale, "relative_tolerance": SCORE_TOLERANCE,
            "max_abs_map_diff": float(max(np.abs(a - b).max() for a, b in zip(maps_o, maps_t, strict=True))),
            "decision_agreement": agree, "image_auroc_torch": _auroc(labels, scores_t),
        }
        info["int8"] = None
        if int8:
            q = work / INT8_FILE
            how = quantize(fp32, q, _network_input(model, calib), work, INPUT_NAME, FEATURE_RECIPE)
            scores_q, _ = run(q)
            info["int8"] = {
                "file": INT8_FILE, **how, "calibration": calib_described,
                "speed_vs_fp32": speed_vs_fp32(fp32, q, x, INPUT_NAME, n_threads),
                "max_abs_score_diff": float(np.abs(scores_q - scores_t).max()),
                "max_relative_score_diff": float(np.abs(scores_q - scores_t).max() / scale),
                "decision_agreement": None if threshold is None else
                float(np.mean((scores_q >= threshold) == (scores_t >= threshold))),
                "image_auroc_int8": _auroc(labels, scores_q), "image_auroc_fp32": info["check"]["image_auroc_torch"],
            }
        info.update({
            "preprocessing": "NOT in the graph: tiling/resize to card.input, then " + (
                "pixel / 255, B×C×S×S" if model.method == "recon" else
                "RGB, pixel / 255, normalise with onnx.preprocessing_args (fabsight.utils.preprocess)"),
            "postprocessing": "NOT in the graph: " + _postprocessing(model.method)
            + "; stitching, image score = map maximum; extra.threshold decides (editable, never in the graph)",
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}",
            "onnxruntime": ort.__version__,
        })
        install_graphs(model_dir, card, info, fp32, work / INT8_FILE if int8 else None, ONNX_FILE, INT8_FILE)
    return {"model": str(model_dir), "task": card.task, "files": dict(card.files), "onnx": info}
