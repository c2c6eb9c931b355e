"""Training on several labelled sources at once: class-name harmonisation, bad sources,
a held-out ``--val`` set, early stopping, the time budget and class balancing."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fabsight.errors import FabsightError
from fabsight.io import write_folder, write_lswmd
from fabsight.synth import generate_dataset
from fabsight.wafer import Recipe, WaferClassifier, train
from fabsight.wafer.classifier import balance_weights, one_cycle
from fabsight.wafer.recipe import (
    DEFAULT_EPOCHS,
    SCRATCH_MIN_STEPS,
    harmonise,
    name_key,
    read_labelled,
    read_sources,
    schedule,
)

CLASSES = ("Center", "Edge-Ring", "Random")


def renamed(maps, mapping: dict[str, str]):
    return [replace(m, labels=tuple(mapping.get(x, x) for x in m.labels)) for m in maps]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> dict[str, Path]:
    """Two training sources spelling classes differently (folder + LSWMD pickle) and a val folder."""
    root = tmp_path_factory.mktemp("recipe")
    a = generate_dataset(20, classes=CLASSES, shapes=((30, 30),), seed=1)
    b = renamed(generate_dataset(20, classes=CLASSES, shapes=((26, 28),), seed=2), {"Edge-Ring": "edge_ring"})
    val = renamed(generate_dataset(6, classes=CLASSES, shapes=((40, 40),), seed=3), {"Random": "RANDOM"})
    write_folder(a, root / "a")
    write_lswmd(b, root / "b.pkl")
    write_folder(val, root / "val")
    return {"a": root / "a", "b": root / "b.pkl", "val": root / "val", "root": root}


def test_name_key_ignores_case_spaces_underscores_hyphens() -> None:
    assert {name_key(n) for n in ("Edge-Loc", "Edge_Loc", "edge loc", "EDGE--LOC")} == {"edgeloc"}
    assert name_key("Near-full") == name_key("Near_Full") != name_key("Loc")


def test_spellings_across_sources_become_one_known_name(sources) -> None:
    srcs = read_sources([sources["a"], sources["b"], sources["val"]])
    lines = harmonise(srcs)
    assert len(lines) == 2 and "edge_ring -> Edge-Ring" in lines[0] and "RANDOM -> Random" in lines[1]
    for s in srcs:
        assert {m.labels[0] for m in s.maps} == set(CLASSES)


def test_unknown_names_take_the_first_spelling_and_mixed_parts_are_renamed(tmp_path) -> None:
    base = generate_dataset(3, classes=("Center", "Loc"), shapes=((30, 30),), seed=0)
    write_folder(renamed(base, {"Center": "blob", "Loc": "center+edge_LOC"}), tmp_path / "x")
    write_folder(renamed(base, {"Center": "Blob"}), tmp_path / "y")
    srcs = read_sources([tmp_path / "x", tmp_path / "y"])
    harmonise(srcs)
    assert {m.labels[0] for m in srcs[1].maps} == {"blob", "Loc"}
    assert {m.labels[0] for m in srcs[0].maps} == {"blob", "Center+Edge-Loc"}


def test_two_spellings_in_one_source_are_refused_naming_it(tmp_path) -> None:
    maps = generate_dataset(2, classes=("Center", "Loc"), shapes=((30, 30),), seed=0)
    write_lswmd(renamed(maps, {"Center": "Edge-Loc", "Loc": "Edge_Loc"}), tmp_path / "two.pkl")
    with pytest.raises(FabsightError, match="'Edge-Loc' and 'Edge_Loc' differ only") as info:
        harmonise(read_sources([tmp_path / "two.pkl"]))
    assert "two.pkl" in str(info.value)


def test_unlabelled_or_empty_sources_are_refused(tmp_path) -> None:
    maps = generate_dataset(2, classes=("Center",), shapes=((30, 30),), seed=0)
    write_lswmd([replace(m, labels=()) for m in maps], tmp_path / "nolabels.pkl")
    with pytest.raises(FabsightError, match=r"no labelled maps \(2 unlabelled\): not usable as training data"):
        read_sources([tmp_path / "nolabels.pkl"])
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(FabsightError, match="empty file"):
        read_labelled(tmp_path / "empty.pkl")
    pd = pytest.importorskip("pandas")
    pd.DataFrame({"waferMap": [], "failureType": []}).to_pickle(tmp_path / "zero.pkl")  # a valid, empty LSWMD
    with pytest.raises(FabsightError, match="holds no wafer maps"):
        read_labelled(tmp_path / "zero.pkl")


def test_balance_weights_follow_each_mode() -> None:
    groups = np.array(["a"] * 4 + ["b"])
    p, w = balance_weights(groups, "sampling")
    assert np.allclose(p[:4].sum(), 0.5) and np.allclose(w, 1)
    p, w = balance_weights(groups, "sqrt")
    assert np.isclose(p[:4].sum() / p[4], 4 / 1 * 1 / 2)  # class mass ∝ sqrt(size): 2 vs 1
    p, w = balance_weights(groups, "loss")
    assert np.allclose(p, 0.2) and np.isclose(w.mean(), 1) and np.isclose(w[4] / w[0], 4)
    p, w = balance_weights(groups, "none")
    assert np.allclose(p, 0.2) and np.allclose(w, 1)


def test_one_cycle_warms_up_then_anneals() -> None:
    assert math.isclose(one_cycle(0.0), 1 / 25) and math.isclose(one_cycle(0.3), 1.0)
    assert one_cycle(1.0) < 1e-4 and one_cycle(0.65) < one_cycle(0.5) < 1.0


def test_train_on_sources_with_val_keeps_the_best_epoch(sources) -> None:
    with pytest.warns(UserWarning, match="class names harmonised") as caught:
        clf = train([sources["a"], sources["b"]], sources["val"], Recipe(epochs=3, input_size=32, threads=1))
    said = " ".join(str(w.message) for w in caught)
    assert "b.pkl: edge_ring -> Edge-Ring" in said and "val: RANDOM -> Random" in said
    assert clf.classes_ == list(CLASSES)
    t = clf.training_
    assert t["n_maps"] == t["n_train"] == 120 and t["n_validation"] == 18
    assert t["validation"].startswith("maps given to fit")
    stop = t["early_stopping"]
    assert [e for e, _ in stop["history"]] == [1, 2, 3]
    assert stop["best_score"] == max(s for _, s in stop["history"])
    assert (
        clf.metrics_["validation"]["n"] == 18 and "validation maps given" in clf.metrics_["validation"]["measured_on"]
    )


def test_default_schedule_gives_scratch_runs_a_step_floor(tmp_path) -> None:
    assert schedule(Recipe(), None) == {"epochs": DEFAULT_EPOCHS, "min_steps": SCRATCH_MIN_STEPS}
    assert schedule(Recipe(), tmp_path) == {"epochs": DEFAULT_EPOCHS, "min_steps": 0}  # fine-tuning: as before
    assert schedule(Recipe(epochs=4), None) == {"epochs": 4, "min_steps": 0}  # the user's count is kept


def test_min_steps_lengthens_each_epoch_of_a_small_set() -> None:
    maps = generate_dataset(15, classes=CLASSES, shapes=((30, 30),), seed=6)  # 36 trained on: 1 batch
    clf = WaferClassifier(input_size=32, epochs=2, min_steps=40, n_threads=1).fit(maps)
    stop = clf.training_["early_stopping"]
    assert stop["steps_per_epoch"] == 20 and [e for e, _ in stop["history"]] == [1, 2]
    plain = WaferClassifier(input_size=32, epochs=2, n_threads=1).fit(maps)
    assert plain.training_["early_stopping"]["steps_per_epoch"] == 8  # the old floor: 8 batches


def test_time_budget_cuts_training_short() -> None:
    maps = generate_dataset(30, classes=CLASSES, shapes=((30, 30),), seed=5)
    # patience=50: only the budget may end it, however fast the machine runs the first epochs
    clf = WaferClassifier(input_size=32, epochs=50, n_threads=1, max_minutes=0.05, patience=50).fit(maps)
    stop = clf.training_["early_stopping"]
    assert stop["stopped_by"] == "time budget" and clf.training_["seconds"] < 60
    assert stop["history"] and stop["history"][-1][0] < 50


def test_val_with_a_class_the_model_lacks_is_refused(sources, tmp_path) -> None:
    write_folder(generate_dataset(4, classes=("Center", "Donut"), shapes=((30, 30),), seed=8), tmp_path / "v")
    with pytest.raises(FabsightError, match="validation label 'Donut' is not one of"):
        train([sources["a"]], tmp_path / "v", Recipe(epochs=1, input_size=32, threads=1))
