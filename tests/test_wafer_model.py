"""WaferClassifier end to end on small generated data with known patterns.

The models are tiny (32×32 input, a few hundred gradient steps) so the whole file runs in
well under a minute on two cores; real accuracy is measured by benchmarks/wafer_classify.py.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError

from fabsight.errors import FabsightError, ModelError
from fabsight.synth import generate_dataset
from fabsight.types import WaferMap
from fabsight.wafer import WaferClassifier, evaluate, load_model

CLASSES = ("Center", "Edge-Ring", "Random")
FAST = {"input_size": 32, "epochs": 4, "batch_size": 32, "n_threads": 1}


def checkerboard(shape: tuple[int, int], square: int) -> np.ndarray:
    """A map no training class resembles: a round wafer failing in a checkerboard of squares."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    inside = np.hypot((yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2)) <= 1
    return np.where(inside, 1 + (yy // square + xx // square) % 2, 0).astype(np.uint8)


@pytest.fixture(scope="module")
def model() -> WaferClassifier:
    train = generate_dataset(40, classes=CLASSES, shapes=((30, 30), (52, 52)), seed=0)
    return WaferClassifier(**FAST).fit(train)


@pytest.fixture(scope="module")
def test_maps() -> list[WaferMap]:
    # Other seed and grid sizes than training: 26x26 and a non-square 80x64.
    return generate_dataset(20, classes=CLASSES, shapes=((26, 26), (80, 64)), seed=11)


def test_learns_separable_patterns_on_unseen_grid_sizes(model, test_maps) -> None:
    result = evaluate(model, test_maps)
    assert result["accuracy"] >= 0.9  # chance is 1/3
    assert result["confusion"]["labels"] == list(CLASSES)
    assert np.sum(result["confusion"]["matrix"]) == len(test_maps)
    assert model.classes_ == list(CLASSES)


def test_outputs_have_the_documented_shapes(model, test_maps) -> None:
    maps = test_maps[:5]
    proba = model.predict_proba(maps)
    assert proba.shape == (5, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-5)
    assert model.embed(maps).shape == (5, 128)
    raw = [m.grid for m in maps]  # plain arrays work as well as WaferMaps
    assert model.predict(raw) == model.predict(maps)
    d = model.predict_details(maps)[0]
    assert set(d) == {"label", "probability", "top3", "needs_review", "review_reason", "ood_score"}
    assert d["label"] == d["top3"][0][0] and d["probability"] == pytest.approx(d["top3"][0][1])
    assert [p for _, p in d["top3"]] == sorted((p for _, p in d["top3"]), reverse=True)


def test_calibration_metrics_are_recorded(model) -> None:
    v = model.metrics_["validation"]
    assert v["n"] == 24  # 20 % of 40 per class, stratified
    assert v["ece_after_calibration"] <= max(v["ece_before_calibration"], 0.05)
    assert 0.5 <= model.review_threshold_ <= 1.0


def test_out_of_distribution_maps_are_flagged(model, test_maps) -> None:
    unseen = [m.grid for m in generate_dataset(1, classes=("Donut", "Scratch"), shapes=((52, 52),), seed=5)]
    odd = [checkerboard((52, 52), 6), *unseen]
    odd_details = model.predict_details(odd)
    normal = model.predict_details(test_maps)
    assert all(d["needs_review"] for d in odd_details)
    assert np.mean([d["ood_score"] for d in odd_details]) > 1.5 * np.median([d["ood_score"] for d in normal])
    assert np.mean([d["needs_review"] for d in normal]) < 0.25


def test_grid_rules_flag_what_the_network_cannot_see(model) -> None:
    # A die-level checkerboard averages into a uniform half-failing field (a Random map to
    # the network) and an all-fail wafer is the extreme of a dense class: the raw-grid
    # rules catch both, and their reason comes first.
    all_fail = np.where(checkerboard((40, 40), 1) > 0, 2, 0)
    d_checker, d_fail = model.predict_details([checkerboard((52, 52), 1), all_fail])
    assert d_checker["needs_review"] and d_checker["review_reason"].startswith("periodic failures")
    assert d_fail["needs_review"] and d_fail["review_reason"].startswith("whole-wafer failure")
    assert d_fail["label"] in CLASSES  # the network still answers; the flag says not to trust it


def test_save_load_round_trip_is_identical(model, test_maps, tmp_path) -> None:
    model.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    np.testing.assert_array_equal(again.predict_proba(test_maps), model.predict_proba(test_maps))
    assert again.predict_details(test_maps[:3]) == model.predict_details(test_maps[:3])
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["task"] == "wafer-pattern" and card["classes"] == list(CLASSES)
    assert card["input"]["size"] == 32 and card["input"]["channels"] == ["off", "good", "fail"]
    assert card["backbone"]["parameters"] < 1_000_000
    assert card["training"]["per_class"] == dict.fromkeys(CLASSES, 40)
    assert "held out" in card["metrics"]["validation"]["measured_on"]
    assert card["version"]


def test_card_mismatches_fail_clearly(model, tmp_path) -> None:
    d = tmp_path / "m"
    model.save(d)
    card = json.loads((d / "card.json").read_text())

    card["classes"] = [*CLASSES, "Scratch"]
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="4 classes but the network has 3 outputs"):
        load_model(d)

    card["classes"] = list(CLASSES)
    card["backbone"]["widths"] = [8, 16, 32, 64]
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="weights do not match the architecture"):
        load_model(d)

    card["task"] = "anomaly"
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="expected 'wafer-pattern'"):
        load_model(d)


