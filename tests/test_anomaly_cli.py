"""``fabsight anomaly``: layout builder on real magnetic tile, CLI round trip, clear errors."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from fabsight.anomaly.datasets import build_mvtec_layout_from_magnetic_tile, load_split, read_mask
from fabsight.die.data import read_image
from fabsight.errors import FabsightError

sys.path.insert(0, str(Path(__file__).parent))
from clikit import run_cli
from test_anomaly_methods import plant, texture


def test_layout_builder_on_magnetic_tile(shared: Path, tmp_path: Path) -> None:
    src = shared / "data" / "magnetic_tile"
    counts = build_mvtec_layout_from_magnetic_tile(src, tmp_path / "mt", train_fraction=0.1, seed=3)
    n_free = len(list((src / "MT_Free" / "Imgs").glob("*.jpg")))
    assert counts["train/good"] == round(0.1 * n_free)
    assert counts["train/good"] + counts["test/good"] == n_free
    for cls in ("Blowhole", "Break", "Crack", "Fray", "Uneven"):
        assert counts[f"test/{cls.lower()}"] == len(list((src / f"MT_{cls}" / "Imgs").glob("*.jpg")))
    test = load_split(tmp_path / "mt", "test")
    defects = [r for r in test if r.is_anomalous]
    assert defects and all(r.mask_path is not None for r in defects)
    crack = next(r for r in defects if r.defect_type == "crack")
    assert crack.path.is_symlink() and crack.path.resolve().is_relative_to(src.resolve())
    mask = read_mask(crack.mask_path, read_image(crack.path).shape[:2])
    assert 0 < mask.mean() < 0.5
    # Same seed, same split; an existing destination is refused unless asked.
    again = build_mvtec_layout_from_magnetic_tile(src, tmp_path / "mt2", train_fraction=0.1, seed=3)
    train_names = sorted(os.listdir(tmp_path / "mt" / "train" / "good"))
    assert sorted(os.listdir(tmp_path / "mt2" / "train" / "good")) == train_names
    assert again == counts
    with pytest.raises(FabsightError, match="not empty"):
        build_mvtec_layout_from_magnetic_tile(src, tmp_path / "mt", train_fraction=0.1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MVTec-layout set: textured good images and dark-spot defects with masks."""
    root = tmp_path_factory.mktemp("mvtec")
    rng = np.random.default_rng(11)
    for split, n in (("train", 10), ("test", 3)):
        (root / split / "good").mkdir(parents=True)
        for i in range(n):
            cv2.imwrite(str(root / split / "good" / f"g{i}.png"), texture(rng, 96, 96 + int(rng.integers(0, 16))))
    (root / "test" / "spot").mkdir()
    (root / "ground_truth" / "spot").mkdir(parents=True)
    for i in range(3):
        img, mask = plant(rng, texture(rng, 96, 96))
        cv2.imwrite(str(root / "test" / "spot" / f"s{i}.png"), img)
        cv2.imwrite(str(root / "ground_truth" / "spot" / f"s{i}_mask.png"), mask.astype(np.uint8) * 255)
    return root


