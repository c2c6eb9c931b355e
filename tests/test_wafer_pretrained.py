"""The shipped WM-811K model: what every wafer command uses when no model is named, and where
few-shot ``wafer train`` starts (``--init pretrained``, or automatically for few-shot data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from clikit import invoke as run
from fabsight.cli.main import main
from fabsight.io import read_maps, write_folder, write_lswmd, write_mixedwm38
from fabsight.synth import generate_dataset
from fabsight.wafer.classifier import FEW_SHOT_HEAD, FEW_SHOT_MAX_PER_CLASS
from fabsight.wafer.pretrained import PRETRAINED_DIR, PRETRAINED_NAME
from fabsight.wafer.recipe import SCRATCH, Recipe, choose_start

CLASSES = ("Center", "Edge-Ring", "Scratch")
#: Every 41st map of the WM-811K validation piece: 304 maps of all nine classes in their real
#: proportions (the piece is sorted by class, so its first maps would all be Loc).
STRIDE = 41


@pytest.fixture(scope="module")
def val_sample(shared: Path, tmp_path_factory) -> Path:
    piece = shared / "data" / "wm811k" / "LSWMD_val.pkl"
    if not piece.is_file():
        pytest.skip("the WM-811K validation piece is not in ../shared")
    path = tmp_path_factory.mktemp("wm811k") / "val_sample.pkl"
    write_lswmd(read_maps(piece)[::STRIDE], path)
    return path


@pytest.fixture(scope="module")
def few(tmp_path_factory) -> Path:
    """Eight labelled maps per class: few-shot data."""
    root = tmp_path_factory.mktemp("few")
    write_folder(generate_dataset(8, classes=CLASSES, shapes=((30, 30), (40, 36)), seed=3), root / "few")
    return root / "few"


def test_predict_without_a_model_classifies_real_maps_with_the_shipped_one(val_sample) -> None:
    code, out, err = run("wafer", "predict", val_sample, "--json", "--threads", "1")
    assert code == 0, err
    result = json.loads(out)
    truth = [m.labels[0] for m in read_maps(val_sample)]
    predicted = [r["label"] for r in result["results"]]
    assert result["model"] == PRETRAINED_NAME and len(predicted) == len(truth) == 304
    accuracy = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    patterned = [(p, t) for p, t in zip(predicted, truth, strict=True) if t != "none"]
    assert accuracy >= 0.85  # chance (always "none") is 0.59; the card's validation accuracy is ~0.95
    assert sum(p == t for p, t in patterned) / len(patterned) >= 0.7


def test_pretrained_by_name_and_the_old_positional_model_give_the_same_answers(val_sample, tmp_path) -> None:
    subset = tmp_path / "s.pkl"
    write_lswmd(read_maps(val_sample)[:40], subset)
    code, out, err = run("wafer", "eval", subset, "--model", PRETRAINED_NAME, "--json", "--threads", "1")
    assert code == 0, err
    named = json.loads(out)
    assert named["model"] == PRETRAINED_NAME and named["n"] == 40
    code, out, _ = run("wafer", "eval", PRETRAINED_DIR, subset, "--json", "--threads", "1")  # `eval MODEL DATA`
    assert code == 0 and json.loads(out)["confusion"] == named["confusion"]
    assert json.loads(out)["model"] == str(PRETRAINED_DIR)
    code, out, _ = run("wafer", "predict", PRETRAINED_DIR, subset, "--json")  # `predict MODEL INPUTS`
    labels = [r["label"] for r in json.loads(out)["results"]]
    code2, out2, _ = run("wafer", "predict", subset, "--json")
    assert code == code2 == 0 and labels == [r["label"] for r in json.loads(out2)["results"]]
    code, _, err = run("wafer", "eval", PRETRAINED_DIR, subset, "--model", PRETRAINED_DIR)
    assert code == 2 and "given both as --model and as the first argument" in err


def test_a_missing_shipped_model_is_one_error_line(tmp_path, monkeypatch, capsys) -> None:
    import fabsight.wafer.pretrained as pretrained

    monkeypatch.setattr(pretrained, "PRETRAINED_DIR", tmp_path / "wm811k")
    np_map = tmp_path / "m.npy"
    np.save(np_map, np.ones((20, 20), dtype=np.uint8))
    monkeypatch.setattr(sys, "argv", ["fabsight", "wafer", "predict", str(np_map)])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'wm811k'}: the shipped wafer model is missing "
                                       "(broken install?)\n")


def test_init_pretrained_is_recorded_in_the_card(few, tmp_path) -> None:
    code, _, err = run("wafer", "train", few, "--init", PRETRAINED_NAME, "--epochs", "1", "--threads", "1",
                         "--out", tmp_path / "m", "--json")
    assert code == 0, err
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["training"]["init"] == PRETRAINED_NAME and card["training"]["start"] == "from pretrained (--init)"
    assert card["extra"]["head"] == FEW_SHOT_HEAD and card["input"]["size"] == json.loads(
        (PRETRAINED_DIR / "card.json").read_text())["input"]["size"]


def test_few_shot_data_starts_from_the_shipped_model_unless_told_not_to(few, tmp_path) -> None:
    code, out, err = run("wafer", "train", few, "--epochs", "1", "--threads", "1", "--out", tmp_path / "auto")
    assert code == 0, err
    assert "training started from the shipped WM-811K model (pretrained): few-shot data" in " ".join(out.split())
    card = json.loads((tmp_path / "auto" / "card.json").read_text())
    assert card["training"]["init"] == PRETRAINED_NAME and card["extra"]["head"] == FEW_SHOT_HEAD
    assert "the rarest class has 8 maps" in card["training"]["start"]
    code, out, err = run("wafer", "train", few, "--init", SCRATCH, "--epochs", "1", "--threads", "1",
                         "--out", tmp_path / "scratch", "--json")
    assert code == 0, err
    training = json.loads(out)["training"]
    assert training["init"] is None and training["head"] == "scratch"
    assert training["start"] == "from scratch (--init none)"


def test_choose_start_only_takes_the_shipped_model_for_single_label_few_shot_data(tmp_path) -> None:
    few_maps = generate_dataset(FEW_SHOT_MAX_PER_CLASS, classes=CLASSES, shapes=((30, 30),), seed=0)
    init, why = choose_start(Recipe(), few_maps, multilabel=False)
    assert init == PRETRAINED_DIR and "shipped WM-811K model" in why
    more = few_maps + generate_dataset(1, classes=CLASSES, shapes=((30, 30),), seed=1)  # 21 of each class
    assert choose_start(Recipe(), more, multilabel=False) == (None, "from scratch")
    assert choose_start(Recipe(), few_maps, multilabel=True) == (None, "from scratch")
    assert choose_start(Recipe(arch="tiny"), few_maps, multilabel=False)[0] is None
    assert choose_start(Recipe(input_size=32), few_maps, multilabel=False)[0] is None
    assert choose_start(Recipe(init=SCRATCH), few_maps, multilabel=False) == (None, "from scratch (--init none)")
    # a few mixed-type maps (MixedWM38 .npz) train from scratch: the shipped model is single-label
    write_mixedwm38(generate_dataset(6, classes=("Center", "Center+Edge-Ring", "none"), seed=2), tmp_path / "x.npz")
    code, out, err = run("wafer", "train", tmp_path / "x.npz", "--epochs", "1", "--threads", "1",
                         "--out", tmp_path / "m", "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["multilabel"] and r["training"]["start"] == "from scratch" and r["head"] == "scratch"


def test_explain_and_batch_use_the_shipped_model_by_default(shared, tmp_path) -> None:
    klarf = shared / "fixtures" / "klarf" / "QUU_NUU.000"
    code, out, err = run("explain", klarf, "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["model"] == PRETRAINED_NAME
    assert all(not r["explanation"].startswith("No classifier was given") for r in result["results"])
    code, out, err = run("ask", klarf, "How many wafers does the file hold?", "--json")
    assert code == 0 and json.loads(out)["model"] == PRETRAINED_NAME
    code, out, err = run("batch", klarf, "--out", tmp_path / "b.parquet", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["model"] == str(PRETRAINED_DIR) and summary["rows"] == 3


def test_serve_classifies_with_the_shipped_model_when_none_is_named(tmp_path, monkeypatch, capsys) -> None:
    import fabsight.serve as serve

    started: dict = {}
    monkeypatch.setattr(serve, "run", lambda app, host, port, **_kw: started.update(app=app))
    monkeypatch.setattr(sys, "argv", ["fabsight", "serve", "--db", str(tmp_path / "s.sqlite"), "--json"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert not exc.value.code and started
    assert json.loads(capsys.readouterr().out)["wafer_model"].startswith(f"{PRETRAINED_DIR.name} (")


def test_the_shipped_onnx_graph_decides_as_pytorch_on_real_maps(val_sample) -> None:
    """The shipped model carries its ONNX graph, so ``--runtime onnx`` (the fast path) needs no
    export step, and it labels real maps exactly as the PyTorch network does."""
    from fabsight.deploy import load_predictor

    maps = read_maps(val_sample)
    torch_rows = load_predictor(PRETRAINED_NAME, "torch", n_threads=1).predict_details(maps)
    onnx_rows = load_predictor(PRETRAINED_NAME, "onnx", n_threads=1).predict_details(maps)
    assert [r["label"] for r in onnx_rows] == [r["label"] for r in torch_rows]
    assert np.allclose([r["probability"] for r in onnx_rows], [r["probability"] for r in torch_rows], atol=1e-4)
    assert [r["needs_review"] for r in onnx_rows] == [r["needs_review"] for r in torch_rows]