def test_review_threshold_is_learnt_on_review_maps(model) -> None:
    # Review maps where half the labels are wrong: no confidence level is 98 % precise
    # there, so the threshold rises to the most confident review maps and most are flagged.
    train = generate_dataset(40, classes=CLASSES, shapes=((30, 30), (52, 52)), seed=0)
    review = generate_dataset(8, classes=CLASSES, shapes=((40, 40),), seed=9)
    for m in review[::2]:
        m.labels = (CLASSES[(CLASSES.index(m.labels[0]) + 1) % len(CLASSES)],)
    clf = WaferClassifier(**FAST).fit(train, review_maps=review)
    r = clf.metrics_["review"]
    assert r["n"] == 24 and r["accuracy"] <= 0.6
    assert clf.review_threshold_ == r["review_threshold"] > model.review_threshold_
    assert r["review_rate"] >= 0.4
    low = [d["review_reason"] for d in clf.predict_details(review) if "low confidence" in (d["review_reason"] or "")]
    assert low and all(re.search(r"runner-up (Center|Edge-Ring|Random) 0\.\d\d\)$", x) for x in low)
    assert clf.metrics_["validation"]["review_threshold"] == model.review_threshold_  # same data, same seed

    unknown = [WaferMap(m.grid, source="r.npy", labels=("Donut",)) for m in review]
    with pytest.raises(FabsightError, match=r"r\.npy: review label 'Donut' is not one of"):
        WaferClassifier(**FAST).fit(train, review_maps=unknown)


def test_multilabel_mixed_patterns(tmp_path) -> None:
    combos = ("Center", "Edge-Ring", "Center+Edge-Ring", "none")
    train = generate_dataset(40, classes=combos, shapes=((40, 40),), seed=3)
    test = generate_dataset(15, classes=combos, shapes=((52, 52),), seed=4)
    clf = WaferClassifier(multilabel=True, **FAST).fit(train)
    assert clf.classes_ == ["Center", "Edge-Ring"]  # 'none' is "no label on"
    assert set(clf.predict(test)) <= {("Center",), ("Edge-Ring",), ("Center", "Edge-Ring"), ("none",)}
    result = evaluate(clf, test)
    assert result["exact_match_accuracy"] >= 0.8  # chance: 0.25
    proba = clf.predict_proba(test)
    assert proba.shape == (60, 2) and (proba.sum(axis=1) > 1.2).any()  # independent sigmoids
    assert len(clf.label_thresholds_) == 2
    clf.review_threshold_ = 1.0  # every confidence is below it: the reason names the least certain label
    reasons = [d["review_reason"] for d in clf.predict_details(test[:10])]
    low = [r for r in reasons if r.startswith("low confidence")]
    assert low and all(re.search(r"\(least certain label (Center|Edge-Ring) [01]\.\d\d\)$", r) for r in low)
    clf.save(tmp_path / "ml")
    assert load_model(tmp_path / "ml").predict(test) == clf.predict(test)


@pytest.mark.parametrize("head", ["prototype", "probe", "finetune"])
def test_few_shot_adds_a_class_from_five_examples(model, head) -> None:
    # The base model never saw Scratch; five examples per class must be enough.
    few = generate_dataset(5, classes=(*CLASSES, "Scratch"), shapes=((45, 45),), seed=21)
    test = generate_dataset(15, classes=(*CLASSES, "Scratch"), shapes=((60, 60),), seed=22)
    clf = WaferClassifier(init=model, head=head, **FAST).fit(few)
    assert clf.head_ == head and clf.input_size_ == 32
    assert clf.classes_ == [*CLASSES, "Scratch"]
    assert evaluate(clf, test)["accuracy"] >= 0.7  # chance: 0.25
    # the base model itself is untouched
    assert model.classes_ == list(CLASSES)


def test_auto_head_uses_few_shot_default_for_small_budgets(model) -> None:
    from fabsight.wafer.classifier import FEW_SHOT_HEAD

    few = generate_dataset(4, classes=CLASSES, shapes=((45, 45),), seed=5)
    assert WaferClassifier(init=model, **FAST).fit(few).head_ == FEW_SHOT_HEAD


def test_user_mistakes(model) -> None:
    maps = generate_dataset(3, classes=("Center",), seed=1)
    with pytest.raises(FabsightError, match="at least two classes"):
        WaferClassifier(**FAST).fit(maps)
    with pytest.raises(FabsightError, match="3 maps but 2 labels"):
        WaferClassifier(**FAST).fit(maps, ["Center", "Loc"])
    with pytest.raises(FabsightError, match="single-label model needs one"):
        WaferClassifier(**FAST).fit(maps, [("Center", "Loc"), ("Center",), ("Loc",)])
    with pytest.raises(FabsightError, match="'Loc' is not one of"):
        WaferClassifier(classes=CLASSES, **FAST).fit(maps, ["Center", "Loc", "Center"])
    with pytest.raises(NotFittedError):
        WaferClassifier().predict(maps)
    with pytest.raises(FabsightError, match="found \\[7\\]"):
        model.predict([np.full((10, 10), 7)])
    with pytest.raises(ValueError, match="needs init"):
        WaferClassifier(head="probe", **FAST).fit(maps, ["Center", "Loc", "Loc"])
    unknown = WaferMap(maps[0].grid, source="a.npy", labels=("Donut",))
    with pytest.raises(FabsightError, match=r"a\.npy: label 'Donut' is not a class of the model"):
        evaluate(model, [unknown])


def test_single_example_class_warns() -> None:
    maps = generate_dataset(4, classes=("Center", "Random"), seed=2)[:5]  # Random has one map
    with pytest.warns(UserWarning, match="'Random' has a single example"):
        WaferClassifier(input_size=32, epochs=1, batch_size=8, n_threads=1).fit(maps)