def test_cli_fit_eval_predict_round_trip(dataset: Path, tmp_path: Path, capsys) -> None:
    torch.set_num_threads(1)
    model = tmp_path / "model"
    code, out, err = run_cli(["anomaly", "fit", str(dataset), "--out", str(model), "--method", "patchcore",
                              "--input-size", "96", "--max-bank", "300", "--holdout", "0.3", "--device", "cpu",
                              "--json"], capsys)
    assert code == 0, err
    fit = json.loads(out)
    assert fit["threshold"]["method"] == "good-quantile" and fit["n_train_images"] == 7
    test_metrics = fit["metrics"]["test"]
    assert test_metrics["image_auroc"] == 1.0 and test_metrics["pixel_auroc"] > 0.9
    card = json.loads((model / "card.json").read_text())
    assert card["extra"]["method"] == "patchcore" and card["backbone"]["layers"] == {"blocks.2": [40, 8],
                                                                                      "blocks.4": [112, 16]}
    assert "held-out" in card["extra"]["threshold_meaning"] and card["input"]["size"] == [96, 96]
    # the input choice and its reasons: 96-px images at 96 px need no tiling; masks gave the defect scale
    assert fit["input"]["tile"] is None and fit["input"]["max_aspect"] == 1.5
    reasons = card["training"]["input_choice"]["reasons"]
    assert any("defect scale from 3 regions" in r for r in reasons) and any("no tiling" in r for r in reasons)

    code, out, err = run_cli(["anomaly", "eval", str(model), str(dataset), "--device", "cpu", "--json"],
                             capsys)
    assert code == 0, err
    ev = json.loads(out)
    assert ev["image_auroc"] == 1.0 and ev["aupro"] > 0.5
    assert ev["threshold"] == pytest.approx(fit["threshold"]["value"])
    assert ev["region_recall"] == 1.0  # each planted spot reaches the threshold

    preds = tmp_path / "preds"
    code, out, err = run_cli(["anomaly", "predict", str(model), str(dataset / "test" / "spot"),
                              str(dataset / "test" / "good" / "g0.png"), "--out", str(preds), "--device", "cpu",
                              "--json"], capsys)
    assert code == 0, err
    result = json.loads(out)
    by_name = {Path(p["image"]).name: p for p in result["predictions"]}
    assert all(by_name[f"s{i}.png"]["anomalous"] for i in range(3))
    mask = cv2.imread(str(preds / "s0_mask.png"), cv2.IMREAD_GRAYSCALE)
    truth = cv2.imread(str(dataset / "ground_truth" / "spot" / "s0_mask.png"), cv2.IMREAD_GRAYSCALE) > 0
    assert mask.shape == truth.shape and (mask[truth] > 0).any()  # the predicted mask touches the real spot
    assert cv2.imread(str(preds / "s0_heatmap.png")).shape == (96, 96, 3)
    assert json.loads((preds / "predictions.json").read_text())["n_images"] == 4
    # Defects, not only pixels: the planted spot is a counted region whose box covers it.
    s0 = by_name["s0.png"]
    assert s0["n_defects"] >= 1 and s0["n_defects"] == len(s0["defects"])
    ys, xs = np.nonzero(truth)
    x0, y0, x1, y1 = s0["defects"][0]["bbox"]
    assert x0 <= xs.mean() < x1 and y0 <= ys.mean() < y1 and s0["defects"][0]["peak_score"] == s0["score"]
    assert cv2.imread(str(preds / "s0_regions.png")).shape == (96, 96, 3)
    spot_folder = result["folders"][str(dataset / "test" / "spot")]
    assert spot_folder["n_images"] == 3 and spot_folder["n_defects"] == sum(
        by_name[f"s{i}.png"]["n_defects"] for i in range(3))
    assert sum(b["count"] for b in spot_folder["area_histogram"]) == spot_folder["n_defects"]
    assert result["n_defects"] == sum(p["n_defects"] for p in result["predictions"])

    # Threshold override: nothing reaches a huge threshold, and masks come out empty. The
    # folder given holds only sub-folders (good/, spot/): their images are all scored.
    code, out, err = run_cli(["anomaly", "predict", str(model), str(dataset / "test"), "--out",
                              str(tmp_path / "p2"), "--threshold", "1e9", "--device", "cpu", "--json"],
                             capsys)
    assert code == 0, err
    over = json.loads(out)
    assert over["threshold_source"] == "--threshold" and over["n_anomalous"] == 0 and over["n_defects"] == 0
    assert sorted(Path(p["image"]).name for p in over["predictions"]) == ["g0.png", "g1.png", "g2.png",
                                                                          "s0.png", "s1.png", "s2.png"]
    assert cv2.imread(str(tmp_path / "p2" / "s0_mask.png"), cv2.IMREAD_GRAYSCALE).max() == 0


def test_cli_recon_on_cpu_warns_and_still_fits(dataset: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(["anomaly", "fit", str(dataset), "--out", str(tmp_path / "r"), "--method", "recon",
                              "--steps", "2", "--input-size", "32", "--device", "cpu", "--no-eval", "--json"],
                             capsys)
    assert code == 0, err
    assert "warning: recon is training on the CPU" in err
    assert json.loads(out)["method"] == "recon" and (tmp_path / "r" / "card.json").is_file()


def test_cli_student_with_fixed_defaults(dataset: Path, tmp_path: Path, capsys) -> None:
    code, out, err = run_cli(["anomaly", "fit", str(dataset), "--out", str(tmp_path / "s"), "--method", "student",
                              "--steps", "3", "--input-size", "48", "--no-auto", "--device", "cpu", "--no-eval",
                              "--json"], capsys)
    assert code == 0, err
    fit = json.loads(out)
    assert fit["method"] == "student" and fit["input"] == {"input_size": 48, "tile": None, "max_aspect": None,
                                                           "reasons": [fit["input"]["reasons"][0]]}
    card = json.loads((tmp_path / "s" / "card.json").read_text())
    assert card["extra"]["params"]["steps"] == 3 and card["extra"]["threshold"]["method"] == "good-quantile"


def test_cli_user_mistakes_exit_2_with_one_line(dataset: Path, tmp_path: Path, capsys) -> None:
    cases = [
        ["anomaly", "fit", str(tmp_path / "missing"), "--out", str(tmp_path / "m")],
        ["anomaly", "fit", str(dataset), "--out", str(tmp_path / "m"), "--threshold-from", "val"],
        ["anomaly", "eval", str(dataset), str(dataset)],  # a dataset is not a model directory
        ["anomaly", "predict", str(tmp_path), str(tmp_path / "nope.png"), "--out", str(tmp_path / "o")],
        ["anomaly", "predict", str(tmp_path), str(dataset), "--out", str(tmp_path / "o"), "--pixel-size", "0"],
    ]
    for args in cases:
        code, _, err = run_cli(args, capsys)
        assert code == 2, (args, err)
        assert err.startswith("error: ") and err.count("\n") == 1, err
    (tmp_path / "bad" / "train" / "good").mkdir(parents=True)
    (tmp_path / "bad" / "train" / "good" / "x.png").write_bytes(b"not a png")
    code, _, err = run_cli(["anomaly", "fit", str(tmp_path / "bad"), "--out", str(tmp_path / "m"), "--holdout", "0",
                            "--threshold-from", "val", "--val", str(dataset)], capsys)
    assert code == 2 and "x.png" in err and "not a readable image" in err
