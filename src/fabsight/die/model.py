"""Train, save, load, evaluate and apply die classifiers (what the CLI and services call).

A die model directory holds ``classifier.joblib`` (a fitted :class:`DieClassifier`; for
``finetune`` a :class:`~fabsight.die.finetune.FinetuneClassifier` whose network weights sit
beside it in ``finetuned.safetensors``) and a ``card.json`` naming the backbone (registered
name or adapted directory, with its weights hash so a different backbone is refused), the
layers and hand-crafted features used, the preprocessing, the training data and
cross-validated metrics. ``fabsight export --onnx`` adds the graphs (and, for ``finetune``,
``decision.npz``) that :class:`DieModel` runs without PyTorch (:mod:`fabsight.deploy.die`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from fabsight.artifacts import ModelCard, load_card, save_card
from fabsight.die.classifier import DieClassifier, pool_level_reports
from fabsight.die.data import DEFAULT_AUGMENT, ImageFolder, expand_inputs, scan_folder
from fabsight.die.embeddings import Item, default_cache, extract
from fabsight.die.handcrafted import extract_handcrafted
from fabsight.die.metrics import bootstrap_interval, classification_metrics
from fabsight.errors import FabsightError, ModelError, NothingReadable
from fabsight.utils.atomic import atomic_dir

TASK = "die-classifier"
CLASSIFIER_FILE = "classifier.joblib"
METHODS = ("probe", "hybrid", "hierarchical", "finetune")
OK_NAMES = ("ok", "good", "none", "free", "no_defect", "nodefect", "pass")

if TYPE_CHECKING:  # torch loads only where a backbone is built: the ONNX runtime never builds one
    from fabsight.backbones import Backbone
    from fabsight.io import ReadLog


def features(backbone: Backbone, items: Sequence[Item], *, layers: Sequence[str], handcrafted: bool,
             cache: str | os.PathLike[str] | None, batch_size: int = 32,
             augmentation: str | None = None) -> np.ndarray:
    """Deep embedding of ``layers`` (⊕ GLCM + Zernike when ``handcrafted``) for each item."""
    deep = extract(backbone, items, batch_size, cache, layers=layers, augmentation=augmentation)
    if not handcrafted:
        return deep
    return np.concatenate([deep, extract_handcrafted(items, cache_dir=cache, augmentation=augmentation)], axis=1)


def load_groups(path: str | os.PathLike[str]) -> dict[str, list[str]]:
    """A group map ``{"group": ["class", ...]}`` from a JSON or YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise FabsightError(p, f"cannot read group map ({exc.strerror})") from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            raw = yaml.safe_load(text)
        else:
            raw = json.loads(text)
    except Exception as exc:  # yaml and json raise different error types
        raise FabsightError(p, f"not valid {p.suffix.lstrip('.').upper() or 'JSON'}: {exc}") from None
    if not isinstance(raw, dict) or not all(isinstance(v, list) and v for v in raw.values()):
        raise FabsightError(p, 'group map must be {"group": ["class", ...], ...}')
    return {str(k): [str(c) for c in v] for k, v in raw.items()}


def _ok_class(classes: Sequence[str]) -> str | None:
    return next((c for c in classes if c.lower() in OK_NAMES), None)


@dataclass
class TrainResult:
    out_dir: Path
    card: ModelCard


