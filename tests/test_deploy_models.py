"""ONNX export and the torch-free runtime for die classifiers and anomaly models.

The models are tiny and trained in seconds on generated images: die classes a bright disc
vs a dark line, anomaly images a regular texture with or without a dark disc. The
backbone is timm's ``test_efficientnet`` with seeded random weights (a real multi-stage
EfficientNet graph that exports like the big one, at a fraction of the cost; random
features make no anomaly detector, so detection quality is not asserted here, only that
both runtimes agree). Every check compares ONNX Runtime with the PyTorch model on images
the export never saw, so a wrong preprocessing, layer, scorer or threshold shows up as a
difference.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.deploy import anomaly as deploy_anomaly
from fabsight.deploy import export_onnx, load_anomaly_model
from fabsight.deploy.quantize import FEATURE_RECIPE
from fabsight.die.data import read_image
from fabsight.die.model import DieModel
from fabsight.errors import FabsightError, ModelError
from fabsight.utils.preprocess import preprocess

sys.path.insert(0, str(Path(__file__).parent))
from test_anomaly_methods import plant, texture

REPO = Path(__file__).resolve().parents[1]
BACKBONE = "timm:test_efficientnet"


def _die_image(rng: np.random.Generator, kind: str) -> np.ndarray:
    h, w = int(rng.integers(40, 72)), int(rng.integers(40, 72))
    img = rng.normal(120, 12, (h, w)).clip(0, 255).astype(np.uint8)
    if kind == "disc":
        centre = (int(rng.integers(14, w - 14)), int(rng.integers(14, h - 14)))
        cv2.circle(img, centre, int(rng.integers(5, 9)), 235, -1)
    else:
        cv2.line(img, (0, int(rng.integers(0, h))), (w - 1, int(rng.integers(0, h))), 15, 3)
    return img


def _write_die_folder(root: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for kind in ("disc", "line"):
        (root / kind).mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / kind / f"{kind}{i}.png"), _die_image(rng, kind))
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    import timm

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test_efficientnet.pth"
    torch.save(timm.create_model("test_efficientnet").state_dict(), path)
    return path


@pytest.fixture(scope="module")
def die(tmp_path_factory, weights) -> tuple[Path, dict, Path]:
    """A hybrid (deep + GLCM + Zernike) die model exported with INT8 through the CLI, and unseen test images."""
    from fabsight.die.model import train

    root = tmp_path_factory.mktemp("die")
    train(_write_die_folder(root / "train", 10, 0), root / "model", backbone=BACKBONE, weights=weights,
          method="hybrid", input_size=64, cv_folds=0, cache=None)
    result = CliRunner().invoke(app, ["export", str(root / "model"), "--onnx", "--int8", "--json"])
    assert result.exit_code == 0, result.output
    return root / "model", json.loads(result.stdout), _write_die_folder(root / "test", 6, 1)


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, weights) -> tuple[Path, dict, Path]:
    """A fine-tuned die model (the whole backbone + linear head) exported with INT8 through the CLI, unseen images."""
    from fabsight.die.model import train

    root = tmp_path_factory.mktemp("finetune")
    train(_write_die_folder(root / "train", 16, 0), root / "model", backbone=BACKBONE, weights=weights,
          method="finetune", input_size=48, epochs=12, batch_size=4)
    result = CliRunner().invoke(app, ["export", str(root / "model"), "--onnx", "--int8", "--json"])
    assert result.exit_code == 0, result.output
    return root / "model", json.loads(result.stdout), _write_die_folder(root / "test", 6, 1)


def _mvtec(root: Path, seed: int) -> Path:
    """ROOT/train/good, ROOT/test/{good,hole} + ground_truth masks, images 64×80."""
    rng = np.random.default_rng(seed)
    for sub in ("train/good", "test/good", "test/hole", "ground_truth/hole"):
        (root / sub).mkdir(parents=True)
    for i in range(8):
        cv2.imwrite(str(root / "train/good" / f"{i}.png"), texture(rng, 64, 80))
    for i in range(4):
        cv2.imwrite(str(root / "test/good" / f"{i}.png"), texture(rng, 64, 80))
        img, mask = plant(rng, texture(rng, 64, 80), radius=7)
        cv2.imwrite(str(root / "test/hole" / f"{i}.png"), img)
        cv2.imwrite(str(root / "ground_truth/hole" / f"{i}_mask.png"), mask.astype(np.uint8) * 255)
    return root


METHODS = {
    # PatchCore tiles (stitching, batching across images) and reweights its scores.
    "patchcore": {"tile": 48, "input_size": 48, "reweight": True},
    "padim": {"input_size": 64, "n_features": 24},
    "recon": {"input_size": 64, "steps": 12, "width": 4, "depth": 2, "train_crop": 32, "batch_size": 4},
    # teacher and student in one graph; 60×72 test images keep their aspect (two squares each)
    "student": {"input_size": 48, "steps": 10, "width": 8, "batch_size": 4, "max_aspect": 1.1},
}


@pytest.fixture(scope="module")
def anomaly(tmp_path_factory, weights) -> dict[str, tuple[Path, dict]]:
    """One exported model per method (INT8 too), fitted on the train split with a threshold from test/good."""
    from fabsight.anomaly import load_split, make_model, save_model

    root = _mvtec(tmp_path_factory.mktemp("anomaly") / "data", 3)
    train = [read_image(r.path) for r in load_split(root, "train")]
    good = [read_image(r.path) for r in load_split(root, "test") if not r.is_anomalous]
    models = {}
    for method, params in METHODS.items():
        extra = {} if method == "recon" else {"backbone": BACKBONE, "backbone_weights": str(weights)}
        model = make_model(method, device="cpu", **params, **extra).fit(train).calibrate_good(good)
        d = save_model(model, root.parent / method, training={"root": str(root)})
        if method == "student":  # squared differences of quantised features: INT8 is refused
            with pytest.raises(FabsightError, match="INT8 is not offered for teacher–student"):
                export_onnx(d, int8=True)
        models[method] = (d, export_onnx(d, int8=method != "student"))
    return models


@pytest.fixture(scope="module")
def anomaly_images() -> list[np.ndarray]:
    """Unseen images of another size than training: 4 good, 4 with a disc."""
    rng = np.random.default_rng(9)
    return [texture(rng, 72, 60) for _ in range(4)] + [plant(rng, texture(rng, 72, 60), radius=7)[0] for _ in range(4)]


def test_numpy_preprocessing_matches_the_backbone(weights) -> None:
    from fabsight.backbones import create_backbone

    bb = create_backbone(BACKBONE, weights=weights, input_size=(48, 40))
    rng = np.random.default_rng(0)
    images = [
        rng.integers(0, 256, (640, 480), dtype=np.uint8),  # strong down-scaling (antialiased)
        rng.integers(0, 256, (17, 23, 3), dtype=np.uint8),  # up-scaling, colour
        rng.integers(0, 65536, (48, 40), dtype=np.uint16),  # no resize, 16 bit
        rng.integers(0, 256, (100, 30, 4), dtype=np.uint8),  # alpha dropped, mixed scaling
        rng.random((33, 200)).astype(np.float32),
    ]
    for mode in ("bicubic", "bilinear"):
        bb.cfg = dataclasses.replace(bb.cfg, interpolation=mode)
        for img in images:
            want = bb.preprocess([img]).numpy()
            got = preprocess([img], size=bb.cfg.input_size, mean=bb.cfg.mean, std=bb.cfg.std, interpolation=mode)
            assert got.shape == want.shape == (1, 3, 48, 40)
            assert np.abs(got - want).max() < 2e-5, (mode, img.shape)
    with pytest.raises(FabsightError, match="expected H×W grey"):
        preprocess([np.zeros((4, 4, 5), np.uint8)], size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1),
                   interpolation="bilinear")


def test_die_export_card(die) -> None:
    model_dir, result, _ = die
    card = json.loads((model_dir / "card.json").read_text())
    info = card["extra"]["onnx"]
    assert card["files"]["onnx"] == "backbone.onnx" and card["files"]["onnx_int8"] == "backbone.int8.onnx"
    assert (model_dir / "backbone.onnx").is_file() and (model_dir / "classifier.joblib").is_file()
    assert info["input_shape"] == ["batch", 3, 64, 64] and info["opset"] == 18
    check = info["check"]
    assert check["sample"] == "20 training images of " + str(model_dir.parent / "train")
    assert check["max_abs_prob_diff"] <= check["tolerance"] == 1e-3
    assert check["prediction_agreement"] == 1.0 and check["accuracy_torch"] == 1.0
    assert info["int8"]["accuracy_int8"] is not None and result["onnx"] == info
    # INT8: the feature-model recipe, calibrated on the same real training images
    assert info["int8"]["recipe"] == FEATURE_RECIPE.name and info["int8"]["method"] == FEATURE_RECIPE.describe()
    assert info["int8"]["calibration"] == check["sample"] and info["int8"]["calibration_inputs"] == 20
    # review thresholds stay in the card, outside the graph
    assert {"ood_threshold", "min_confidence"} <= set(card["extra"])


def _without_training_data(src: Path, dst: Path, key: str) -> Path:
    """A copy of model ``src`` whose card points ``training[key]`` at a folder that is not there."""
    shutil.copytree(src, dst)
    card = json.loads((dst / "card.json").read_text())
    card["training"][key] = str(dst.parent / "gone")
    (dst / "card.json").write_text(json.dumps(card))
    return dst


def test_die_int8_needs_real_calibration_images(die, tmp_path) -> None:
    """Without its training folder a die model still exports fp32 (checked on noise) but refuses INT8."""
    d = _without_training_data(die[0], tmp_path / "m", "data")
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(FabsightError, match="INT8 calibration needs real images"):
        export_onnx(d, int8=True)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before


def test_die_onnx_runtime_matches_torch_on_unseen_images(die) -> None:
    model_dir, _, test = die
    paths = sorted(test.rglob("*.png"))
    torch_dec = DieModel(model_dir).predict(paths)
    onnx_model = DieModel(model_dir, runtime="onnx")
    onnx_dec = onnx_model.predict(paths)
    assert [d["label"] for d in onnx_dec] == [d["label"] for d in torch_dec]
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(onnx_dec, torch_dec, strict=True)) <= 1e-4
    assert [d["needs_review"] for d in onnx_dec] == [d["needs_review"] for d in torch_dec]
    assert np.mean([d["label"] == p.parent.name for d, p in zip(onnx_dec, paths, strict=True)]) >= 0.9
    # dynamic batch: one image alone gives the same embedding as inside a batch of 12
    x = onnx_model.backbone.preprocess([read_image(p) for p in paths])
    np.testing.assert_allclose(onnx_model.backbone.embed(x[:1]), onnx_model.backbone.embed(x)[:1], atol=1e-5)
    int8 = DieModel(model_dir, runtime="onnx-int8").predict(paths)
    assert np.mean([a["label"] == b["label"] for a, b in zip(int8, torch_dec, strict=True)]) >= 0.9


def test_die_predict_and_eval_take_runtime_onnx(die) -> None:
    model_dir, _, test = die
    rows = {}
    for runtime in ("torch", "onnx"):
        result = CliRunner().invoke(app, ["die", "predict", str(model_dir), str(test / "disc"), "--runtime", runtime,
                                          "--device", "cpu", "--json"])
        assert result.exit_code == 0, result.output
        rows[runtime] = json.loads(result.stdout)["results"]
    assert [r["label"] for r in rows["onnx"]] == [r["label"] for r in rows["torch"]] == ["disc"] * 6
    result = CliRunner().invoke(app, ["die", "eval", str(model_dir), str(test), "--runtime", "onnx-int8", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n"] == 12


def test_export_sample_folders_are_searched_recursively(die) -> None:
    from fabsight.cli.deploy import _read_sample
    from fabsight.io import ReadLog

    model_dir, _, test = die
    assert len(_read_sample(model_dir, test, ReadLog())) == 12  # class sub-folders
    assert len(_read_sample(model_dir, test / "disc", ReadLog())) == 6


def test_finetune_export_writes_one_checked_graph_and_plain_arrays(finetuned) -> None:
    model_dir, result, _ = finetuned
    card = json.loads((model_dir / "card.json").read_text())
    info = card["extra"]["onnx"]
    assert card["files"]["onnx"] == "network.onnx" and card["files"]["onnx_int8"] == "network.int8.onnx"
    assert card["files"]["decision"] == "decision.npz" and not (model_dir / "backbone.onnx").exists()
    assert info["outputs"] == ["logits", "embedding"] and info["input_shape"] == ["batch", 3, 48, 48]
    assert info["opset"] == 18 and result["onnx"] == info
    check = info["check"]
    assert check["sample"] == "32 training images of " + str(model_dir.parent / "train")
    assert check["max_abs_prob_diff"] <= check["tolerance"] == 1e-3 and check["max_abs_logit_diff"] < 1e-3
    assert check["prediction_agreement"] == check["review_agreement"] == 1.0 and check["accuracy_torch"] >= 0.8
    assert info["int8"]["accuracy_int8"] is not None and info["int8"]["max_abs_logit_diff"] > 0
    # the decision state is plain arrays (no pickle, no torch), equal to the fitted estimator's
    clf = DieModel(model_dir).classifier
    with np.load(model_dir / "decision.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["centroids_"], clf.centroids_)
        np.testing.assert_array_equal(z["embed_std_"], clf.embed_std_)
        assert float(z["temperature_"]) == clf.temperature_ and float(z["ood_threshold_"]) == clf.ood_threshold_


def test_finetune_onnx_runtime_reproduces_decide(finetuned) -> None:
    model_dir, _, test = finetuned
    paths = sorted(test.rglob("*.png"))
    rng = np.random.default_rng(3)
    noise = [rng.integers(0, 256, (56, 56), dtype=np.uint8) for _ in range(3)]  # far from both classes
    items = [*paths, *noise]
    torch_model = DieModel(model_dir)
    want = torch_model.predict(items, top_k=2)
    assert sum(d["needs_review"] for d in want[-3:]) >= 1  # so needs_review is compared on both outcomes
    assert np.mean([d["label"] == p.parent.name for d, p in zip(want, paths, strict=False)]) >= 0.8
    onnx_model = DieModel(model_dir, runtime="onnx")
    got = onnx_model.predict(items, top_k=2)
    assert [d["label"] for d in got] == [d["label"] for d in want]
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(got, want, strict=True)) <= 1e-4
    assert [d["needs_review"] for d in got] == [d["needs_review"] for d in want]
    assert [d["review_reasons"] for d in got] == [d["review_reasons"] for d in want]
    assert [[t["label"] for t in d["top"]] for d in got] == [[t["label"] for t in d["top"]] for d in want]
    np.testing.assert_allclose([d["ood_score"] for d in got], [d["ood_score"] for d in want], rtol=1e-4)
    np.testing.assert_allclose(onnx_model.features(paths[:4]), torch_model.features(paths[:4]), atol=1e-4)
    # dynamic batch: one image alone gets the decision it got inside the batch of 15
    alone = onnx_model.predict(items[-1:], top_k=2)[0]
    assert alone["label"] == got[-1]["label"] and abs(alone["confidence"] - got[-1]["confidence"]) < 1e-6
    int8 = DieModel(model_dir, runtime="onnx-int8").predict(paths)
    assert np.mean([a["label"] == b["label"] for a, b in zip(int8, want, strict=False)]) >= 0.9
    with pytest.raises(FabsightError, match="inference only"):
        onnx_model.classifier.fit(paths, [p.parent.name for p in paths])


def test_finetune_predict_and_eval_take_runtime_onnx(finetuned) -> None:
    model_dir, _, test = finetuned
    rows = {}
    for runtime in ("torch", "onnx"):  # the folder holds only class sub-folders: found recursively
        result = CliRunner().invoke(app, ["die", "predict", str(model_dir), str(test), "--runtime", runtime,
                                          "--device", "cpu", "--json"])
        assert result.exit_code == 0, result.output
        rows[runtime] = json.loads(result.stdout)["results"]
    assert [r["path"] for r in rows["onnx"]] == [str(p) for p in sorted(test.rglob("*.png"))]
    assert [r["label"] for r in rows["onnx"]] == [r["label"] for r in rows["torch"]]
    for runtime in ("onnx", "onnx-int8"):
        result = CliRunner().invoke(app, ["die", "eval", str(model_dir), str(test), "--runtime", runtime, "--json"])
        assert result.exit_code == 0, result.output
        metrics = json.loads(result.stdout)
        assert metrics["n"] == 12 and metrics["accuracy"] >= 0.8


def test_finetune_tta_is_turn_invariant_and_the_same_in_both_runtimes(finetuned) -> None:
    """With --tta a crop and its quarter-turned, mirrored copy get the same decision (the eight
    views are the same set), and ONNX Runtime averages exactly what PyTorch does."""
    model_dir, _, test = finetuned
    paths = sorted(test.rglob("*.png"))
    images = [read_image(p) for p in paths]
    turned = [np.ascontiguousarray(np.rot90(im)[:, ::-1]) for im in images]
    torch_model = DieModel(model_dir)
    plain, tta = torch_model.predict(images), torch_model.predict(images, tta=True)
    tta_turned = torch_model.predict(turned, tta=True)
    assert [d["label"] for d in tta_turned] == [d["label"] for d in tta]
    np.testing.assert_allclose([d["confidence"] for d in tta_turned], [d["confidence"] for d in tta], atol=1e-4)
    assert [d["confidence"] for d in plain] != [d["confidence"] for d in tta]  # the views did change something
    assert [d["ood_score"] for d in plain] == [d["ood_score"] for d in tta]  # the gate sees the image as it is
    got = DieModel(model_dir, runtime="onnx").predict(images, tta=True)
    assert [d["label"] for d in got] == [d["label"] for d in tta]
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(got, tta, strict=True)) <= 1e-4
    result = CliRunner().invoke(app, ["die", "eval", str(model_dir), str(test), "--tta", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["tta"] is True and metrics["n"] == 12 and metrics["accuracy"] >= 0.8


def test_tta_on_a_probe_model_is_a_one_line_error(die, monkeypatch, capsys) -> None:
    from test_die import _cli

    model_dir, _, test = die
    code, stdout, stderr = _cli(monkeypatch, capsys, "die", "predict", str(model_dir), str(test), "--tta")
    assert code == 2 and stdout == "" and stderr.startswith(f"error: {model_dir}: ")
    assert "--method finetune" in stderr and len(stderr.strip().splitlines()) == 1


def _assert_failed_check_writes_nothing(d, src, monkeypatch, module, tolerance: str) -> None:
    """Export ``d`` with ``src``'s graph while ``module.<tolerance>`` fails any difference: the
    export must raise and leave the directory exactly as it was."""
    before_files = sorted(p.name for p in d.iterdir())
    before = (d / "card.json").read_bytes()

    def reuse_graph(module, example, path, opset, **kw) -> None:  # the slow exporter is not what is tested
        path.write_bytes((src / "network.onnx").read_bytes())

    monkeypatch.setattr("fabsight.deploy.export.export_module", reuse_graph)
    monkeypatch.setattr(module, tolerance, -1.0)  # any difference fails the check
    with pytest.raises(ModelError, match="differs from PyTorch"):
        export_onnx(d)
    assert sorted(p.name for p in d.iterdir()) == before_files
    assert (d / "card.json").read_bytes() == before


def test_failed_finetune_check_writes_nothing(finetuned, tmp_path, monkeypatch) -> None:
    from fabsight.deploy import die as deploy_die

    src, _, _ = finetuned
    d = tmp_path / "m"
    d.mkdir()
    for name in ("classifier.joblib", "finetuned.safetensors"):
        (d / name).write_bytes((src / name).read_bytes())
    card = json.loads((src / "card.json").read_text())
    card["extra"].pop("onnx")
    card["files"] = {"classifier": "classifier.joblib", "network": "finetuned.safetensors"}
    (d / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="fabsight export"):
        DieModel(d, runtime="onnx")
    assert sorted(p.name for p in d.iterdir()) == ["card.json", "classifier.joblib", "finetuned.safetensors"]
    _assert_failed_check_writes_nothing(d, src, monkeypatch, deploy_die, "PROB_TOLERANCE")


def test_damaged_decision_state_is_a_one_line_error(finetuned, tmp_path) -> None:
    import shutil

    d = tmp_path / "m"
    shutil.copytree(finetuned[0], d)
    (d / "decision.npz").write_bytes((d / "decision.npz").read_bytes()[:200])
    with pytest.raises(ModelError, match="unreadable fine-tuned decision state"):
        DieModel(d, runtime="onnx")
    (d / "decision.npz").unlink()
    with pytest.raises(ModelError, match=r"card lists decision file 'decision\.npz' but it is missing"):
        DieModel(d, runtime="onnx")


@pytest.mark.slow  # the anomaly fixture fits and exports three models (~60 s on 2 cores)
@pytest.mark.parametrize("method", list(METHODS))
def test_anomaly_export_matches_torch(anomaly, anomaly_images, method) -> None:
    model_dir, _ = anomaly[method]
    card = json.loads((model_dir / "card.json").read_text())
    info = card["extra"]["onnx"]
    int8 = method != "student"
    assert card["files"]["onnx"] == "network.onnx" and (model_dir / "network.int8.onnx").is_file() == int8
    assert info["check"]["max_abs_score_diff"] <= 1e-3 * info["check"]["score_scale"]
    assert info["check"]["image_auroc_torch"] is not None and (not int8 or info["int8"]["image_auroc_int8"] is not None)
    assert "threshold" not in json.dumps(info["outputs"]) and card["extra"]["threshold"]["value"] > 0
    images = anomaly_images
    torch_model = load_anomaly_model(model_dir, "torch", device="cpu")
    onnx_model = load_anomaly_model(model_dir, "onnx")
    assert onnx_model.method == method and onnx_model.resolve_threshold() == torch_model.resolve_threshold()
    (s_t, m_t), (s_o, m_o) = zip(*torch_model.iter_maps(images), strict=True), zip(*onnx_model.iter_maps(images),
                                                                                      strict=True)
    scale = max(np.abs(s_t).max(), 1e-9)
    assert np.abs(np.array(s_o) - np.array(s_t)).max() <= 1e-4 * scale
    assert all(a.shape == b.shape == (72, 60) for a, b in zip(m_o, m_t, strict=True))
    assert max(np.abs(a - b).max() for a, b in zip(m_o, m_t, strict=True)) <= 1e-4 * scale
    assert list(onnx_model.predict(images)) == list(torch_model.predict(images))
    if int8:
        s_q = load_anomaly_model(model_dir, "onnx-int8").score_samples(images)
        assert np.abs(s_q - np.array(s_t)).max() <= 0.25 * scale
    with pytest.raises(FabsightError, match="inference only"):
        onnx_model.fit(images)


@pytest.mark.slow
def test_anomaly_predict_and_eval_take_runtime_onnx(anomaly, tmp_path) -> None:
    model_dir, _ = anomaly["padim"]
    root = Path(json.loads((model_dir / "card.json").read_text())["training"]["root"])
    out = {}
    for runtime in ("torch", "onnx"):
        result = CliRunner().invoke(app, ["anomaly", "predict", str(model_dir), str(root / "test" / "hole"),
                                          "--out", str(tmp_path / runtime), "--runtime", runtime, "--json"])
        assert result.exit_code == 0, result.output
        out[runtime] = json.loads(result.stdout)
    assert [p["anomalous"] for p in out["onnx"]["predictions"]] == [p["anomalous"] for p in out["torch"]["predictions"]]
    assert (tmp_path / "onnx" / "0_heatmap.png").is_file()
    result = CliRunner().invoke(app, ["anomaly", "eval", str(model_dir), str(root), "--runtime", "onnx", "--json"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_images"] == 8 and metrics["n_anomalous"] == 4 and metrics["pixel_auroc"] is not None


@pytest.mark.slow
def test_anomaly_int8_is_calibrated_on_good_training_images(anomaly, tmp_path) -> None:
    model_dir, result = anomaly["padim"]
    q = result["onnx"]["int8"]
    root = json.loads((model_dir / "card.json").read_text())["training"]["root"]
    assert q["recipe"] == FEATURE_RECIPE.name and q["calibration"] == f"8 good training images of {root}/train"
    d = _without_training_data(model_dir, tmp_path / "m", "root")
    with pytest.raises(FabsightError, match="INT8 calibration needs real images"):
        export_onnx(d, int8=True)
    assert (d / "network.int8.onnx").read_bytes() == (model_dir / "network.int8.onnx").read_bytes()


@pytest.mark.slow
def test_failed_anomaly_check_writes_nothing(anomaly, tmp_path, monkeypatch) -> None:
    src, _ = anomaly["recon"]
    d = tmp_path / "m"
    d.mkdir()
    for name in ("card.json", "model.safetensors"):
        (d / name).write_bytes((src / name).read_bytes())
    card = json.loads((d / "card.json").read_text())
    card["extra"].pop("onnx")
    card["files"] = {"weights": "model.safetensors"}
    (d / "card.json").write_text(json.dumps(card))
    assert sorted(p.name for p in d.iterdir()) == ["card.json", "model.safetensors"]
    _assert_failed_check_writes_nothing(d, src, monkeypatch, deploy_anomaly, "SCORE_TOLERANCE")


_NO_TORCH = """
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, Block())
from typer.testing import CliRunner
from fabsight.cli.main import app
die, test, finetuned, ft_test, anomaly, images, out = sys.argv[1:]
results = {}
for name, args in {
    "die": ["die", "predict", die, test, "--runtime", "onnx", "--json"],
    "finetune": ["die", "predict", finetuned, ft_test, "--runtime", "onnx", "--json"],
    "anomaly": ["anomaly", "predict", anomaly, images, "--out", out, "--runtime", "onnx-int8", "--json"],
}.items():
    r = CliRunner().invoke(app, args)
    results[name] = {"code": r.exit_code, "stdout": r.stdout, "error": repr(r.exception)}
