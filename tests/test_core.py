"""Canonical types, model cards and atomic writes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fabsight.artifacts import ModelCard, load_card, save_card
from fabsight.errors import ModelError
from fabsight.types import WaferMap
from fabsight.utils.atomic import atomic_dir, atomic_open


def test_wafermap_counts_and_yield() -> None:
    grid = np.array([[0, 1, 0], [1, 2, 1], [0, 2, 0]])
    w = WaferMap(grid, lot_id="L", wafer_id="3")
    assert (w.n_good, w.n_fail, w.n_off, w.n_dies) == (3, 2, 4, 5)
    assert w.yield_ == pytest.approx(0.6)
    assert w.summary()["yield"] == pytest.approx(0.6)


def test_wafermap_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        WaferMap(np.zeros((2, 2, 2)))


def test_card_round_trip_and_task_check(tmp_path) -> None:
    save_card(tmp_path, ModelCard(task="wafer-classifier", classes=["a", "b"]))
    assert load_card(tmp_path, "wafer-classifier").classes == ["a", "b"]
    with pytest.raises(ModelError, match="expected 'anomaly'"):
        load_card(tmp_path, "anomaly")
    with pytest.raises(ModelError, match=r"no card\.json"):
        load_card(tmp_path.parent)


def test_card_missing_listed_file(tmp_path) -> None:
    save_card(tmp_path, ModelCard(task="x", files={"weights": "w.safetensors"}))
    with pytest.raises(ModelError, match="missing"):
        load_card(tmp_path)


def test_atomic_open_leaves_old_file_on_failure(tmp_path) -> None:
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as fh:
        fh.write("partial")
        raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_atomic_dir_swaps_whole_directory(tmp_path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as d:
        (d / "card.json").write_text(json.dumps({"task": "x"}))
    with pytest.raises(RuntimeError), atomic_dir(target) as d:
        (d / "card.json").write_text("{}")
        raise RuntimeError("training failed")
    assert json.loads((target / "card.json").read_text()) == {"task": "x"}


def test_resolve_device_rules() -> None:
    import torch

    from fabsight.errors import FabsightError
    from fabsight.utils.device import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(FabsightError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(FabsightError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_reproducible_cudnn_is_scoped_and_restores_the_callers_flags() -> None:
    import torch

    from fabsight.utils.device import reproducible_cudnn

    cudnn = torch.backends.cudnn
    saved = cudnn.deterministic, cudnn.benchmark
    try:
        cudnn.deterministic, cudnn.benchmark = False, True  # what a caller tuned for speed would have
        seen = []

        @reproducible_cudnn()
        def train() -> None:
            seen.append((cudnn.deterministic, cudnn.benchmark))
            raise RuntimeError("a training step failed")

        for _ in range(2):  # reusable as a decorator, and restored even when training raises
            with pytest.raises(RuntimeError, match="training step failed"):
                train()
            assert (cudnn.deterministic, cudnn.benchmark) == (False, True)
        assert seen == [(True, False), (True, False)]
    finally:
        cudnn.deterministic, cudnn.benchmark = saved


def test_error_messages_stay_on_one_line() -> None:
    # A message quoting a damaged file may carry its line breaks; the CLI prints one line.
    from fabsight.errors import FormatError

    exc = FormatError("lot.klarf", 'expected \'{\' in Field "DieOrigin 2 {0, 0}\nField Orientation\r\n"')
    assert "\n" not in str(exc) and "\r" not in str(exc)
    assert str(exc) == 'lot.klarf: expected \'{\' in Field "DieOrigin 2 {0, 0}\\nField Orientation\\r\\n"'
