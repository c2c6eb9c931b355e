"""ONNX export and the ONNX Runtime predictor, on tiny wafer models with known patterns.

Each model is exported once per module (the torch.export-based exporter takes seconds);
the checks compare ONNX Runtime with PyTorch on maps of other grid sizes than training.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.deploy import export as export_module
from fabsight.deploy import export_onnx, load_predictor
from fabsight.deploy.quantize import WAFER_RECIPE
from fabsight.errors import FabsightError, ModelError
from fabsight.io import write_folder, write_mixedwm38
from fabsight.synth import generate_dataset
from fabsight.wafer import WaferClassifier

SINGLE = ("Center", "Edge-Ring", "Random")
MIXED = ("Center", "Edge-Ring", "Center+Edge-Ring", "none")
FAST = {"input_size": 32, "epochs": 3, "batch_size": 32, "n_threads": 2}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("deploy") / "single"
    WaferClassifier(**FAST).fit(generate_dataset(30, classes=SINGLE, shapes=((30, 30), (52, 52)), seed=0)).save(d)
    sample = generate_dataset(10, classes=SINGLE, shapes=((40, 40),), seed=5)
    export_onnx(d, int8=True, sample=sample)
    return d


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> tuple[Path, dict]:
    """A multi-label model exported through the CLI, with a user-given sample file."""
    root = tmp_path_factory.mktemp("deploy")
    train = generate_dataset(25, classes=MIXED, shapes=((30, 30), (52, 52)), seed=1)
    WaferClassifier(multilabel=True, **FAST).fit(train).save(root / "mixed")
    write_mixedwm38(generate_dataset(6, classes=MIXED, shapes=((52, 52),), seed=6), root / "sample.npz")
    args = ["export", str(root / "mixed"), "--onnx", "--sample", str(root / "sample.npz"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return root / "mixed", json.loads(result.stdout)


@pytest.fixture(scope="module")
def plain(tmp_path_factory) -> Path:
    """A model that was never exported."""
    d = tmp_path_factory.mktemp("deploy") / "plain"
    WaferClassifier(**{**FAST, "epochs": 1}).fit(generate_dataset(12, classes=SINGLE, seed=2)).save(d)
    return d


@pytest.fixture(scope="module")
def maps() -> list:
    # 300 maps: more than one 256-map batch, of grid sizes the models never saw.
    return generate_dataset(100, classes=SINGLE, shapes=((26, 26), (80, 64)), seed=11)


def test_card_records_the_checked_export(single) -> None:
    card = json.loads((single / "card.json").read_text())
    info = card["extra"]["onnx"]
    assert card["files"]["onnx"] == "model.onnx" and card["files"]["onnx_int8"] == "model.int8.onnx"
    assert (single / "model.onnx").is_file() and (single / "model.int8.onnx").is_file()
    assert info["opset"] == 18 and info["input"] == "maps" and info["outputs"] == ["logits", "embedding"]
    assert info["input_shape"] == ["batch", 3, 32, 32]
    check = info["check"]
    assert check["n_maps"] == 30 and check["max_abs_prob_diff"] <= check["tolerance"] == 1e-4
    assert 0.0 <= info["int8"]["prediction_agreement"] <= 1.0 and info["int8"]["accuracy_int8"] is not None
    # the recipe and its speed on this CPU are in the card, so nobody has to guess either
    q = info["int8"]
    assert q["recipe"] == WAFER_RECIPE.name and q["method"] == WAFER_RECIPE.describe() and q["speed_vs_fp32"] > 0
    assert q["calibration"] == check["sample"] and q["calibration_inputs"] == 30
    # thresholds stay in the card, outside the graph
    assert {"temperature", "review_threshold", "ood"} <= set(card["extra"])


def test_onnx_predictor_matches_torch_on_unseen_grids(single, maps) -> None:
    torch_clf = load_predictor(single, "torch")
    onnx_clf = load_predictor(single, "onnx")
    p_t, p_o = torch_clf.predict_proba(maps), onnx_clf.predict_proba(maps)
    assert p_o.shape == (300, 3)
    assert np.abs(p_t - p_o).max() <= 1e-4
    assert onnx_clf.predict(maps) == torch_clf.predict(maps)
    np.testing.assert_allclose(onnx_clf.embed(maps[:5]), torch_clf.embed(maps[:5]), atol=1e-4)
    d_t, d_o = torch_clf.predict_details(maps[:20]), onnx_clf.predict_details(maps[:20])
    assert [d["label"] for d in d_o] == [d["label"] for d in d_t]
    assert [d["needs_review"] for d in d_o] == [d["needs_review"] for d in d_t]
    # dynamic batch: one map at a time gives the same answer
    assert onnx_clf.predict(maps[:1]) == torch_clf.predict(maps[:1])
    truth = [m.labels[0] for m in maps]
    assert np.mean(np.array(onnx_clf.predict(maps)) == np.array(truth)) >= 0.85  # chance is 1/3


def test_int8_predictor_stays_close(single, maps) -> None:
    torch_pred = load_predictor(single, "torch").predict(maps)
    int8_pred = load_predictor(single, "onnx-int8").predict(maps)
    assert np.mean(np.array(int8_pred) == np.array(torch_pred)) >= 0.9


def test_multilabel_export_through_the_cli_matches_torch(mixed) -> None:
    mixed, result = mixed
    assert result["onnx"]["check"]["sample"] == "24 maps given by the user"
    assert result["onnx"]["int8"] is None and "onnx_int8" not in result["files"]
    maps = generate_dataset(10, classes=MIXED, shapes=((26, 26), (64, 64)), seed=12)
    torch_clf, onnx_clf = load_predictor(mixed, "torch"), load_predictor(mixed, "onnx")
    assert onnx_clf.multilabel and onnx_clf.classes_ == ["Center", "Edge-Ring"]
    assert np.abs(torch_clf.predict_proba(maps) - onnx_clf.predict_proba(maps)).max() <= 1e-4
    assert onnx_clf.predict(maps) == torch_clf.predict(maps)
    assert not (mixed / "model.int8.onnx").exists()


_NO_TORCH = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
import numpy as np
from fabsight.deploy import load_predictor
from fabsight.synth import generate_dataset
maps = generate_dataset(10, classes=("Center", "Edge-Ring", "Random"), shapes=((26, 26), (80, 64)), seed=11)
clf = load_predictor(sys.argv[1], "onnx")
print(json.dumps({"pred": clf.predict(maps), "torch_loaded": "torch" in sys.modules}))
"""