def train(
    data_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    backbone: str = "dinov2_vits14",
    weights: str | os.PathLike[str] | None = None,
    method: str = "probe",
    layers: Sequence[str] | None = None,
    augment: bool = False,
    handcrafted: bool | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    ok_class: str | None = None,
    input_size: int | None = None,
    C: float = 0.5,
    cv_folds: int = 5,
    device: str = "cpu",
    batch_size: int = 32,
    cache: str | os.PathLike[str] | None = None,
    epochs: int = 15,
    max_minutes: float | None = None,
    unlabeled: str | os.PathLike[str] | None = None,
    pseudo_threshold: float = 0.9,
    rounds: int = 1,
    max_unlabeled: int | None = None,
    pseudo_tta: bool = True,
    student_epochs: int | None = None,
    student_early_stop: bool = False,
    min_change: float | None = None,
    log: ReadLog | None = None,
    auto_search: dict[str, Any] | None = None,
) -> TrainResult:
    """Train a die classifier on ``ROOT/CLASS`` images and write the model directory atomically.

    ``method``: probe (deep features), hybrid (deep ⊕ GLCM ⊕ Zernike) or hierarchical
    (hybrid features, stacked ok → group → class probes) or finetune (the whole backbone
    trained end to end, see :mod:`fabsight.die.finetune`; ``epochs``, ``max_minutes``).
    ``handcrafted`` overrides the method's feature choice. ``cv_folds`` > 1 records
    cross-validated metrics in the card (augmented copies stay in the fold of their original).
    ``unlabeled`` (finetune only): a folder searched recursively for unlabeled images to
    self-train on (``pseudo_threshold``, ``rounds``, ``max_unlabeled``, ``pseudo_tta``, ``student_epochs``,
    ``student_early_stop``, ``min_change``); class folders in it are ignored. With a lenient
    ``log`` unreadable images (labelled or not) are recorded there and trained without.
    ``auto_search``: the record of :func:`fabsight.die.auto.search` that chose these settings,
    kept in the card as ``training.auto``.
    """
    from fabsight.backbones import create_backbone

    if method not in METHODS:
        raise FabsightError(None, f"--method must be one of {', '.join(METHODS)}, got {method!r}")
    if unlabeled is not None and method != "finetune":
        raise FabsightError(unlabeled, f"unlabeled images are only used by --method finetune (self-training), "
                            f"not by {method}")
    folder = scan_folder(data_dir, min_per_class=1, log=log)
    if len(folder.classes) < 2:
        raise FabsightError(data_dir, "needs at least two class folders to train a classifier")
    if method == "finetune":
        return _train_finetune(folder, out_dir, backbone=backbone, weights=weights, input_size=input_size,
                               device=device, batch_size=batch_size, epochs=epochs, max_minutes=max_minutes,
                               unlabeled=unlabeled, pseudo_threshold=pseudo_threshold, rounds=rounds,
                               max_unlabeled=max_unlabeled, pseudo_tta=pseudo_tta, student_epochs=student_epochs,
                               student_early_stop=student_early_stop, min_change=min_change, log=log)
    bb = create_backbone(backbone, device=device, weights=weights, input_size=input_size)
    use_layers = tuple(layers or bb.cfg.default_layers)
    bb.check_layers(use_layers)
    use_hand = method != "probe" if handcrafted is None else handcrafted
    cache = default_cache() if cache is None else cache
    ok = ok_class or (_ok_class(folder.classes) if method == "hierarchical" else None)
    if ok is not None and ok not in folder.classes:
        raise FabsightError(data_dir, f"--ok-class '{ok}' is not a class folder ({', '.join(folder.classes)})")

    variants: list[str | None] = [None, *(DEFAULT_AUGMENT if augment else ())]
    X_parts, y_parts, g_parts = [], [], []
    for aug in variants:
        X_parts.append(features(bb, folder.paths, layers=use_layers, handcrafted=use_hand, cache=cache,
                                batch_size=batch_size, augmentation=aug))
        y_parts.append(np.asarray(folder.classes)[folder.labels])
        g_parts.append(np.arange(len(folder)))
    X, y, g = np.concatenate(X_parts), np.concatenate(y_parts), np.concatenate(g_parts)

    clf = DieClassifier(method="hierarchical" if method == "hierarchical" else "probe", C=C, groups=groups,
                        ok_class=ok)
    metrics: dict[str, Any] = {}
    hierarchy = None
    if cv_folds > 1:
        metrics, hierarchy = _cross_validate(clf, X, y, g, folder, cv_folds)
        if auto_search is not None and "measured_on" in metrics:
            metrics["measured_on"] += " (the same folds chose the setting: slightly optimistic)"
    clf.fit(X, y)
    extra: dict[str, Any] = {"ood_threshold": clf.ood_threshold_, "min_confidence": clf.min_confidence}
    if method == "hierarchical":
        held_out = hierarchy or {"note": "no held-out folds (--cv 0 or a class too small), so no per-level "
                                         "figures: scores on the training images would mean nothing"}
        extra["hierarchy"] = {"groups": clf.estimator_.groups_, **held_out}
    card = ModelCard(
        task=TASK,
        classes=[str(c) for c in clf.classes_],
        input=_input_section(bb),
        backbone={"name": str(backbone), "weights": None if weights is None else str(Path(weights).resolve()),
                  "architecture": bb.cfg.architecture, "weights_source": bb.cfg.weights_source,
                  "weights_hash": bb.cfg.weights_hash, "license": bb.cfg.license, "layers": list(use_layers),
                  "input_size": list(bb.cfg.input_size)},
        training={"data": str(Path(data_dir).resolve()), "counts": folder.counts(), "n_images": len(folder),
                  "method": method, "handcrafted": use_hand, "augment": list(variants[1:]), "C": C,
                  "ok_class": ok, "feature_dim": int(X.shape[1]),
                  **({"auto": auto_search} if auto_search is not None else {})},
        metrics=metrics,
        files={"classifier": CLASSIFIER_FILE},
        extra=extra,
    )
    import joblib

    with atomic_dir(out_dir) as tmp:
        joblib.dump(clf, tmp / CLASSIFIER_FILE)
        save_card(tmp, card)
    return TrainResult(Path(out_dir), card)


