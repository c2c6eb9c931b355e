"""One card schema and one loading entry point for every task (``fabsight.load``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fabsight
from fabsight.artifacts import SCHEMA_VERSION, ModelCard, load_card, registered_tasks, save_card
from fabsight.errors import FabsightError, ModelError
from fabsight.wafer.pretrained import PRETRAINED_DIR

DEMO_LOT = Path(fabsight.__file__).parent / "examples" / "demo_lot"


def test_unknown_card_keys_survive_a_load_and_save(tmp_path: Path) -> None:
    save_card(tmp_path, ModelCard(task="x"))
    raw = json.loads((tmp_path / "card.json").read_text())
    raw["owner"] = {"team": "litho"}
    (tmp_path / "card.json").write_text(json.dumps(raw))
    card = load_card(tmp_path)
    assert card.other == {"owner": {"team": "litho"}}
    save_card(tmp_path, card)
    assert json.loads((tmp_path / "card.json").read_text())["owner"] == {"team": "litho"}


def test_a_card_from_a_newer_fabsight_is_refused_in_one_line(tmp_path: Path) -> None:
    save_card(tmp_path, ModelCard(task="x"))
    raw = json.loads((tmp_path / "card.json").read_text())
    assert raw["schema"] == SCHEMA_VERSION
    raw["schema"] = SCHEMA_VERSION + 1
    (tmp_path / "card.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="newer than this fabsight reads"):
        load_card(tmp_path)


def test_cards_without_a_schema_are_read_as_schema_0_and_saved_in_the_current_one(tmp_path: Path) -> None:
    (tmp_path / "card.json").write_text(json.dumps({"task": "x", "classes": ["a"]}))
    card = load_card(tmp_path)
    assert card.schema == 0 and card.other == {}
    save_card(tmp_path, card)
    assert json.loads((tmp_path / "card.json").read_text())["schema"] == SCHEMA_VERSION


def test_every_registered_loader_resolves() -> None:
    tasks = registered_tasks()
    assert {"wafer-pattern", "die-classifier", "anomaly", "golden-template-inspection"} <= set(tasks)
    for entry in tasks.values():
        assert callable(entry.resolve())


@pytest.mark.parametrize("runtime", ["torch", "onnx"])
def test_load_gives_the_wafer_predictor_for_either_runtime(runtime: str) -> None:
    from fabsight.io import read_maps

    clf = fabsight.load(PRETRAINED_DIR, runtime=runtime)
    maps = read_maps(DEMO_LOT / "LOT-A101.klarf")
    proba = clf.predict_proba(maps)
    assert proba.shape == (len(maps), len(load_card(PRETRAINED_DIR).classes))
    assert np.allclose(proba.sum(axis=1), 1.0, atol=1e-5)


def test_load_refuses_an_unknown_task_and_a_runtime_the_task_lacks(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    save_card(tmp_path / "m", ModelCard(task="crystal-ball"))
    with pytest.raises(ModelError, match="no loader for task 'crystal-ball'"):
        fabsight.load(tmp_path / "m")
    save_card(tmp_path / "m", ModelCard(task="golden-template-inspection"))
    with pytest.raises(FabsightError, match="runs in torch, not 'onnx'"):
        fabsight.load(tmp_path / "m", runtime="onnx")