def test_onnx_runtime_needs_no_torch(single, maps) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-c", _NO_TORCH, str(single)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert not result["torch_loaded"]
    expected = load_predictor(single, "torch").predict(
        generate_dataset(10, classes=SINGLE, shapes=((26, 26), (80, 64)), seed=11)
    )
    assert result["pred"] == expected


def test_failed_check_writes_nothing(tmp_path, single, plain, monkeypatch) -> None:
    d = tmp_path / "m"
    d.mkdir()
    for f in plain.iterdir():
        (d / f.name).write_bytes(f.read_bytes())
    before = json.loads((d / "card.json").read_text())

    def reuse_graph(clf, path, opset, example) -> None:  # skip the slow exporter: the check is what is tested
        path.write_bytes((single / "model.onnx").read_bytes())

    monkeypatch.setattr(export_module, "_export_graph", reuse_graph)
    with pytest.raises(ModelError, match="differs from PyTorch"):
        export_onnx(d, sample=generate_dataset(4, classes=SINGLE, seed=3))
    assert sorted(p.name for p in d.iterdir()) == ["card.json", "model.safetensors"]
    assert json.loads((d / "card.json").read_text()) == before


def test_user_mistakes_are_one_line_errors(tmp_path, mixed, plain) -> None:
    d = plain
    with pytest.raises(ModelError, match="fabsight export"):
        load_predictor(d, "onnx")
    with pytest.raises(ModelError, match="INT8"):
        load_predictor(mixed[0], "onnx-int8")
    with pytest.raises(FabsightError, match="runtime must be one of"):
        load_predictor(d, "tensorrt")
    with pytest.raises(FabsightError, match="opset"):
        export_onnx(d, opset=13)
    with pytest.raises(ModelError, match=r"no card\.json"):
        load_predictor(tmp_path, "onnx")
    onnx_clf = load_predictor(mixed[0], "onnx")
    with pytest.raises(FabsightError, match="inference only"):
        onnx_clf.fit([])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "fabsight", "export", str(d)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"error: {d}: choose an export format: --onnx"]