results["torch_loaded"] = "torch" in sys.modules
print(json.dumps(results))
"""


@pytest.mark.slow
def test_die_and_anomaly_onnx_run_without_torch(die, finetuned, anomaly, tmp_path) -> None:
    model_dir, _, test = die
    ft_dir, _, ft_test = finetuned
    pc, _ = anomaly["patchcore"]
    root = Path(json.loads((pc / "card.json").read_text())["training"]["root"])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    args = [str(model_dir), str(test / "line"), str(ft_dir), str(ft_test), str(pc), str(root / "test" / "hole"),
            str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-c", _NO_TORCH, *args], capture_output=True, text=True, env=env,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not res["torch_loaded"]
    assert res["die"]["code"] == 0, res["die"]
    assert [r["label"] for r in json.loads(res["die"]["stdout"])["results"]] == ["line"] * 6
    assert res["finetune"]["code"] == 0, res["finetune"]
    want = DieModel(ft_dir).predict(sorted(ft_test.rglob("*.png")))
    got = json.loads(res["finetune"]["stdout"])["results"]
    assert [r["label"] for r in got] == [d["label"] for d in want]
    assert max(abs(a["confidence"] - b["confidence"]) for a, b in zip(got, want, strict=True)) <= 1e-4
    assert res["anomaly"]["code"] == 0, res["anomaly"]
    scores = [p["score"] for p in json.loads(res["anomaly"]["stdout"])["predictions"]]
    want = load_anomaly_model(pc, "onnx-int8").score_samples([read_image(p) for p in
                                                               sorted((root / "test" / "hole").glob("*.png"))])
    np.testing.assert_allclose(scores, want, rtol=1e-5)


def test_user_mistakes_are_one_line_errors(die, anomaly, tmp_path, weights) -> None:
    model_dir, _, _ = die
    plain = tmp_path / "plain"
    plain.mkdir()
    for f in ("card.json", "classifier.joblib"):
        (plain / f).write_bytes((model_dir / f).read_bytes())
    card = json.loads((plain / "card.json").read_text())
    card["files"] = {"classifier": "classifier.joblib"}
    card["extra"].pop("onnx")
    (plain / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="fabsight export"):
        DieModel(plain, runtime="onnx")
    with pytest.raises(FabsightError, match="runtime must be one of"):
        DieModel(model_dir, runtime="tensorrt")
    with pytest.raises(FabsightError, match="runtime must be one of"):
        load_anomaly_model(anomaly["padim"][0], "openvino")
    with pytest.raises(ModelError, match="is a 'die-classifier' model, expected 'anomaly'"):
        load_anomaly_model(plain, "onnx")
    # a backbone directory is not a model that predicts: export refuses it by name
    from fabsight.backbones import create_backbone, save_backbone_dir

    save_backbone_dir(tmp_path, create_backbone(BACKBONE, weights=weights), training={})
    with pytest.raises(ModelError, match="not 'backbone'"):
        export_onnx(tmp_path)
