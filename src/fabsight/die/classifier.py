"""Classifiers on top of frozen features, following the scikit-learn estimator API.

- :class:`ProbeClassifier`: standardisation + multinomial logistic regression (the linear
  probe of the DINOv2 / TAO workflow) with temperature-scaled probabilities, the
  temperature fitted on cross-validated logits so confidences mean what they say.
- :class:`HierarchicalClassifier`: stacked probes, defect vs no-defect → coarse group →
  fine class (the Applied Materials four-level system), groups given or derived by
  clustering class centroids; probabilities multiply down the tree.
- :class:`DieClassifier`: either of the two plus a ``needs_review`` gate — low confidence,
  or an embedding farther from every class centroid than ``review_quantile`` of the
  training images were from theirs (out of distribution: a new defect type, a new tool).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.validation import check_is_fitted, check_X_y, validate_data

from fabsight.calibration import fit_temperature
from fabsight.errors import FabsightError


def _logits(model: Any, X: np.ndarray) -> np.ndarray:
    d = model.decision_function(X)
    return np.stack([np.zeros_like(d), d], axis=1) if d.ndim == 1 else d


def nearest_centroid_distance(Xs: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """RMS distance of each standardised row to its nearest class centroid (the OOD score's numerator)."""
    d2 = (Xs ** 2).sum(1)[:, None] - 2 * Xs @ centroids.T + (centroids ** 2).sum(1)[None]
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0) / Xs.shape[1])


def review_decisions(proba: np.ndarray, labels: Sequence[str], ood: np.ndarray, classes: Sequence[str], *,
                     min_confidence: float, top_k: int = 3) -> list[dict[str, Any]]:
    """Per image: label, confidence, top-k, ood_score, needs_review and why (one format for every method)."""
    col = {str(c): i for i, c in enumerate(classes)}
    results = []
    for p, label, o in zip(proba, labels, ood, strict=True):
        order = np.argsort(-p)[:top_k]
        confidence = float(p[col[str(label)]])
        reasons = []
        if confidence < min_confidence:
            reasons.append("low_confidence")
        if o > 1.0:
            reasons.append("out_of_distribution")
        results.append({
            "label": str(label), "confidence": confidence,
            "top": [{"label": str(classes[i]), "p": float(p[i])} for i in order],
            "ood_score": float(o), "needs_review": bool(reasons), "review_reasons": reasons,
        })
    return results


