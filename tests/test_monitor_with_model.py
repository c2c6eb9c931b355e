"""Monitoring and auto-labelling with a real (tiny) wafer classifier, end to end."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

import numpy as np
import pytest
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.io import read_maps, write_folder, write_klarf
from fabsight.labeling import list_queue, load_map
from fabsight.monitor import monitor_lots
from fabsight.synth import generate_dataset
from fabsight.types import WaferMap
from fabsight.wafer import WaferClassifier, load_model

CLASSES = ("Center", "Edge-Ring", "none")
FAST = {"input_size": 32, "epochs": 4, "batch_size": 32, "n_threads": 1}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    train = generate_dataset(30, classes=CLASSES, shapes=((30, 30), (40, 40)), seed=0)
    path = tmp_path_factory.mktemp("model") / "wafer"
    WaferClassifier(**FAST).fit(train).save(path)
    return path


def test_autolabel_with_real_model_queues_the_unknown_pattern_first(model_dir, tmp_path) -> None:
    known = generate_dataset(15, classes=CLASSES, shapes=((36, 36),), seed=5)
    unknown = generate_dataset(10, classes=("Scratch",), shapes=((36, 36),), seed=6)  # never trained on
    maps = [WaferMap(m.grid, lot_id="U", wafer_id=str(i)) for i, m in enumerate(known + unknown)]
    write_folder(maps, tmp_path / "raw")
    runner = CliRunner()
    out = tmp_path / "al"
    r = runner.invoke(
        app,
        [
            "autolabel",
            str(tmp_path / "raw"),
            "--model",
            str(model_dir),
            "--out",
            str(out),
            "--threshold",
            "0.9",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["total"] == 55 and summary["labeled"] + summary["review"] == 55
    labeled = read_maps(out / "labeled")
    truth = {m.grid.tobytes(): m.labels[0] for m in known + unknown}
    correct = sum(truth[m.grid.tobytes()] == m.label for m in labeled)
    assert len(labeled) >= 20 and correct / len(labeled) >= 0.9
    queue = [truth[load_map(out, q).tobytes()] for q in list_queue(out)]
    scratch_rank = [k for k, label in enumerate(queue) if label == "Scratch"]
    # Scratch maps cannot be labelled right by this model: at least half must wait for a person ...
    assert len(scratch_rank) >= 5
    # ... and they are worth more than the queued maps of known classes.
    others = [k for k, label in enumerate(queue) if label != "Scratch"]
    assert not others or np.mean(scratch_rank) < np.mean(others)
    # Routing is exactly the model's: confident and unflagged → labeled, everything else → queue.
    details = load_model(model_dir).predict_details(read_maps(tmp_path / "raw"))
    routed = sum(d["probability"] >= 0.9 and not d["needs_review"] for d in details)
    assert routed == len(labeled) == summary["labeled"]


def test_monitor_with_model_charts_pattern_shares(model_dir, tmp_path) -> None:
    t0 = datetime(2026, 5, 1)
    maps = []
    for k in range(5):
        mix = ("none",) if k < 4 else ("none", "Edge-Ring")
        lot = generate_dataset(12 // len(mix), classes=mix, shapes=((36, 36),), seed=20 + k)
        maps += [
            WaferMap(m.grid, lot_id=f"L{k}", wafer_id=str(i), timestamp=t0 + timedelta(days=k))
            for i, m in enumerate(lot)
        ]
    res = monitor_lots(maps, model=load_model(model_dir), n_baseline=3, n_permutations=99)
    names = [c.name for c in res.charts]
    assert names == ["fail fraction", "share of Center", "share of Edge-Ring", "share of none"]
    ring = res.charts[2]
    assert ring.value[4] >= 0.4 and ring.value[:3].max() <= 0.1
    ring_alarm = [a for a in res.alarms if (a.lot, a.chart, a.kind) == ("L4", "share of Edge-Ring", "limit")]
    assert len(ring_alarm) == 1 and ring_alarm[0].detail.endswith("(absent from every baseline lot)") == (
        ring.center == 0
    )
    assert "L3" not in {a.lot for a in res.alarms}
    changes = {c.pattern: c for c in res.drift["L4"].pattern_changes}
    assert changes["Edge-Ring"].change >= 0.4
    summary = res.to_dict(maps)["lots"][4]
    assert summary["pattern_mix"].get("Edge-Ring", 0) >= 5

    write_klarf(maps[:12], tmp_path / "a.000")
    write_klarf(maps[-12:], tmp_path / "b.000")
    r = CliRunner().invoke(
        app,
        [
            "drift",
            str(tmp_path / "a.000"),
            str(tmp_path / "b.000"),
            "--model",
            str(model_dir),
            "--permutations",
            "99",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    res = json.loads(r.stdout)
    assert res["drift"] and res["pattern_changes"][0]["pattern"] in ("Edge-Ring", "none")
    assert any(f["name"] == "p[Edge-Ring]" for f in res["per_feature"])