def test_wafer_predict_and_eval_take_runtime_onnx(single, tmp_path) -> None:
    write_folder(generate_dataset(6, classes=SINGLE, shapes=((44, 44),), seed=21), tmp_path / "maps")
    rows = {}
    for runtime in ("torch", "onnx"):
        args = ["wafer", "predict", str(single), str(tmp_path / "maps"), "--runtime", runtime, "--json"]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, result.output
        rows[runtime] = json.loads(result.stdout)["results"]
    assert [r["label"] for r in rows["onnx"]] == [r["label"] for r in rows["torch"]]
    assert (
        max(abs(a["probability"] - b["probability"]) for a, b in zip(rows["onnx"], rows["torch"], strict=True)) <= 1e-4
    )
    args = ["wafer", "eval", str(single), str(tmp_path / "maps"), "--runtime", "onnx-int8", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 18


def test_every_wafer_model_command_takes_runtime_onnx(single, tmp_path) -> None:
    """drift (and monitor, which loads the model the same way), autolabel, explain and serve."""
    from fabsight.deploy.runtime import OnnxWaferClassifier
    from fabsight.serve.state import load_service

    write_folder(generate_dataset(5, classes=SINGLE, shapes=((44, 44),), seed=31), tmp_path / "a")
    write_folder(generate_dataset(5, classes=("Center",), shapes=((44, 44),), seed=32), tmp_path / "b")
    runs: dict[str, dict[str, object]] = {}
    for runtime in ("torch", "onnx"):
        model = ["--model", str(single), "--runtime", runtime, "--json"]
        commands = {
            "drift": ["drift", str(tmp_path / "a"), str(tmp_path / "b"), "--embeddings", "--permutations", "50",
                      "--projections", "16", *model],
            "autolabel": ["autolabel", str(tmp_path / "a"), "--out", str(tmp_path / f"al-{runtime}"), *model],
            "explain": ["explain", str(tmp_path / "b"), *model],
        }
        for name, args in commands.items():
            result = CliRunner().invoke(app, args)
            assert result.exit_code == 0, (name, result.output)
            runs.setdefault(name, {})[runtime] = json.loads(result.stdout)
    drift = runs["drift"]
    assert drift["onnx"]["p_value"] == drift["torch"]["p_value"]
    assert abs(drift["onnx"]["distance"] - drift["torch"]["distance"]) <= 1e-3 * max(drift["torch"]["distance"], 1e-9)
    assert {k: runs["autolabel"]["onnx"][k] for k in ("labeled", "review")} == {
        k: runs["autolabel"]["torch"][k] for k in ("labeled", "review")}
    assert [e["explanation"] for e in runs["explain"]["onnx"]["results"]] == [
        e["explanation"] for e in runs["explain"]["torch"]["results"]]
    service = load_service(tmp_path / "store.sqlite", single, runtime="onnx")
    try:
        assert isinstance(service.classifier, OnnxWaferClassifier) and service.classes == list(SINGLE)
    finally:
        service.store.close()
