"""``fabsight wafer train / eval / predict`` on a tiny folder, the real fixtures and bad inputs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.io import write_folder, write_lswmd, write_mixedwm38
from fabsight.synth import generate_dataset

CLASSES = ("Center", "Edge-Ring", "Random")
FAST = ["--epochs", "4", "--input-size", "32", "--threads", "1"]


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        # FabsightError escapes CliRunner; main() would print it as one line, exit 2.
        from fabsight.errors import FabsightError

        if isinstance(result.exception, FabsightError):
            return 2, "", f"error: {result.exception}"
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("wafer-cli")
    write_folder(generate_dataset(30, classes=CLASSES, shapes=((30, 30), (52, 52)), seed=0), root / "train")
    write_folder(generate_dataset(10, classes=CLASSES, shapes=((40, 36),), seed=9), root / "test")
    (root / "train" / "Loc").mkdir()  # an empty class folder: warned about, not trained on
    code, _, err = run("wafer", "train", root / "train", "--out", root / "model", *FAST, "--json")
    assert code == 0, err
    assert "warning:" in err and "'Loc' holds no .png/.npy maps" in " ".join(err.split())  # rich may wrap
    return root / "train", root / "test", root / "model"


def test_train_writes_a_model_and_reports_json(folders) -> None:
    _, _, model = folders
    card = json.loads((model / "card.json").read_text())
    assert card["classes"] == list(CLASSES)
    assert card["training"]["n_maps"] == 90 and "folder" in card["training"]["data"]
    assert card["metrics"]["validation"]["accuracy"] >= 0.8


def test_eval_json_has_every_metric_with_known_counts(folders) -> None:
    _, test, model = folders
    code, out, _ = run("wafer", "eval", model, test, "--json", "--threads", "1")
    assert code == 0
    r = json.loads(out)
    assert r["n"] == 30 and r["accuracy"] >= 0.8
    assert set(r) >= {"accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion"}
    assert {c: r["per_class"][c]["support"] for c in CLASSES} == dict.fromkeys(CLASSES, 10)
    assert np.sum(r["confusion"]["matrix"]) == 30


def test_predict_on_folder_and_real_fixtures(folders, shared) -> None:
    _, test, model = folders
    fx = shared / "fixtures"
    inputs = [test, fx / "klarf" / "QUU_NUU.000", fx / "stdf" / "lot2.stdf", fx / "g85" / "SEMI_G85_1101_ALL.xml"]
    code, out, _ = run("wafer", "predict", model, *inputs, "--json", "--threads", "1")
    assert code == 0
    rows = json.loads(out)["results"]
    assert len(rows) == 30 + 3 + 1 + 1  # QUU_NUU.000 holds three wafers
    real = rows[30:]
    assert [r["lot_id"] for r in real[:3]] == ["QUU"] * 3
    for r in rows:
        assert r["label"] in CLASSES and 0 < r["probability"] <= 1 and len(r["top3"]) == 3
        assert isinstance(r["needs_review"], bool)


def test_predict_flags_what_only_the_raw_grid_shows(folders, tmp_path) -> None:
    # A die-level checkerboard and an all-fail wafer, as .npy files: the network gives them
    # an ordinary class, the raw-grid rules send them to review and say why.
    _, _, model = folders
    yy, xx = np.mgrid[0:52, 0:52]
    inside = np.hypot(yy - 25.5, xx - 25.5) <= 26
    np.save(tmp_path / "checker.npy", np.where(inside, 1 + (yy + xx) % 2, 0).astype(np.uint8))
    np.save(tmp_path / "dead.npy", np.where(inside, 2, 0).astype(np.uint8))
    code, out, _ = run("wafer", "predict", model, tmp_path / "checker.npy", tmp_path / "dead.npy", "--json")
    assert code == 0
    checker, dead = json.loads(out)["results"]
    assert checker["needs_review"] and checker["review_reason"].startswith("periodic failures: 9")
    assert dead["needs_review"] and dead["review_reason"].startswith("whole-wafer failure: 100% of the dies fail")


def test_mixed_npz_trains_a_multilabel_model(tmp_path) -> None:
    combos = ("Center", "Edge-Ring", "Center+Edge-Ring", "none")
    write_mixedwm38(generate_dataset(20, classes=combos, seed=1), tmp_path / "mixed.npz")
    # --synthetic adds generated maps of the data's combinations; the review threshold is
    # then learnt on harder generated maps (--review-maps per combination), not on held-out ones.
    code, out, err = run(
        "wafer", "train", tmp_path / "mixed.npz", "--out", tmp_path / "m", "--synthetic", "5", "--review-maps", "3",
        *FAST, "--json",
    )  # fmt: skip
    assert code == 0, err
    r = json.loads(out)
    assert r["multilabel"] and r["classes"] == ["Center", "Edge-Ring"]
    assert r["training"]["n_maps"] == 80 + 4 * 5 and r["metrics"]["review"]["n"] == 4 * 3
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["extra"]["review_threshold"] == r["review_threshold"] == r["metrics"]["review"]["review_threshold"]
    code, out, _ = run("wafer", "eval", tmp_path / "m", tmp_path / "mixed.npz", "--json", "--threads", "1")
    r = json.loads(out)
    assert r["n"] == 80 and {"exact_match_accuracy", "per_label", "macro_f1"} <= set(r)


def test_user_mistakes_exit_2_with_one_line(folders, tmp_path) -> None:
    train, _, model = folders
    code, _, err = run("wafer", "train", "--out", tmp_path / "m")
    assert code == 2 and "give training DATA" in err
    code, _, err = run("wafer", "eval", tmp_path / "nope", train)
    assert code == 2 and "not a model directory" in err
    bad = tmp_path / "bad"
    (bad / "Donut").mkdir(parents=True)
    np.save(bad / "Donut" / "w1.npy", np.ones((20, 20), dtype=np.uint8))
    code, _, err = run("wafer", "eval", model, bad)
    assert code == 2 and "label 'Donut' is not a class of the model" in err
    code, _, err = run("wafer", "train", train, "--out", tmp_path / "m", "--head", "probe", *FAST)
    assert code == 2 and "needs init" in err
    code, _, err = run("wafer", "train", train, "--out", tmp_path / "m", "--arch", "huge")
    assert code == 2 and "--arch must be one of" in err
    assert not (tmp_path / "m").exists()  # nothing half-written


def test_real_entry_point_prints_one_line_and_exits_2(tmp_path) -> None:
    import os
    import subprocess
    import sys

    bad = tmp_path / "maps" / "Center"
    bad.mkdir(parents=True)
    np.save(bad / "w.npy", np.full((10, 10), 5, dtype=np.uint8))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.run(
        [sys.executable, "-m", "fabsight", "wafer", "train", str(tmp_path / "maps"), "--out", str(tmp_path / "m")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: ") and "w.npy" in proc.stderr


def test_class_with_one_example_is_a_warning_line(tmp_path) -> None:
    maps = generate_dataset(6, classes=("Center", "Edge-Ring"), shapes=((30, 30),), seed=4)[:7]  # Edge-Ring: 1
    write_folder(maps, tmp_path / "few")
    code, _, err = run("wafer", "train", tmp_path / "few", "--out", tmp_path / "m", "--epochs", "1", *FAST[2:])
    assert code == 0
    assert "warning: class 'Edge-Ring' has a single example" in " ".join(err.split())


def test_train_on_several_sources_with_val_and_budget(tmp_path) -> None:
    # Two sources in two formats spelling a class differently, a val folder in a third spelling.
    a = generate_dataset(20, classes=CLASSES, shapes=((30, 30),), seed=1)
    b = generate_dataset(20, classes=CLASSES, shapes=((26, 28),), seed=2)
    val = generate_dataset(6, classes=CLASSES, shapes=((40, 40),), seed=3)
    write_folder(a, tmp_path / "a")
    write_lswmd([replace(m, labels=(m.labels[0].replace("-", "_").lower(),)) for m in b], tmp_path / "b.pkl")
    write_folder([replace(m, labels=(m.labels[0].upper(),)) for m in val], tmp_path / "val")
    code, out, err = run(
        "wafer", "train", tmp_path / "a", tmp_path / "b.pkl", "--val", tmp_path / "val", "--max-minutes", "5",
        "--class-balance", "sqrt", "--out", tmp_path / "m", *FAST, "--json",
    )  # fmt: skip
    assert code == 0, err
    assert "edge_ring -> Edge-Ring" in " ".join(err.split())
    r = json.loads(out)
    assert r["classes"] == list(CLASSES) and r["training"]["n_maps"] == 120
    assert r["training"]["class_balance"] == "sqrt" and r["metrics"]["validation"]["n"] == 18
    code, out, err = run("wafer", "eval", tmp_path / "m", tmp_path / "val", "--json", "--threads", "1")
    assert code == 0 and "RANDOM -> Random" in " ".join(err.split())
    assert json.loads(out)["per_class"]["Random"]["support"] == 6
    # a source without labels among labelled ones is refused in one line naming it
    write_lswmd([replace(m, labels=()) for m in val[:3]], tmp_path / "u.pkl")
    code, _, err = run("wafer", "train", tmp_path / "a", tmp_path / "u.pkl", "--out", tmp_path / "m2", *FAST)
    assert code == 2 and "u.pkl" in err and "no labelled maps" in err and "\n" not in err.strip()
