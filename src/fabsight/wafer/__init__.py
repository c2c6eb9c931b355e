"""Wafer-map pattern recognition: single-type, mixed-type, few-shot, calibrated.

Public API (other areas code against exactly these names)::

    from fabsight.wafer import WaferClassifier, load_model, to_model_input

    clf = WaferClassifier(input_size=64, multilabel=False)   # scikit-learn style estimator
    clf.fit(maps, y)            # maps: WaferMaps or 2-D grids (0 off / 1 good / 2 fail), any size;
                                # y: class names, or tuples / multi-hot rows when multilabel
                                # (y=None takes WaferMap.labels)
    clf.classes_, clf.multilabel
    clf.predict(maps)           # list[str] | list[tuple[str, ...]] (('none',) = no pattern)
    clf.predict_proba(maps)     # N×C calibrated (softmax / sigmoid per label)
    clf.embed(maps)             # N×D penultimate features
    clf.predict_details(maps)   # [{"label", "probability", "top3", "needs_review",
                                #   "review_reason", "ood_score"}, ...]
    clf.save(model_dir); clf2 = load_model(model_dir)
    to_model_input(grid, size)  # H×W grid → 3×size×size float32 (fractions of off/good/fail)

Training recipe (what ``fabsight wafer train`` runs): ``train([src1, src2, ...], val=path,
recipe=Recipe(epochs=..., max_minutes=...))`` reads every labelled source, harmonises class
spellings across them, and fits one model, early-stopped and calibrated on ``val``.

Few labels, many unlabelled maps: ``clf.fit(maps, unlabeled=more_maps)`` self-trains
(``rounds``, ``pseudo_threshold``; what was pseudo-labelled is in ``clf.self_training_``);
``Recipe(unlabeled=(path, ...))`` / ``wafer train --unlabeled PATH`` read such sources.

Few-shot adaptation: ``WaferClassifier(init=model_dir_or_classifier, head="auto" |
"finetune" | "probe" | "prototype").fit(few_maps, y)``. Evaluation: :func:`evaluate`.

Modules: ``preprocess`` (grid → input), ``net`` (the CNN and augmentation),
``calibration`` (temperature, thresholds, OOD), ``review`` (rules on the raw die grid and
the harder maps the review threshold is learnt on: ``fit(maps, review_maps=...)``),
``classifier`` (the estimator and model directories), ``recipe`` (labelled sources →
fitted model), ``evaluate`` (metrics for
``fabsight wafer eval``).
"""

from fabsight.wafer.classifier import WaferClassifier, load_model
from fabsight.wafer.evaluate import evaluate
from fabsight.wafer.preprocess import to_model_input
from fabsight.wafer.recipe import Recipe, train

__all__ = ["Recipe", "WaferClassifier", "evaluate", "load_model", "to_model_input", "train"]
