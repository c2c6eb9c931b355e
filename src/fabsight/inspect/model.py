"""The golden-template inspector: register, find candidates, classify, box and count.

:class:`TemplateInspector` is a scikit-learn style estimator whose samples are image
pairs: ``fit(X, y)`` takes ``X`` = a sequence of ``(test, template)`` grey images and ``y``
= the ground-truth :class:`~fabsight.inspect.dataset.Box` lists, and learns

* a gradient-boosted classifier from candidate features (:mod:`.detect`) to the six
  DeepPCB types plus ``background`` (candidates that match no annotated defect: residual
  misregistration, scanner noise), so the classifier also removes false alarms;
* per-type box models: annotators draw loose, roughly fixed-size boxes around a defect,
  while the detector measures its exact pixels; a least-squares line per type maps the
  measured width/height to the annotated one, so boxes are comparable to the ground truth;
* the operating threshold on the confidence that maximises the F-score of out-of-fold
  predictions on the training pairs (so it is not tuned on data the classifier memorised).
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from fabsight.inspect.dataset import DEFECT_TYPES, Box
from fabsight.inspect.detect import FEATURE_NAMES, Candidate, DetectionParams, find_candidates
from fabsight.inspect.evaluate import Scored, evaluate, iou
from fabsight.inspect.register import Alignment, align, warp_template

BACKGROUND = "background"
UNCLASSIFIED = "defect"
TASK = "golden-template-inspection"


@dataclass
class Detection:
    """One found defect: box in test-image pixels (x2/y2 exclusive), type and confidence."""

    box: tuple[float, float, float, float]
    type: str
    confidence: float
    polarity: str
    area: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "box": [round(float(v), 1) for v in self.box],
            "type": self.type,
            "confidence": round(self.confidence, 4),
            "polarity": self.polarity,
            "area": self.area,
        }

    def scored(self) -> Scored:
        return Scored(self.box, self.type, self.confidence)


@dataclass
class InspectionResult:
    """Everything found on one pair; ``counts`` covers every type the model knows (zeros too)."""

    detections: list[Detection]
    counts: dict[str, int]
    alignment: Alignment
    shape: tuple[int, int]
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "defects": [d.to_dict() for d in self.detections],
            "counts": self.counts,
            "total": len(self.detections),
            "alignment": self.alignment.to_dict(),
            "image_size": [self.shape[1], self.shape[0]],
            "seconds": round(self.seconds, 4),
            **self.extra,
        }


def strength_confidence(c: Candidate) -> float:
    """Confidence without a classifier: grey-level contrast times a saturating area term.

    A faint or tiny difference (a few pixels of binarisation noise) scores low, a solid
    blob of a few dozen pixels scores near its contrast.
    """
    return float(c.strength * (1.0 - math.exp(-c.core_area / 20.0)))


def nms(detections: list[Detection], iou_threshold: float) -> list[Detection]:
    """Per-type non-maximum suppression: fragments of one defect give one detection."""
    kept: list[Detection] = []
    for d in sorted(detections, key=lambda d: -d.confidence):
        if all(k.type != d.type or iou(k.box, d.box) <= iou_threshold for k in kept):
            kept.append(d)
    return kept


def _clip_box(cx: float, cy: float, w: float, h: float, shape: tuple[int, int]) -> tuple[float, float, float, float]:
    H, W = shape
    return (max(0.0, cx - w / 2), max(0.0, cy - h / 2), min(float(W), cx + w / 2), min(float(H), cy + h / 2))


def label_candidates(candidates: Sequence[Candidate], truths: Sequence[Box]) -> tuple[list[str], list[int]]:
    """Training label of each candidate, and which truth box it was matched to (-1: none).

    A candidate belongs to the annotated defect whose box contains its centre (the
    nearest-centred one if several do); others are ``background``.
    """
    labels, owners = [], []
    for c in candidates:
        cx, cy = (c.box[0] + c.box[2]) / 2, (c.box[1] + c.box[3]) / 2
        best, best_d = -1, float("inf")
        for j, t in enumerate(truths):
            if t.x1 <= cx <= t.x2 and t.y1 <= cy <= t.y2:
                d = math.hypot(cx - (t.x1 + t.x2) / 2, cy - (t.y1 + t.y2) / 2)
                if d < best_d:
                    best, best_d = j, d
        labels.append(truths[best].type if best >= 0 else BACKGROUND)
        owners.append(best)
    return labels, owners


#: What :meth:`TemplateInspector.extract` returns per pair: candidates, image shape, and
#: the candidates of the pair's nuisance copy (empty without augmentation).
Extracted = tuple[list[Candidate], tuple[int, int], list[Candidate]]


def nuisance_copy(test: np.ndarray, rng: np.random.Generator, amplitude: float = 2.0) -> np.ndarray:
    """``test`` under a smooth random warp (up to ``amplitude`` px) and a ±1 px line-width change.

    This is the scanner's nuisance, not a defect: line-scan speed drift bends the image a
    little and exposure/threshold differences thicken or thin every line. Annotated boxes
    stay valid because nothing moves by more than ``amplitude`` pixels.
    """
    h, w = test.shape
    coarse = rng.uniform(-amplitude, amplitude, size=(3, 3, 2)).astype(np.float32)
    field = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    px, py = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    warped = cv2.remap(test, px + field[..., 0], py + field[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    change = rng.integers(0, 3)  # 0 keep, 1 thicker copper (dark grows), 2 thinner
    if change == 1:
        warped = cv2.erode(warped, cross)
    elif change == 2:
        warped = cv2.dilate(warped, cross)
    return warped


class TemplateInspector(BaseEstimator):
    """Golden-template defect detector and classifier (see the module docstring).

    Parameters
    ----------
    threshold, tolerance, min_area, merge_distance, context
        Candidate detection (:class:`~fabsight.inspect.detect.DetectionParams`).
    motion
        Registration model: ``translation``, ``euclidean`` or ``affine`` (scanned boards
        also differ slightly in scale, so ``affine`` is the default).
    max_iter, learning_rate, max_leaf_nodes
        The gradient-boosted classifier.
    nms_iou
        Same-type detections overlapping more than this are one defect.
    augment
        Also learn from a *nuisance copy* of every training pair (:func:`nuisance_copy`):
        the same board slightly warped and with its lines one pixel thicker or thinner.
        Its extra difference regions that match no annotation teach the classifier what
        registration residue looks like on boards whose scans are less regular than the
        training ones.
    cv_folds
        Folds (over pairs) for the out-of-fold predictions that tune the threshold.
    threshold_slack
        The operating threshold is the lowest one whose out-of-fold F-score is within
        this of the best (0: the best).
    random_state
        Seed of the classifier.

    Attributes
    ----------
    classes_ : list of str
        ``background`` plus the defect types seen in training.
    classifier_ : HistGradientBoostingClassifier
    box_models_ : dict
        Per type: ``[a_w, b_w, a_h, b_h]`` with annotated width = a_w + b_w × measured width.
    threshold_ : float
        Operating confidence threshold.
    training_ : dict
        Summary of the training data (pairs, candidates per label, coverage, timings).
    """

    def __init__(
        self,
        *,
        threshold: int = 128,
        tolerance: int = 2,
        min_area: int = 6,
        merge_distance: int = 6,
        context: int = 8,
        motion: str = "affine",
        max_iter: int = 300,
        learning_rate: float = 0.08,
        max_leaf_nodes: int = 15,
        nms_iou: float = 0.3,
        augment: bool = True,
        cv_folds: int = 4,
        threshold_slack: float = 0.0,
        random_state: int = 0,
    ) -> None:
        self.threshold = threshold
        self.tolerance = tolerance
        self.min_area = min_area
        self.merge_distance = merge_distance
        self.context = context
        self.motion = motion
        self.max_iter = max_iter
        self.learning_rate = learning_rate
        self.max_leaf_nodes = max_leaf_nodes
        self.nms_iou = nms_iou
        self.augment = augment
        self.cv_folds = cv_folds
        self.threshold_slack = threshold_slack
        self.random_state = random_state

    # -- detection (no learning) --------------------------------------------------------
    @property
    def params(self) -> DetectionParams:
        return DetectionParams(self.threshold, self.tolerance, self.min_area, self.merge_distance, self.context)

    def candidates(self, test: np.ndarray, template: np.ndarray) -> tuple[list[Candidate], Alignment]:
        """Register the pair and list every difference region (test-image coordinates)."""
        if test.shape != template.shape:
            raise ValueError(f"test image {test.shape[::-1]} and template {template.shape[::-1]} differ in size")
        alignment = align(test, template, motion=self.motion)
        return find_candidates(test, warp_template(template, alignment), self.params), alignment

    # -- learning -----------------------------------------------------------------------
    def _classifier(self) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(
            max_iter=self.max_iter,
            learning_rate=self.learning_rate,
            max_leaf_nodes=self.max_leaf_nodes,
            random_state=self.random_state,
        )

    def fit(self, X: Sequence[tuple[np.ndarray, np.ndarray]], y: Sequence[Sequence[Box]]) -> TemplateInspector:
        """Learn from annotated pairs (``X``: ``(test, template)`` images, ``y``: their boxes)."""
        return self.fit_candidates(self.extract(X), y)

    def extract(self, X: Iterable[tuple[np.ndarray, np.ndarray]]) -> list[Extracted]:
        """Candidates of every training pair, plus those of its nuisance copy when ``augment``.

        The slow part of training, separate from :meth:`fit_candidates` so callers can show
        progress or cache it.
        """
        out = []
        for i, (test, template) in enumerate(X):
            cands, _ = self.candidates(test, template)
            nuisance: list[Candidate] = []
            if self.augment:
                rng = np.random.default_rng([self.random_state, i])
                nuisance, _ = self.candidates(nuisance_copy(test, rng), template)
            out.append((cands, test.shape, nuisance))
        return out

    def fit_candidates(self, extracted: Sequence[Extracted], y: Sequence[Sequence[Box]]) -> TemplateInspector:
        """:meth:`fit` on candidates already returned by :meth:`extract`."""
        from sklearn.model_selection import GroupKFold

        if len(extracted) != len(y):
            raise ValueError(f"{len(extracted)} pairs but {len(y)} annotation lists")
        if not extracted:
            raise ValueError("no training pairs")
        t0 = time.perf_counter()
        feats, labels, groups = [], [], []
        measured: dict[str, list[tuple[float, float, float, float]]] = {t: [] for t in DEFECT_TYPES}
        covered = 0
        n_truth = 0
        extra_feats, extra_labels, extra_groups = [], [], []
        for i, ((cands, _, nuisance), truths) in enumerate(zip(extracted, y, strict=True)):
            lab, owners = label_candidates(cands, truths)
            n_truth += len(truths)
            covered += len({o for o in owners if o >= 0})
            # The box model learns from the largest candidate of each annotated defect.
            largest: dict[int, Candidate] = {}
            for c, o in zip(cands, owners, strict=True):
                if o >= 0 and (o not in largest or c.core_area > largest[o].core_area):
                    largest[o] = c
            for o, c in largest.items():
                t = truths[o]
                measured[t.type].append((c.box[2] - c.box[0], c.box[3] - c.box[1], t.x2 - t.x1, t.y2 - t.y1))
            feats.extend(c.features for c in cands)
            labels.extend(lab)
            groups.extend([i] * len(cands))
            extra_feats.extend(c.features for c in nuisance)
            extra_labels.extend(label_candidates(nuisance, truths)[0])
            extra_groups.extend([i] * len(nuisance))
        # Original candidates first, nuisance copies after: out-of-fold scores cover the former.
        n_orig = len(labels)
        feats += extra_feats
        labels += extra_labels
        groups += extra_groups
        if len(set(labels)) < 2:
            raise ValueError("training pairs give fewer than two candidate classes; more annotated pairs are needed")
        F = np.asarray(feats, dtype=np.float64).reshape(len(labels), len(FEATURE_NAMES))
        L = np.asarray(labels)
        self.box_models_ = {}
        for t, rows in measured.items():
            if not rows:
                continue
            m = np.asarray(rows, dtype=np.float64)
            self.box_models_[t] = [*self._line(m[:, 0], m[:, 2]), *self._line(m[:, 1], m[:, 3])]
        self.classifier_ = self._classifier().fit(F, L)
        self.classes_ = [str(c) for c in self.classifier_.classes_]

        # Out-of-fold probabilities → detections per pair → F-score per threshold.
        n_folds = min(self.cv_folds, len(extracted))
        proba = np.zeros((n_orig, len(self.classes_)))
        if n_folds >= 2:
            for tr, te in GroupKFold(n_splits=n_folds).split(F, L, np.asarray(groups)):
                te = te[te < n_orig]
                clf = self._classifier().fit(F[tr], L[tr])
                cols = [self.classes_.index(str(c)) for c in clf.classes_]
                proba[np.ix_(te, cols)] = clf.predict_proba(F[te])
        else:
            proba = self.classifier_.predict_proba(F[:n_orig])
        oof: list[list[Scored]] = []
        start = 0
        for cands, shape, _ in extracted:
            dets = self._detections(cands, proba[start : start + len(cands)], shape, min_confidence=0.01)
            oof.append([d.scored() for d in dets])
            start += len(cands)
        truths = [[(t.as_tuple(), t.type) for t in ts] for ts in y]
        reports = {
            float(thr): evaluate(oof, truths, DEFECT_TYPES, operating_threshold=float(thr))
            for thr in np.round(np.arange(0.05, 0.96, 0.05), 2)
        }
        best_f = max(r["f_score"] for r in reports.values())
        # Ties (and, with a slack, near-ties) go to the lowest threshold. On DeepPCB the
        # out-of-fold curve is flat within 0.0005, and a 0.002 slack drove the threshold to
        # 0.05 and cost test precision (docs/benchmarks.md), hence no slack by default.
        best_t = min(t for t, r in reports.items() if r["f_score"] >= best_f - self.threshold_slack)
        best_report = reports[best_t]
        self.threshold_ = best_t
        self.training_ = {
            "pairs": len(extracted),
            "annotated_defects": n_truth,
            "defects_with_a_candidate": covered,
            "candidates": n_orig,
            "nuisance_candidates": len(L) - n_orig,
            "candidates_per_label": dict(sorted(Counter(labels[:n_orig]).items())),
            "out_of_fold": {k: best_report[k] for k in ("precision", "recall", "f_score", "map", "count_accuracy")},
            "out_of_fold_f_score_by_threshold": {f"{t:.2f}": r["f_score"] for t, r in reports.items()},
            "fit_seconds": round(time.perf_counter() - t0, 2),
        }
        return self

    @staticmethod
    def _line(x: np.ndarray, y: np.ndarray) -> list[float]:
        """Least-squares ``y ≈ a + b·x`` (a constant when all ``x`` agree)."""
        if len(x) < 2 or np.ptp(x) == 0:
            return [float(np.mean(y)), 0.0]
        b, a = np.polyfit(x, y, 1)
        return [float(a), float(b)]

    # -- prediction ---------------------------------------------------------------------
    def _detections(
        self, cands: Sequence[Candidate], proba: np.ndarray, shape: tuple[int, int], min_confidence: float
    ) -> list[Detection]:
        dets = []
        type_cols = [i for i, c in enumerate(self.classes_) if c != BACKGROUND]
        for c, p in zip(cands, proba, strict=True):
            j = max(type_cols, key=lambda i: p[i])
            conf = float(p[j])
            if conf < min_confidence:
                continue
            kind = self.classes_[j]
            x1, y1, x2, y2 = c.box
            a_w, b_w, a_h, b_h = self.box_models_.get(kind, [0.0, 1.0, 0.0, 1.0])
            w = max(1.0, a_w + b_w * (x2 - x1))
            h = max(1.0, a_h + b_h * (y2 - y1))
            box = _clip_box((x1 + x2) / 2, (y1 + y2) / 2, w, h, shape)
            dets.append(Detection(box, kind, conf, "added" if c.added else "removed", c.core_area))
        return nms(dets, self.nms_iou)

    def classify(
        self, cands: Sequence[Candidate], shape: tuple[int, int], min_confidence: float | None = None
    ) -> list[Detection]:
        """Typed, boxed detections from candidates (``min_confidence`` defaults to ``threshold_``)."""
        check_is_fitted(self, "classifier_")
        if not cands:
            return []
        proba = self.classifier_.predict_proba(np.asarray([c.features for c in cands]))
        thr = self.threshold_ if min_confidence is None else min_confidence
        return self._detections(cands, proba, shape, thr)

    def predict(self, X: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[list[Detection]]:
        """Detections at the operating threshold for each ``(test, template)`` pair."""
        check_is_fitted(self, "classifier_")
        out = []
        for test, template in X:
            cands, _ = self.candidates(test, template)
            out.append(self.classify(cands, test.shape))
        return out

    # -- persistence --------------------------------------------------------------------
    def save(self, model_dir: str | os.PathLike[str], extra_training: dict[str, Any] | None = None) -> None:
        """Write the model directory atomically: ``classifier.pkl`` + ``card.json``."""
        import sklearn

        from fabsight.artifacts import ModelCard, save_card
        from fabsight.utils.atomic import atomic_dir

        check_is_fitted(self, "classifier_")
        with atomic_dir(model_dir) as tmp:
            with open(Path(tmp) / "classifier.pkl", "wb") as fh:
                pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)
            card = ModelCard(
                task=TASK,
                classes=list(self.classes_),
                input={
                    "images": "test + defect-free template of one size, any bit depth read as 8-bit grey",
                    "copper": f"grey level < {self.threshold} (dark)",
                    "registration": self.motion,
                },
                training={**self.training_, **(extra_training or {})},
                files={"classifier": "classifier.pkl"},
                extra={
                    "detection": self.params.to_dict(),
                    "operating_threshold": self.threshold_,
                    "nms_iou": self.nms_iou,
                    "box_models": self.box_models_,
                    "features": list(FEATURE_NAMES),
                    "classifier": f"sklearn {sklearn.__version__} HistGradientBoostingClassifier",
                    "hyper_parameters": self.get_params(),
                },
            )
            save_card(tmp, card)


def load_inspector(model_dir: str | os.PathLike[str]) -> TemplateInspector:
    """A fitted :class:`TemplateInspector` from a model directory (card checked first).

    The classifier is a pickle: only load model directories you trust.
    """
    from fabsight.artifacts import load_card
    from fabsight.errors import ModelError

    card = load_card(model_dir, task=TASK)
    path = Path(model_dir) / card.files["classifier"]
    try:
        with open(path, "rb") as fh:
            model = pickle.load(fh)
    except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise ModelError(path, f"unreadable classifier ({exc})") from None
    if not isinstance(model, TemplateInspector):
        raise ModelError(path, f"holds a {type(model).__name__}, not a TemplateInspector")
    check_is_fitted(model, "classifier_")
    # The card is what a person edits to retune the operating point.
    model.threshold_ = float(card.extra.get("operating_threshold", model.threshold_))
    return model


def inspect_pair(
    test: np.ndarray,
    template: np.ndarray,
    model: TemplateInspector | None = None,
    *,
    min_confidence: float | None = None,
) -> InspectionResult:
    """Find, box, classify and count the defects of one pair.

    Without a model every difference region is a ``defect`` with a contrast/size
    confidence; with one, types, boxes and the threshold come from training.
    """
    t0 = time.perf_counter()
    inspector = model if model is not None else TemplateInspector()
    cands, alignment = inspector.candidates(test, template)
    if model is None:
        thr = 0.0 if min_confidence is None else min_confidence
        dets = [
            Detection(
                (float(c.box[0]), float(c.box[1]), float(c.box[2]), float(c.box[3])),
                UNCLASSIFIED,
                strength_confidence(c),
                "added" if c.added else "removed",
                c.core_area,
            )
            for c in cands
        ]
        dets = sorted((d for d in dets if d.confidence >= thr), key=lambda d: -d.confidence)
        kinds: Sequence[str] = (UNCLASSIFIED,)
    else:
        dets = model.classify(cands, test.shape, min_confidence)
        kinds = [c for c in model.classes_ if c != BACKGROUND]
    counts = {k: 0 for k in kinds}
    counts.update(Counter(d.type for d in dets))
    return InspectionResult(dets, counts, alignment, test.shape, time.perf_counter() - t0)
