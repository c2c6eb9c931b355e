"""Self-training on unlabelled wafer maps (``fit(unlabeled=...)``, ``wafer train --unlabeled``).

Generated maps with known answers: a few labels on one die pitch, unlabelled and test maps
of a new product with larger grids (the usual case of a fab that labelled one product). The
pseudo-labels are more accurate than the teacher's guesses and the student beats the
teacher on the new grids; bad unlabelled input is one error line."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from clikit import run_cli
from fabsight.io import write_folder, write_lswmd, write_mixedwm38
from fabsight.synth import generate_dataset
from fabsight.wafer import WaferClassifier, load_model
from fabsight.wafer.recipe import read_unlabeled

CLASSES = ("Center", "Donut", "Edge-Loc", "Loc", "Scratch", "none")
LABELLED_SHAPES = ((26, 26),)
NEW_SHAPES = ((60, 60), (72, 72))
SETTINGS = {"input_size": 32, "epochs": 6, "n_threads": 1, "random_state": 0}


@pytest.fixture(scope="module")
def maps() -> dict[str, list]:
    """Few labels, a larger pool whose truth the test knows, held-out validation and test maps."""
    return {
        "labelled": generate_dataset(4, classes=CLASSES, shapes=LABELLED_SHAPES, seed=1),
        "pool": generate_dataset(60, classes=CLASSES, shapes=NEW_SHAPES, seed=2),
        "val": generate_dataset(5, classes=CLASSES, shapes=LABELLED_SHAPES, seed=3),
        "test": generate_dataset(40, classes=CLASSES, shapes=NEW_SHAPES, seed=4),
    }


@pytest.fixture(scope="module")
def fitted(maps) -> tuple[WaferClassifier, WaferClassifier]:
    teacher = WaferClassifier(**SETTINGS).fit(maps["labelled"], val_maps=maps["val"])
    unlabelled = [replace(m, labels=()) for m in maps["pool"]]
    student = WaferClassifier(**SETTINGS, rounds=2).fit(maps["labelled"], val_maps=maps["val"], unlabeled=unlabelled)
    return teacher, student


def accuracy(clf: WaferClassifier, maps: list) -> float:
    return float(np.mean([p == m.labels[0] for p, m in zip(clf.predict(maps), maps, strict=True)]))


def test_pseudo_labels_are_more_accurate_than_the_teacher(fitted, maps) -> None:
    teacher, student = fitted
    first = student.pseudo_labels_[0]
    truth = np.array([m.labels[0] for m in maps["pool"]])
    names = np.array(student.classes_)[first["label"]]
    precision = float(np.mean(names == truth[first["index"]]))
    # The first round's teacher is the supervised-only model (same seed, same labels).
    assert student.self_training_["teacher"]["early_stopping"] == teacher.training_["early_stopping"]
    assert 0 < len(first["index"]) < len(truth)  # a confident subset, not the whole pool
    assert precision > accuracy(teacher, maps["test"]) + 0.1  # measured 1.0 against 0.71
    assert (first["confidence"] >= 0.9).all()


def test_student_beats_the_teacher_and_the_card_says_how(fitted, maps, tmp_path) -> None:
    teacher, student = fitted
    assert accuracy(student, maps["test"]) > accuracy(teacher, maps["test"]) + 0.03  # measured 0.76 against 0.71
    record = student.training_["self_training"]
    assert record["n_unlabeled"] == len(maps["pool"]) and record["threshold"] == 0.9
    assert [r["round"] for r in record["rounds"]] == [1, 2]
    for r, pl in zip(record["rounds"], student.pseudo_labels_, strict=True):
        assert sum(r["pseudo_labelled"].values()) == len(pl["index"])
        assert r["student"]["n_train"] == len(maps["labelled"]) + len(pl["index"])
        assert all(0.9 <= v <= 1.0 for v in r["least_confidence_kept"].values())
    student.save(tmp_path / "m")
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["self_training"]["rounds"][1]["pseudo_labelled"] == record["rounds"][1]["pseudo_labelled"]
    assert load_model(tmp_path / "m").predict(maps["test"][:5]) == student.predict(maps["test"][:5])


def test_cli_unlabeled_ignores_labels_and_reports_pseudo_labels(maps, tmp_path, capsys) -> None:
    write_folder(maps["labelled"], tmp_path / "labelled")
    write_lswmd(maps["pool"][::3], tmp_path / "pool.pkl")  # labelled rows: used as unlabelled
    found, described = read_unlabeled([tmp_path / "pool.pkl"])
    assert len(found) == 120 and not any(m.labels for m in found) and "120 maps used unlabelled" in described[0]
    code, out, err = run_cli([
        "wafer", "train", tmp_path / "labelled", "--unlabeled", tmp_path / "pool.pkl", "--out", tmp_path / "m",
        "--epochs", "2", "--input-size", "32", "--threads", "1", "--pseudo-threshold", "0.5", "--json",
    ], capsys)  # fmt: skip
    assert code == 0, err
    record = json.loads(out)["training"]["self_training"]
    assert record["n_unlabeled"] == 120 and record["threshold"] == 0.5
    assert "unlabelled:" in json.loads(out)["training"]["data"]


def test_bad_unlabelled_input_is_one_error_line(maps, tmp_path, capsys) -> None:
    write_folder(maps["labelled"][:12], tmp_path / "labelled")
    (tmp_path / "empty").mkdir()
    fast = ["--epochs", "1", "--input-size", "32", "--threads", "1"]
    for source, message in ((tmp_path / "empty", "no .png/.npy wafer maps"), (tmp_path / "nope.pkl", "nope.pkl")):
        args = ["wafer", "train", tmp_path / "labelled", "--unlabeled", source, "--out", tmp_path / "m", *fast]
        code, _, err = run_cli(args, capsys)
        assert code == 2 and err.startswith("error: ") and message in err and err.strip().count("\n") == 0
    mixed = generate_dataset(3, classes=("Center", "Loc", "Center+Loc"), mixed=True, seed=5)
    write_mixedwm38(mixed, tmp_path / "mixed.npz")
    args = ["wafer", "train", tmp_path / "mixed.npz", "--unlabeled", tmp_path / "labelled", "--out", tmp_path / "m"]
    code, _, err = run_cli([*args, *fast], capsys)
    assert code == 2 and "single-label only" in err
    assert not (tmp_path / "m").exists()


def test_single_example_warning_says_what_can_be_learnt(maps, tmp_path, capsys) -> None:
    donut = [m for m in maps["labelled"] if m.labels[0] == "Donut"]
    few = [m for m in maps["labelled"] if m.labels[0] != "Donut"] + donut[:1]
    write_folder(few, tmp_path / "few")
    write_folder(maps["pool"][:30], tmp_path / "pool")
    code, _, err = run_cli([
        "wafer", "train", tmp_path / "few", "--unlabeled", tmp_path / "pool", "--out", tmp_path / "m",
        "--epochs", "1", "--input-size", "32", "--threads", "1",
    ], capsys)  # fmt: skip
    text = " ".join(err.split())
    assert code == 0 and "class 'Donut' has a single example" in text and "variants unlike that map" in text
