"""Multi-label training on real MixedWM38 maps (1 % piece) and the eval JSON of a mixed model."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.io import read_maps, write_mixedwm38
from fabsight.wafer import WaferClassifier, evaluate
from fabsight.wafer.classifier import label_tuple


@pytest.fixture(scope="module")
def mixed(shared: Path) -> Path:
    root = shared / "data" / "mixedwm38"
    if not (root / "MixedWM38_train_01.npz").is_file():
        pytest.skip("MixedWM38 pieces are not in ../shared/data/mixedwm38")
    return root


def test_brief_training_on_the_1pc_piece_beats_the_majority_combination(mixed: Path, tmp_path: Path) -> None:
    train = read_maps(mixed / "MixedWM38_train_01.npz")
    val = read_maps(mixed / "MixedWM38_val.npz")
    calib, test = val[:300], val[300:900]
    clf = WaferClassifier(input_size=32, multilabel=True, epochs=12, n_threads=1, random_state=0)
    clf.fit(train, val_maps=calib)
    # Trivial level: answering every map with the commonest label set of the training piece
    # (C+EL+S, two of the 38 classes share its vector) is right on ~1/19 of the maps.
    common = Counter(label_tuple(m.labels) for m in train).most_common(1)[0][0]
    trivial = sum(label_tuple(m.labels) == common for m in test) / len(test)
    assert trivial < 0.1
    result = evaluate(clf, test)
    assert result["exact_match_accuracy"] > 4 * trivial
    assert result["macro_f1"] > 0.6

    clf.save(tmp_path / "model")
    write_mixedwm38(test[:50], tmp_path / "slice.npz")
    out = CliRunner().invoke(app, ["wafer", "eval", str(tmp_path / "model"), str(tmp_path / "slice.npz"),
                                   "--json", "--threads", "1"])  # fmt: skip
    assert out.exit_code == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["n"] == 50 and {"exact_match_accuracy", "macro_f1", "per_label"} <= set(r)
    assert set(r["per_label"]) == set(clf.classes_) and len(clf.classes_) == 8
    assert {"precision", "recall", "f1", "support"} == set(r["per_label"]["Scratch"])
