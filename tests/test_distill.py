"""Distillation of a wide wafer teacher into a tiny student, from unlabelled maps only.

Teacher and students are trained for a few dozen steps at 32×32 input so the file runs
in well under a minute on two cores; real accuracy is in benchmarks/distill_export.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.distill import WaferDistiller, synthetic_classes
from fabsight.errors import FabsightError
from fabsight.io import write_folder
from fabsight.synth import generate_dataset
from fabsight.wafer import WaferClassifier, evaluate, load_model
from fabsight.wafer.net import ARCHITECTURES

SINGLE = ("Center", "Edge-Ring", "Random")
MIXED = ("Center", "Edge-Ring", "Center+Edge-Ring", "none")
FAST = {"input_size": 32, "epochs": 3, "batch_size": 32, "n_threads": 2}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("distill") / "teacher"
    widths, embed_dim = ARCHITECTURES["wide"]
    train = generate_dataset(30, classes=SINGLE, shapes=((30, 30), (52, 52)), seed=0)
    WaferClassifier(widths=widths, embed_dim=embed_dim, **FAST).fit(train).save(d)
    return d


@pytest.fixture(scope="module")
def distilled(teacher) -> WaferDistiller:
    # Plain grids: the distiller never sees a label; fresh generated maps and mixup on top.
    unlabelled = [m.grid for m in generate_dataset(40, classes=SINGLE, shapes=((36, 36), (60, 48)), seed=3)]
    d = WaferDistiller(str(teacher), size="tiny", epochs=4, batch_size=32, synthetic_per_epoch=60, mixup=0.2)
    return d.fit(unlabelled)


@pytest.fixture(scope="module")
def test_maps() -> list:
    return generate_dataset(20, classes=SINGLE, shapes=((26, 26), (80, 64)), seed=11)


def test_student_is_ten_times_smaller_and_imitates_the_teacher(distilled, test_maps) -> None:
    c = distilled.compression_
    assert c["parameter_ratio"] >= 10 and c["flop_ratio"] >= 10
    assert c["student"]["widths"] == list(ARCHITECTURES["tiny"][0])
    student, teacher = distilled.student_, distilled.teacher_
    assert student.classes_ == teacher.classes_ == list(SINGLE)
    agree = np.mean(np.array(student.predict(test_maps)) == np.array(teacher.predict(test_maps)))
    assert agree >= 0.85
    assert evaluate(student, test_maps)["accuracy"] >= 0.85  # chance is 1/3; no label was used
    assert distilled.predict(test_maps[:3]) == student.predict(test_maps[:3])
    recipe = student.training_["distillation"]
    assert recipe["synthetic_per_epoch"] == 60 and recipe["mixup"] == 0.2 and "hard" not in recipe["final_losses"]


def test_generated_maps_are_fresh_each_epoch_and_only_of_known_patterns(teacher) -> None:
    clf = load_model(teacher)
    assert synthetic_classes(clf) == list(SINGLE)  # in WM-811K order, nothing the teacher lacks
    mixed = WaferClassifier(multilabel=True)
    mixed.classes_ = ["Center", "Edge-Ring"]
    assert {"+".join(c) for c in synthetic_classes(mixed)} == set(MIXED)
    d = WaferDistiller(clf, synthetic_per_epoch=7)
    first, again, second = (d._synthetic_inputs(clf, e, seed=0) for e in (0, 0, 1))
    assert first.shape == (9, 3, 32, 32) and first.dtype == np.float16  # 3 per pattern
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, second)
    np.testing.assert_allclose(first.astype(np.float32).sum(axis=1), 1.0, atol=3e-3)


def test_student_is_a_calibrated_model_directory(distilled, tmp_path, test_maps) -> None:
    distilled.student_.save(tmp_path / "student")
    card = json.loads((tmp_path / "student" / "card.json").read_text())
    assert card["task"] == "wafer-pattern" and card["extra"]["head"] == "distilled"
    assert card["training"]["labels_used"].startswith("none")
    assert card["training"]["compression"]["parameter_ratio"] >= 10
    v = card["metrics"]["validation"]
    assert "teacher's predictions" in v["measured_on"] and v["temperature"] > 0
    loaded = load_model(tmp_path / "student")
    assert loaded.predict(test_maps) == distilled.student_.predict(test_maps)
    assert card["backbone"]["parameters"] == distilled.compression_["student"]["parameters"]


def test_continuing_a_student_with_attention_transfer(distilled, test_maps) -> None:
    teacher, before = distilled.teacher_, distilled.student_
    unlabelled = [m.grid for m in generate_dataset(20, classes=SINGLE, shapes=((44, 44),), seed=8)]
    d = WaferDistiller(teacher, size="tiny", epochs=1, batch_size=32, attention_weight=2.0, init=before)
    after = d.fit(unlabelled).student_
    recipe = after.training_["distillation"]
    assert recipe["continued_from"] and recipe["final_losses"]["attention"] > 0
    # Eight more steps keep what the earlier imitation learnt.
    agree = np.mean(np.array(after.predict(test_maps)) == np.array(teacher.predict(test_maps)))
    assert agree >= 0.8
    assert not any(layer._forward_hooks for layer in teacher.net_.features)  # no hook left behind
    with pytest.raises(FabsightError, match="is not a small student"):
        WaferDistiller(teacher, size="small", init=before).fit(unlabelled)


def test_mixed_type_teacher_with_labelled_holdout(tmp_path) -> None:
    train = generate_dataset(25, classes=MIXED, shapes=((30, 30), (52, 52)), seed=1)
    teacher = WaferClassifier(multilabel=True, **FAST).fit(train)
    unlabelled = [m.grid for m in generate_dataset(30, classes=MIXED, shapes=((40, 40),), seed=4)]
    holdout = generate_dataset(5, classes=MIXED, shapes=((44, 44),), seed=5)
    d = WaferDistiller(teacher, size="tiny", epochs=3, batch_size=32, hard_weight=0.5).fit(unlabelled, holdout=holdout)
    student = d.student_
    assert student.multilabel and student.classes_ == ["Center", "Edge-Ring"]
    assert student.metrics_["validation"]["measured_on"] == "20 labelled holdout maps (true labels)"
    test = generate_dataset(10, classes=MIXED, shapes=((52, 52),), seed=13)
    agree = np.mean([a == b for a, b in zip(student.predict(test), teacher.predict(test), strict=True)])
    assert agree >= 0.75 and d.agreement_ is not None
    assert d.student_.training_["distillation"]["soft_target_loss"].startswith("binary cross-entropy")
    assert d.student_.training_["distillation"]["final_losses"]["hard"] > 0


def test_bad_parameters(teacher) -> None:
    maps = [m.grid for m in generate_dataset(10, classes=SINGLE, seed=2)]
    with pytest.raises(FabsightError, match="at least 16"):
        WaferDistiller(str(teacher)).fit(maps[:5])
    with pytest.raises(ValueError, match="size must be 'auto' or one of"):
        WaferDistiller(str(teacher), size="huge").fit(maps)
    with pytest.raises(ValueError, match="mixup must be >= 0"):
        WaferDistiller(str(teacher), mixup=-1).fit(maps)


def run(*args: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(result.exception, FabsightError):  # main() prints these as one line, exit 2
        return 2, "", f"error: {result.exception}"
    return result.exit_code, result.stdout, result.stderr


def test_cli_distills_from_a_folder_plus_synthetic_maps(teacher, tmp_path) -> None:
    write_folder(generate_dataset(8, classes=SINGLE, shapes=((40, 40),), seed=7), tmp_path / "maps")
    code, out, err = run(
        "distill",
        teacher,
        "--unlabeled",
        tmp_path / "maps",
        "--synthetic",
        4,
        "--synthetic-per-epoch",
        9,
        "--hard-weight",
        0.3,
        "--epochs",
        1,
        "--out",
        tmp_path / "s",
        "--json",
    )
    assert code == 0, err
    r = json.loads(out)
    assert r["compression"]["flop_ratio"] >= 10 and r["training"]["n_maps"] == 24 + 12
    assert r["training"]["distilled_from"] == str(teacher)
    assert r["training"]["distillation"]["synthetic_per_epoch"] == 9
    assert r["training"]["distillation"]["hard_weight"] == 0.3
    assert load_model(tmp_path / "s").classes_ == list(SINGLE)
    code, _, err = run("distill", teacher, "--out", tmp_path / "x")
    assert code == 2 and "--unlabeled" in err
    code, _, err = run("distill", teacher, "--synthetic", 2, "--size", "wide", "--out", tmp_path / "x")
    assert code == 2 and "--size must be one of" in err
    code, _, err = run("distill", tmp_path, "--synthetic", 2, "--out", tmp_path / "x")
    assert code == 2 and "card.json" in err
    assert not (tmp_path / "x").exists()


def test_training_device_is_history_not_a_setting(teacher, distilled, tmp_path) -> None:
    # Where a model trained goes to the card's training record; the hyper-parameters a
    # loaded model is rebuilt from never carry it, so a GPU-trained model loads on a CPU.
    assert distilled.student_.training_["device"] == "cpu"
    distilled.student_.save(tmp_path / "s")
    card = json.loads((tmp_path / "s" / "card.json").read_text())
    assert card["training"]["device"] == "cpu" and "device" not in card["extra"]["hyperparameters"]
    assert json.loads((teacher / "card.json").read_text())["training"]["device"] == "cpu"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_asking_for_a_missing_gpu_fails_before_any_work(teacher) -> None:
    maps = [m.grid for m in generate_dataset(10, classes=SINGLE, seed=2)]
    with pytest.raises(FabsightError, match="no CUDA GPU"):
        WaferDistiller(str(teacher), device="cuda").fit(maps)
    with pytest.raises(FabsightError, match="no CUDA GPU"):
        WaferClassifier(device="cuda", **FAST).fit(generate_dataset(5, classes=SINGLE, seed=1))
    code, _, err = run("wafer", "train", "--synthetic", 5, "--device", "cuda", "--out", teacher.parent / "x")
    assert code == 2 and "no CUDA GPU" in err and not (teacher.parent / "x").exists()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_gives_a_cpu_model_of_the_same_quality(teacher, test_maps) -> None:
    unlabelled = [m.grid for m in generate_dataset(40, classes=SINGLE, shapes=((36, 36), (60, 48)), seed=3)]
    d = WaferDistiller(str(teacher), size="tiny", epochs=4, batch_size=32, device="cuda").fit(unlabelled)
    assert next(d.student_.net_.parameters()).device.type == "cpu"
    assert next(d.teacher_.net_.parameters()).device.type == "cpu"
    assert d.student_.training_["device"] == "cuda"
    assert evaluate(d.student_, test_maps)["accuracy"] >= 0.8
