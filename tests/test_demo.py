"""The main job (`fabsight demo`) on the packaged example lot."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from fabsight.cli.main import app
from fabsight.demo import example_files, run_demo


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


def test_demo_cli_json(tmp_path) -> None:
    res = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "o"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["wafers"] == 28
