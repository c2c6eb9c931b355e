"""The main job (`fabsight demo`) on the packaged example lot."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.demo import STORE_NAME, example_files, run_demo
from fabsight.errors import FabsightError
from fabsight.store import open_store
from fabsight.store.queries import WaferFilter, counts, list_wafers
from servekit import CLASSES


def test_example_lot_is_packaged_in_every_format() -> None:
    names = {p.suffix for p in example_files()}
    assert {".klarf", ".stdf", ".xml"} <= names


def test_demo_reads_every_wafer_and_writes_report(tmp_path) -> None:
    summary = run_demo(tmp_path / "out")
    # 3 KLARF lots of 8 wafers, 3 sort wafers in the STDF, 1 G85 map (see examples/make_demo_lot.py)
    assert summary["wafers"] == 28
    lots = {(lot["lot"], lot["format"]): lot["wafers"] for lot in summary["lots"]}
    assert lots == {("A101", "klarf"): 8, ("A102", "klarf"): 8, ("A103", "klarf"): 8, ("A103", "stdf"): 3,
                    ("A103", "g85"): 1}
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("<img") == 28
    saved = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert saved["wafers"] == 28
    # the STDF and G85 copies of lot A103 wafer 01 are the same wafer as in the KLARF
    w01 = [r for r in saved["results"] if r["lot_id"] == "A103" and r["wafer_id"] == "01"]
    assert sorted(r["format"] for r in w01) == ["g85", "klarf", "stdf"]
    assert len({(r["good"], r["failing"]) for r in w01}) == 1
    # without a model every wafer is stored, explained and queued for a person
    store = open_store(tmp_path / "out" / STORE_NAME)
    with store.session() as s:
        assert counts(s) == {"uploads": 5, "lots": 3, "wafers": 28, "reviews": 28, "die_results": 0}
        assert len(list_wafers(s, WaferFilter(review="pending"), limit=None)) == 28
    store.close()


def test_demo_with_a_model_classifies_explains_and_stores(tmp_path, wafer_models_dir) -> None:
    out = tmp_path / "out"
    summary = run_demo(out, models_dir=wafer_models_dir)
    assert summary["model"] == str(wafer_models_dir) and sum(summary["patterns"].values()) == 28
    assert all(r["pattern"] in CLASSES and r["explanation"] for r in summary["results"])
    store = open_store(out / STORE_NAME)
    with store.session() as s:
        stored = list_wafers(s, WaferFilter(), limit=None, newest_first=False)
        assert [(w.lot.name, w.wafer_id, w.prediction.label) for w in stored] == [
            (r["lot_id"], r["wafer_id"], r["pattern"]) for r in summary["results"]
        ]
    store.close()
    html = (out / "report.html").read_text()
    assert html.count("<details>") == 28 and summary["results"][0]["explanation"][:40] in html
    # a failing re-run (a missing input) leaves the previous output untouched
    with pytest.raises(FabsightError, match="no such file"):
        run_demo(out, [tmp_path / "missing.klarf"], models_dir=wafer_models_dir)
    assert json.loads((out / "summary.json").read_text())["wafers"] == 28


def test_demo_cli_uses_the_shipped_model_unless_one_is_named(tmp_path) -> None:
    from fabsight.wafer.pretrained import PRETRAINED_DIR, pretrained_dir

    pretrained_dir()  # a missing shipped model fails here, not as a confusing demo error
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, res.output
    assert "wafer model: the shipped WM-811K model" in res.stderr
    result = json.loads(res.stdout)
    assert result["model"] == str(PRETRAINED_DIR) and sum(result["patterns"].values()) == 28
    card = json.loads((PRETRAINED_DIR / "card.json").read_text())
    assert {r["pattern"] for r in result["results"]} <= set(card["classes"])  # every wafer named a WM-811K class


def test_demo_cli_json(tmp_path, wafer_models_dir) -> None:
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "o"), "--models", str(wafer_models_dir), "--json"])
    assert res.exit_code == 0, res.output
    result = json.loads(res.stdout)
    assert result["wafers"] == 28 and result["store"].endswith(STORE_NAME)