class NetworkDecisionsMixin:
    """Calibrated probabilities and review decisions from a network's logits and pooled embedding.

    The fine-tuned PyTorch classifier (:class:`fabsight.die.finetune.FinetuneClassifier`) and
    its ONNX Runtime twin (:class:`fabsight.die.onnx.OnnxFinetuneClassifier`) differ only in
    ``logits_and_embedding``; everything after the forward pass lives here, in a module
    without torch, so the two runtimes cannot drift apart. Needs the fitted ``classes_``,
    ``temperature_``, ``embed_mean_``, ``embed_std_``, ``centroids_``, ``ood_threshold_``
    and the ``min_confidence`` gate.
    """

    classes_: np.ndarray
    temperature_: float
    embed_mean_: np.ndarray
    embed_std_: np.ndarray
    centroids_: np.ndarray
    ood_threshold_: float
    min_confidence: float

    def logits_and_embedding(self, X: Sequence[Any], tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Network outputs; with ``tta`` the logits are averaged over flips and turns
        (:func:`fabsight.die.views.average_views`)."""
        raise NotImplementedError

    def predict_proba(self, X: Sequence[Any], tta: bool = False) -> np.ndarray:
        logits, _ = self.logits_and_embedding(X, tta=tta)
        return softmax(logits / self.temperature_, axis=1)

    def predict(self, X: Sequence[Any], tta: bool = False) -> np.ndarray:
        proba = self.predict_proba(X, tta=tta)  # first: an unfitted estimator raises NotFittedError there
        return self.classes_[proba.argmax(axis=1)]

    def embed(self, X: Sequence[Any]) -> np.ndarray:
        """Pooled embeddings of the network (for discovery, OOD, probes)."""
        return self.logits_and_embedding(X)[1]

    def decide(self, X: Sequence[Any], top_k: int = 3, tta: bool = False) -> list[dict[str, Any]]:
        """Per image: label, calibrated confidence, top-k, needs_review and why."""
        return self.decide_outputs(*self.logits_and_embedding(X, tta=tta), top_k=top_k)

    def decide_outputs(self, logits: np.ndarray, z: np.ndarray, top_k: int = 3) -> list[dict[str, Any]]:
        """:meth:`decide` from network outputs already computed (one forward pass serves several uses)."""
        proba = softmax(logits / self.temperature_, axis=1)
        ood = nearest_centroid_distance((z - self.embed_mean_) / self.embed_std_, self.centroids_)
        return review_decisions(proba, self.classes_[proba.argmax(1)], ood / max(self.ood_threshold_, 1e-12),
                                self.classes_, min_confidence=self.min_confidence, top_k=top_k)


class ProbeClassifier(ClassifierMixin, BaseEstimator):
    """Linear probe with calibrated probabilities.

    Parameters
    ----------
    C : inverse L2 strength of the logistic regression on standardised features.
    calibrate : fit a softmax temperature on ``cv``-fold out-of-fold logits.
    cv : folds for the temperature (reduced to the smallest class size when needed).
    class_weight : passed to LogisticRegression ("balanced" for skewed defect mixes).

    Attributes
    ----------
    classes_ : labels in probability-column order.
    scaler_, model_ : fitted StandardScaler and LogisticRegression.
    temperature_ : softmax temperature (1.0 when not calibrated).
    """

    def __init__(self, C: float = 0.5, calibrate: bool = True, cv: int = 5,
                 class_weight: str | None = "balanced", max_iter: int = 3000) -> None:
        self.C = C
        self.calibrate = calibrate
        self.cv = cv
        self.class_weight = class_weight
        self.max_iter = max_iter

    def _new_model(self) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(
            C=self.C, class_weight=self.class_weight, max_iter=self.max_iter))

    def fit(self, X: np.ndarray, y: np.ndarray) -> ProbeClassifier:
        from sklearn.model_selection import StratifiedKFold, cross_val_predict

        X, y = check_X_y(X, y)
        self.classes_, yi = np.unique(y, return_inverse=True)
        self.n_features_in_ = X.shape[1]
        if len(self.classes_) < 2:
            raise FabsightError(None, f"need at least two classes to train, got {list(self.classes_)}")
        self.temperature_ = 1.0
        smallest = int(np.bincount(yi).min())
        if self.calibrate and smallest >= 2:
            folds = StratifiedKFold(n_splits=min(self.cv, smallest), shuffle=True, random_state=0)
            oof = cross_val_predict(self._new_model(), X, yi, cv=folds, method="decision_function")
            oof = np.stack([np.zeros_like(oof), oof], axis=1) if oof.ndim == 1 else oof
            self.temperature_ = fit_temperature(oof, yi, multilabel=False)
        self.model_ = self._new_model().fit(X, yi)
        self.scaler_ = self.model_[0]
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return _logits(self.model_, X) / self.temperature_

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return softmax(self.decision_function(X), axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def derive_groups(X: np.ndarray, y: np.ndarray, n_groups: int) -> dict[str, list[str]]:
    """Coarse groups by agglomerative (Ward) clustering of standardised class centroids."""
    from sklearn.cluster import AgglomerativeClustering
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(y)
    Xs = StandardScaler().fit_transform(X)
    centroids = np.stack([Xs[y == c].mean(axis=0) for c in classes])
    n = int(np.clip(n_groups, 1, len(classes)))
    assign = AgglomerativeClustering(n_clusters=n).fit_predict(centroids) if n > 1 else np.zeros(len(classes), int)
    groups: dict[str, list[str]] = {}
    for g in range(n):
        members = [str(c) for c, a in zip(classes, assign, strict=True) if a == g]
        groups["+".join(members) if len(members) <= 3 else f"group{g}"] = members
    return groups


class HierarchicalClassifier(ClassifierMixin, BaseEstimator):
    """Stacked probes: [no-defect vs defect] → coarse group → fine class.

    Parameters
    ----------
    groups : coarse group name → fine classes; ``None`` derives ``n_groups`` groups from
        class centroids. Classes in no group form their own group.
    ok_class : the no-defect class (level 1 is ok vs defect); ``None`` skips that level.
    n_groups : number of derived groups (default ≈ √ number of defect classes).
    C, calibrate : passed to every :class:`ProbeClassifier` level.

    Attributes
    ----------
    classes_ : fine labels; groups_ : the groups used; gate_ : ok-vs-defect probe or None;
    coarse_ : group probe (None with one group); fine_ : group → probe (None for single-class groups).
    """

    def __init__(self, groups: Mapping[str, Sequence[str]] | None = None, ok_class: str | None = None,
                 n_groups: int | None = None, C: float = 0.5, calibrate: bool = True) -> None:
        self.groups = groups
        self.ok_class = ok_class
        self.n_groups = n_groups
        self.C = C
        self.calibrate = calibrate

    def _probe(self) -> ProbeClassifier:
        return ProbeClassifier(C=self.C, calibrate=self.calibrate)

    def fit(self, X: np.ndarray, y: np.ndarray) -> HierarchicalClassifier:
        X, y = check_X_y(X, y)
        y = y.astype(str)
        self.classes_ = np.unique(y)
        self.n_features_in_ = X.shape[1]
        ok = self.ok_class if self.ok_class in self.classes_ else None
        if self.ok_class is not None and ok is None:
            raise FabsightError(None, f"ok_class '{self.ok_class}' is not among the classes {list(self.classes_)}")
        self.gate_ = self._probe().fit(X, np.where(y == ok, "ok", "defect")) if ok else None
        defect = y != ok if ok else np.ones(len(y), bool)
        Xd, yd = X[defect], y[defect]
        defect_classes = [str(c) for c in np.unique(yd)]
        if self.groups is not None:
            groups = {str(g): [str(c) for c in members] for g, members in self.groups.items()}
            unknown = sorted({c for m in groups.values() for c in m} - set(defect_classes))
            if unknown:
                raise FabsightError(None, f"group map names classes not in the data: {', '.join(unknown)}")
            placed = {c for m in groups.values() for c in m}
            groups.update({c: [c] for c in defect_classes if c not in placed})
        else:
            n = self.n_groups or max(2, round(np.sqrt(len(defect_classes))))
            groups = derive_groups(Xd, yd, n)
        self.groups_ = groups
        group_of = {c: g for g, members in groups.items() for c in members}
        self.coarse_ = self._probe().fit(Xd, np.array([group_of[c] for c in yd])) if len(groups) > 1 else None
        self.fine_ = {}
        for g, members in groups.items():
            in_group = np.isin(yd, members)
            self.fine_[g] = self._probe().fit(Xd[in_group], yd[in_group]) if len(members) > 1 else None
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        out = np.zeros((len(X), len(self.classes_)))
        col = {c: i for i, c in enumerate(self.classes_)}
        if self.gate_ is not None:
            p_gate = self.gate_.predict_proba(X)
            p_defect = p_gate[:, list(self.gate_.classes_).index("defect")]
            out[:, col[self.ok_class]] = 1.0 - p_defect
        else:
            p_defect = np.ones(len(X))
        names = list(self.groups_)
        p_group = self.coarse_.predict_proba(X) if self.coarse_ is not None else np.ones((len(X), 1))
        group_cols = list(self.coarse_.classes_) if self.coarse_ is not None else names
        for g, members in self.groups_.items():
            pg = p_defect * p_group[:, group_cols.index(g)]
            fine = self.fine_[g]
            if fine is None:
                out[:, col[members[0]]] += pg
            else:
                pf = fine.predict_proba(X)
                for j, c in enumerate(fine.classes_):
                    out[:, col[c]] += pg * pf[:, j]
        return out

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Top-down routing: each level's argmax picks the branch (the product of flattened
        calibrated probabilities would favour the one-level ``ok`` class)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        out = np.empty(len(X), dtype=object)
        todo = np.ones(len(X), bool)
        if self.gate_ is not None:
            is_ok = self.gate_.predict(X) == "ok"
            out[is_ok] = self.ok_class
            todo &= ~is_ok
        names = list(self.groups_)
        group = self.coarse_.predict(X) if self.coarse_ is not None else np.full(len(X), names[0])
        for g, members in self.groups_.items():
            m = todo & (group == g)
            if m.any():
                out[m] = members[0] if self.fine_[g] is None else self.fine_[g].predict(X[m])
        return out.astype(self.classes_.dtype)

    def level_report(self, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """Accuracy of each level on the samples that level sees (true upstream routing)."""
        from sklearn.metrics import accuracy_score

        check_is_fitted(self)
        y = np.asarray(y).astype(str)
        report: dict[str, Any] = {"groups": self.groups_}
        defect = y != self.ok_class if self.gate_ is not None else np.ones(len(y), bool)
        if self.gate_ is not None:
            truth = np.where(defect, "defect", "ok")
            report["defect_vs_ok"] = {"accuracy": accuracy_score(truth, self.gate_.predict(X)), "n": len(y)}
        group_of = {c: g for g, m in self.groups_.items() for c in m}
        Xd, yd = X[defect], y[defect]
        if self.coarse_ is not None and len(yd):
            truth = np.array([group_of.get(c, "?") for c in yd])
            report["group"] = {"accuracy": accuracy_score(truth, self.coarse_.predict(Xd)), "n": len(yd)}
        fine = {}
        for g, model in self.fine_.items():
            m = np.isin(yd, self.groups_[g])
            if model is not None and m.any():
                fine[g] = {"accuracy": accuracy_score(yd[m], model.predict(Xd[m])), "n": int(m.sum())}
        report["fine_within_group"] = fine
        report["overall"] = {"accuracy": accuracy_score(y, self.predict(X)), "n": len(y)}
        return report


def pool_level_reports(reports: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pool :meth:`HierarchicalClassifier.level_report` outputs of several held-out folds: each
    level's accuracy weighted by the images it saw (a fine group named alike in every fold pools)."""

    def pool(entries: list[Mapping[str, Any]]) -> dict[str, Any]:
        n = sum(int(e["n"]) for e in entries)
        return {"accuracy": sum(e["accuracy"] * e["n"] for e in entries) / max(n, 1), "n": n}

    out: dict[str, Any] = {}
    for level in ("defect_vs_ok", "group", "overall"):
        entries = [r[level] for r in reports if level in r]
        if entries:
            out[level] = pool(entries)
    names = sorted({g for r in reports for g in r.get("fine_within_group", {})})
    out["fine_within_group"] = {g: pool([r["fine_within_group"][g] for r in reports
                                         if g in r.get("fine_within_group", {})]) for g in names}
    return out


class DieClassifier(ClassifierMixin, BaseEstimator):
    """A probe or hierarchical classifier plus the ``needs_review`` gate (see module docstring).

    Parameters
    ----------
    method : "probe" or "hierarchical".
    C : probe regularisation.  groups, ok_class, n_groups : hierarchical options.
    calibrate : temperature-scale the probes (off only where just labels matter, e.g. benchmarks).
    min_confidence : below this calibrated top-1 probability an image needs review.
    review_quantile : training quantile of the nearest-centroid distance beyond which an
        image is out of distribution.

    Attributes
    ----------
    classes_, estimator_ (the fitted classifier), scaler_, centroids_ (per class, scaled
    space), ood_threshold_ (distance at ``review_quantile``).
    """

    def __init__(self, method: str = "probe", C: float = 0.5, groups: Mapping[str, Sequence[str]] | None = None,
                 ok_class: str | None = None, n_groups: int | None = None, min_confidence: float = 0.5,
                 review_quantile: float = 0.99, calibrate: bool = True) -> None:
        self.method = method
        self.C = C
        self.groups = groups
        self.ok_class = ok_class
        self.n_groups = n_groups
        self.min_confidence = min_confidence
        self.review_quantile = review_quantile
        self.calibrate = calibrate

    def fit(self, X: np.ndarray, y: np.ndarray) -> DieClassifier:
        from sklearn.preprocessing import StandardScaler

        if self.method not in ("probe", "hierarchical"):
            raise FabsightError(None, f"method must be 'probe' or 'hierarchical', got {self.method!r}")
        if not 0.0 < self.review_quantile <= 1.0:
            raise FabsightError(None, f"review_quantile must be in (0, 1], got {self.review_quantile}")
        X, y = check_X_y(X, np.asarray(y).astype(str))
        self.n_features_in_ = X.shape[1]
        base = (ProbeClassifier(C=self.C, calibrate=self.calibrate) if self.method == "probe" else
                HierarchicalClassifier(groups=self.groups, ok_class=self.ok_class, n_groups=self.n_groups, C=self.C,
                                       calibrate=self.calibrate))
        self.estimator_ = clone(base).fit(X, y)
        self.classes_ = self.estimator_.classes_
        self.scaler_ = StandardScaler().fit(X)
        Xs = self.scaler_.transform(X)
        self.centroids_ = np.stack([Xs[y == c].mean(axis=0) for c in self.classes_])
        self.ood_threshold_ = float(np.quantile(self._nearest_distance(Xs), self.review_quantile))
        return self

    def _nearest_distance(self, Xs: np.ndarray) -> np.ndarray:
        return nearest_centroid_distance(Xs, self.centroids_)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        return self.estimator_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        return self.estimator_.predict(X)

    def ood_score(self, X: np.ndarray) -> np.ndarray:
        """Nearest-centroid distance divided by the training threshold (> 1: out of distribution)."""
        check_is_fitted(self)
        X = validate_data(self, X, reset=False)
        return self._nearest_distance(self.scaler_.transform(X)) / max(self.ood_threshold_, 1e-12)

    def decide(self, X: np.ndarray, top_k: int = 3) -> list[dict[str, Any]]:
        """Per image: label, confidence, top-k, needs_review and why."""
        return review_decisions(self.predict_proba(X), self.predict(X), self.ood_score(X), self.classes_,
                                min_confidence=self.min_confidence, top_k=top_k)