def _train_finetune(folder: ImageFolder, out_dir: str | os.PathLike[str], *, backbone: str,
                    weights: str | os.PathLike[str] | None, input_size: int | None, device: str, batch_size: int,
                    epochs: int, max_minutes: float | None, unlabeled: str | os.PathLike[str] | None,
                    pseudo_threshold: float, rounds: int, max_unlabeled: int | None,
                    pseudo_tta: bool, student_epochs: int | None, student_early_stop: bool,
                    min_change: float | None, log: ReadLog | None) -> TrainResult:
    """Fine-tune end to end, self-training on ``unlabeled`` when given; the card's metrics are the
    validation split's (early stopping used it; it never receives pseudo-labels)."""
    from fabsight.die import finetune

    pool = expand_inputs([unlabeled], log) if unlabeled is not None else None  # class sub-folders' names unused
    if pool is not None and not pool:
        raise NothingReadable(unlabeled, "none of the unlabeled images could be read", log.errors if log else [])
    clf = finetune.FinetuneClassifier(
        backbone=str(backbone), weights=None if weights is None else str(Path(weights).resolve()),
        input_size=input_size, epochs=epochs, batch_size=batch_size, max_minutes=max_minutes, device=device,
        rounds=rounds, pseudo_threshold=pseudo_threshold, max_unlabeled=max_unlabeled, pseudo_tta=pseudo_tta,
        student_epochs=student_epochs, student_early_stop=student_early_stop, min_change=min_change)
    clf.fit(folder.paths, np.asarray(folder.classes)[folder.labels], unlabeled=pool)
    bb = clf.backbone_
    metrics = dict(clf.validation_)
    metrics["measured_on"] = (f"the {clf.validation_['n']}-image stratified validation split held out from training "
                              "(also used for early stopping and the temperature)")
    card = ModelCard(
        task=TASK,
        classes=[str(c) for c in clf.classes_],
        input=_input_section(bb),
        backbone={"name": str(backbone), "weights": clf.weights, "architecture": bb.cfg.architecture,
                  "weights_source": f"fine-tuned from {bb.cfg.weights_source}", "license": bb.cfg.license,
                  "layers": ["head"], "input_size": list(bb.cfg.input_size)},
        training={"data": str(Path(folder.root).resolve()), "counts": folder.counts(), "n_images": len(folder),
                  "method": "finetune", "handcrafted": False, "augment": ["flips", "rot90", "brightness", "contrast"],
                  "epochs_run": len(clf.history_), "best_epoch": clf.best_epoch_, "history": clf.history_,
                  "params": {k: v for k, v in clf.get_params().items() if k not in ("backbone", "weights")},
                  "self_training": None if pool is None else {"unlabeled": str(Path(unlabeled).resolve()),
                                                              **clf.self_training_}},
        metrics=metrics,
        files={"classifier": CLASSIFIER_FILE, "network": finetune.NETWORK_FILE},
        extra={"temperature": clf.temperature_, "ood_threshold": clf.ood_threshold_,
               "min_confidence": clf.min_confidence},
    )
    with atomic_dir(out_dir) as tmp:
        card.extra["network_sha256"] = finetune.save(clf, tmp, CLASSIFIER_FILE)
        save_card(tmp, card)
    return TrainResult(Path(out_dir), card)


def _input_section(bb: Backbone) -> dict[str, Any]:
    c = bb.cfg
    return {"size": list(c.input_size), "mean": list(c.mean), "std": list(c.std), "interpolation": c.interpolation,
            "channels": "RGB; grey images replicated to 3 channels", "scale": "pixel / 255 (16-bit: / 65535)",
            "resize": "whole image to size, antialiased, no crop"}


def _cross_validate(clf: DieClassifier, X: np.ndarray, y: np.ndarray, groups: np.ndarray, folder: ImageFolder,
                    folds: int) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Out-of-fold metrics of the originals, and for a hierarchy its per-level accuracies pooled over
    the held-out folds (each level scored on the held-out images that reach it)."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedGroupKFold

    n = len(folder)
    smallest = min(folder.counts().values())
    k = min(folds, smallest)
    if k < 2:
        return {"note": f"no cross-validation: a class has only {smallest} image(s)"}, None
    pred = np.empty(n, dtype=object)
    levels: list[dict[str, Any]] = []
    for train_idx, test_idx in StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=0).split(X, y, groups):
        orig = test_idx[test_idx < n]  # score originals only, not their augmented copies
        model = clone(clf).fit(X[train_idx], y[train_idx])
        pred[orig] = model.predict(X[orig])
        if clf.method == "hierarchical":
            levels.append(model.estimator_.level_report(X[orig], y[orig]))
    result = classification_metrics(y[:n], pred.astype(str), folder.classes)
    result["measured_on"] = f"{k}-fold stratified cross-validation on the {n} training images"
    hierarchy = pool_level_reports(levels) if levels else None
    if hierarchy is not None:
        hierarchy["measured_on"] = f"held-out images of the {k} cross-validation folds"
    return result, hierarchy


