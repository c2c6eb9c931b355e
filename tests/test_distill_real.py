"""Distilling the shipped WM-811K model on real unlabelled maps (sizes, imitation, ONNX).

The long run and its validation-piece numbers are in benchmarks/distill_real.py; here a
short distillation on 3,000 real maps of one train piece (labels never read) is checked on
623 maps of another piece that the student never saw.
"""

from __future__ import annotations

import json
from collections import Counter
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.deploy import export_onnx, load_predictor
from fabsight.distill import MIN_COMPRESSION, WaferDistiller, student_size
from fabsight.errors import FabsightError
from fabsight.io import read_maps
from fabsight.wafer import WaferClassifier, load_model
from fabsight.wafer.net import ARCHITECTURES, WaferNet, n_flops, n_parameters
from fabsight.wafer.pretrained import pretrained_dir


@cache
def _cost(arch: str, n_classes: int = 9, px: int = 64) -> tuple[int, int]:
    net = WaferNet(n_classes, *ARCHITECTURES[arch])
    return n_parameters(net), n_flops(net, px)


def _teacher(arch: str) -> WaferClassifier:
    """A fitted-looking 9-class classifier of ``arch`` (only its network's size matters here)."""
    clf = WaferClassifier()
    clf.classes_, clf.input_size_ = [str(i) for i in range(9)], 64
    clf.net_ = WaferNet(9, *ARCHITECTURES[arch])
    return clf


@pytest.mark.parametrize(("teacher", "student"), [("compact", "micro"), ("medium", "tiny"), ("wide", "small")])
def test_auto_size_is_the_largest_member_ten_times_smaller(teacher, student) -> None:
    assert student_size(_teacher(teacher)) == student
    t, s = _cost(teacher), _cost(student)
    assert t[0] >= MIN_COMPRESSION * s[0] and t[1] >= MIN_COMPRESSION * s[1]
    bigger = [a for a in ARCHITECTURES if _cost(a)[0] > s[0]]
    # every bigger member breaks the bound in parameters or in FLOPs
    assert all(t[0] < MIN_COMPRESSION * _cost(a)[0] or t[1] < MIN_COMPRESSION * _cost(a)[1] for a in bigger)


def test_auto_size_refuses_a_teacher_too_small_to_shrink() -> None:
    with pytest.raises(FabsightError, match="no student size is 10x smaller"):
        student_size(_teacher("tiny"))


@pytest.fixture(scope="module")
def wm811k(shared: Path) -> Path:
    d = shared / "data" / "wm811k"
    if not (d / "LSWMD_train_10.pkl").is_file():
        pytest.skip("the WM-811K train pieces are not in ../shared/data/wm811k")
    return d


@pytest.fixture(scope="module")
def held_out(wm811k: Path) -> list:
    """train_01: maps the student never sees (the teacher did: it was trained on every train piece)."""
    return read_maps(wm811k / "LSWMD_train_01.pkl")


@pytest.fixture(scope="module")
def distilled(wm811k: Path) -> WaferDistiller:
    maps = read_maps(wm811k / "LSWMD_train_10.pkl")
    keep = np.random.default_rng(0).choice(len(maps), size=3000, replace=False)
    grids = [maps[i].grid for i in keep]  # the labels stay behind
    recipe = {"temperature": 2.0, "hard_weight": 0.5, "class_balance": 0.5, "learning_rate": 5e-3}
    return WaferDistiller(epochs=3, validation_fraction=0.1, n_threads=1, **recipe).fit(grids)


def test_short_real_distillation_imitates_the_shipped_model(distilled, held_out) -> None:
    assert distilled.size_ == "micro"
    c = distilled.compression_
    assert c["parameter_ratio"] >= 10 and c["flop_ratio"] >= 10
    assert distilled.student_.training_["distilled_from"] == str(pretrained_dir())
    student, teacher = distilled.student_.predict(held_out), distilled.teacher_.predict(held_out)
    agree = np.mean(np.array(student) == np.array(teacher))
    # Always answering "none" agrees on 59 % of these maps; 0.80 needs the patterns learnt.
    # These 126 steps reach 0.85; the full runs of docs/benchmarks.md reach 0.96.
    assert Counter(teacher)["none"] / len(teacher) < 0.62
    assert agree >= 0.80
    assert len(set(student)) >= 5  # not a majority-class model


def test_exported_student_decides_as_torch(distilled, held_out, tmp_path) -> None:
    distilled.student_.save(tmp_path / "s")
    export_onnx(tmp_path / "s", sample=held_out[:128], n_threads=1)
    torch_pred = load_predictor(tmp_path / "s", "torch", n_threads=1).predict(held_out)
    onnx_pred = load_predictor(tmp_path / "s", "onnx", n_threads=1).predict(held_out)
    assert onnx_pred == torch_pred


def test_cli_distills_the_shipped_model_by_default(wm811k, tmp_path) -> None:
    args = ["distill", "--unlabeled", str(wm811k / "LSWMD_train_01.pkl"), "--epochs", "1", "--class-balance", "0.5"]
    result = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "s"), "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["teacher"] == str(pretrained_dir()) and r["training"]["distilled_from"] == str(pretrained_dir())
    assert r["compression"]["student"]["size"] == "micro"
    assert r["training"]["class_balanced_sampling"].endswith("weight n^-0.5")
    assert r["compression"]["parameter_ratio"] >= 10 and r["compression"]["flop_ratio"] >= 10
    assert load_model(tmp_path / "s").net_.config["widths"] == list(ARCHITECTURES["micro"][0])