class DieModel:
    """A loaded die model: its card, classifier and backbone (checked to be the one trained with).

    ``runtime``: ``torch``, or ``onnx`` / ``onnx-int8`` for the graph written by ``fabsight
    export`` (:mod:`fabsight.deploy.die`), which needs no PyTorch: the backbone graph under
    the probe / hybrid / hierarchical classifier, or for a fine-tuned model the whole network
    with its decision state (``classifier`` is then an ``OnnxFinetuneClassifier``, ``backbone`` None).
    """

    def __init__(self, model_dir: str | os.PathLike[str], *, device: str = "cpu", runtime: str = "torch",
                 n_threads: int = 2) -> None:
        import joblib

        from fabsight.runtimes import check_runtime

        check_runtime(runtime)
        self.dir = Path(model_dir)
        self.card = load_card(self.dir, task=TASK)
        self.finetuned = self.card.training.get("method") == "finetune"
        self.classifier: Any  # DieClassifier, FinetuneClassifier or its ONNX twin (same predict / decide)
        self.backbone: Any
        if self.finetuned:  # the network itself was trained: weights and head come from the model dir
            self.layers, self.handcrafted = ("head",), False
            if runtime != "torch":  # classifier.joblib needs torch to unpickle: the export wrote decision.npz
                from fabsight.die.onnx import onnx_finetune

                self.classifier = onnx_finetune(self.dir, self.card, runtime, n_threads)
                self.backbone = None
                return
            from fabsight.die import finetune

            self.classifier = finetune.load(self.dir, self.card.files, self.card.extra.get("network_sha256"),
                                            device=device)
            self.backbone = self.classifier.backbone_
            return
        self.classifier = joblib.load(self.dir / self.card.files["classifier"])
        info = self.card.backbone or {}
        self.layers = tuple(info["layers"])
        self.handcrafted = bool(self.card.training.get("handcrafted"))
        if runtime != "torch":
            from fabsight.die.onnx import onnx_backbone

            self.backbone = onnx_backbone(self.dir, self.card, runtime, n_threads)
            return
        from fabsight.backbones import create_backbone

        self.backbone = create_backbone(info["name"], device=device, weights=info.get("weights"),
                                        input_size=tuple(info["input_size"]))
        if self.backbone.cfg.weights_hash != info.get("weights_hash"):
            raise ModelError(self.dir, f"backbone '{info['name']}' now has different weights than the model was "
                             "trained with; retrain or restore the original weights")

    @property
    def classes(self) -> list[str]:
        return list(self.card.classes)

    def features(self, items: Sequence[Item], cache: str | os.PathLike[str] | None = None) -> np.ndarray:
        if self.finetuned:
            return self.classifier.embed(items)
        return features(self.backbone, items, layers=self.layers, handcrafted=self.handcrafted, cache=cache)

    def predict(self, items: Sequence[Item], cache: str | os.PathLike[str] | None = None,
                top_k: int = 3, tta: bool = False) -> list[dict[str, Any]]:
        """Per image: label, calibrated confidence, top-k, needs_review (+ reasons, ood_score).

        ``tta`` (fine-tuned models): logits averaged over the image's flips and quarter turns,
        8 forward passes per image (:mod:`fabsight.die.views`)."""
        if self.finetuned:
            return self.classifier.decide(items, top_k=top_k, tta=tta)
        if tta:
            raise FabsightError(self.dir, "test-time augmentation needs a model trained with --method finetune "
                                          "(a probe sees cached features, not the image)")
        return self.classifier.decide(self.features(items, cache), top_k=top_k)

    def evaluate(self, data_dir: str | os.PathLike[str], cache: str | os.PathLike[str] | None = None,
                 tta: bool = False, log: ReadLog | None = None) -> dict[str, Any]:
        """Metrics on a labelled ``ROOT/CLASS`` folder whose classes the model knows (with a
        lenient ``log``, on its readable images: each other one is recorded there)."""
        folder = scan_folder(data_dir, classes=self.classes, log=log)
        decisions = self.predict(folder.paths, cache, tta=tta)
        truth = np.asarray(self.classes)[folder.labels]
        labels = [d["label"] for d in decisions]
        result = classification_metrics(truth, labels, self.classes)
        result["interval"] = bootstrap_interval(truth, labels)
        result["needs_review_rate"] = float(np.mean([d["needs_review"] for d in decisions]))
        result["data"] = str(Path(data_dir).resolve())
        result["tta"] = tta
        return result
