"""Commonality: a planted tool effect is found, random histories give false positives at no
more than the nominal rate, and a history or results file that does not fit is refused in one line."""

from __future__ import annotations

import csv
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from clikit import run_cli
from fabsight.analytics.commonality import (
    Flag,
    HistoryRow,
    WaferResult,
    commonality,
    correct,
    holm,
    read_history,
    read_results,
)
from fabsight.errors import FabsightError
from fabsight.synth.impact import History, planted_history

_RENAMED = {"lot": "LOT_ID", "wafer": "WAFER_NO", "step": "OPERATION", "tool": "EQUIPMENT", "chamber": "CHAMBER",
            "slot": "SLOT", "time": "TRACK_OUT"}


def _write_history(h: History, path: Path, names: dict[str, str]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(names.values()))
        w.writeheader()
        w.writerows({names[k]: v for k, v in row.items()} for row in h.rows)
    return path


def _write_predictions(h: History, path: Path, pattern: str = "Edge-Ring") -> Path:
    """Results in the schema of ``fabsight wafer predict --json``."""
    rows = [{"source": "x.klarf", "lot_id": lot, "wafer_id": w, "shape": [40, 40],
             "label": pattern if (lot, w) in h.flagged else "none", "probability": 0.9, "review_reason": None}
            for lot, w in h.wafers]
    path.write_text(json.dumps({"model": "pretrained", "results": rows, "errors": []}))
    return path


def _in_memory(h: History) -> tuple[list[WaferResult], list[HistoryRow]]:
    results = [WaferResult(lot, w, "Edge-Ring" if (lot, w) in h.flagged else "none") for lot, w in h.wafers]
    rows = [HistoryRow(r["lot"], r["wafer"], r["step"], {k: r[k] for k in ("tool", "chamber", "slot")},
                       datetime.fromisoformat(r["time"])) for r in h.rows]
    return results, rows


def test_planted_tool_effect_is_found_through_the_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = planted_history(np.random.default_rng(3), effect=("ETCH", "ETCH02"), rate_with=0.6, rate_without=0.1)
    hist = _write_history(h, tmp_path / "history.csv", _RENAMED)
    preds = _write_predictions(h, tmp_path / "pred.json")
    args = ["commonality", preds, "--history", hist, "--pattern", "edge-ring", "--json"]
    args += [x for k, v in _RENAMED.items() for x in (f"--{k}-col", v)]
    code, out, err = run_cli(args, capsys)
    assert code == 0 and not err
    result = json.loads(out)
    top = result["findings"][0]
    assert (top["step"], top["factor"], top["level"]) == ("ETCH", "tool", "ETCH02")
    assert top["p_value"] < 0.01 and top["q_value"] < 0.05
    assert result["wafers"] == 100 and result["flagged"] == len(h.flagged)
    assert result["factors"][0]["step"] == "ETCH" and result["factors"][0]["q_value"] < 0.05
    assert {f["factor"] for f in result["findings"]} == {"tool", "chamber", "slot", "time"}
    slots = {f["step"] for f in result["findings"] if f["factor"] == "slot"}
    assert slots == {"LITHO, ETCH, CMP, IMPLANT"}  # one slot kept through the flow: tested once


def test_answer_names_the_tool_with_its_numbers() -> None:
    h = planted_history(np.random.default_rng(3))
    report = commonality(*_in_memory(h), Flag(pattern="Edge-Ring"))
    top = report.significant()[0]
    text = report.answer("tool")
    assert "ETCH02 at ETCH" in text and f"{top.flagged_at} of {top.wafers_at} wafers" in text


def test_random_histories_give_false_positives_at_the_nominal_rate() -> None:
    raw, any_q, n_tests = 0, 0, 0
    for seed in range(40):
        h = planted_history(np.random.default_rng(1000 + seed), effect=None, rate_without=0.25)
        report = commonality(*_in_memory(h), Flag(pattern="Edge-Ring"))
        p = np.array([f.p_value for f in report.findings])
        raw += int((p < 0.05).sum())
        n_tests += p.size
        any_q += bool(report.significant(0.05))
    assert raw / n_tests <= 0.06  # Fisher's exact test is conservative: at most the nominal 5 %
    assert any_q / 40 <= 0.15  # BH keeps the chance of any false discovery near 5 % under the null


def test_holm_and_bh_corrections() -> None:
    assert holm(np.array([0.01, 0.04, 0.03])).tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert correct([0.01, 0.04, 0.03], "bh").tolist() == pytest.approx([0.03, 0.04, 0.04])
    with pytest.raises(FabsightError, match="bh or holm"):
        correct([0.5], "bonferroni")


def test_yield_and_defect_class_flags_from_csv_results(tmp_path: Path) -> None:
    path = tmp_path / "res.csv"
    path.write_text("lot,wafer,yield,defect_class\nA,1,0.95,\nA,2,0.42,12;7\nA,3,,7\n")
    results = read_results(path)
    assert [r.key for r in results if Flag(yield_below=0.5).flags(r)] == [("a", "2")]
    assert [r.wafer for r in results if Flag(defect_class="7").flags(r)] == ["2", "3"]
    with pytest.raises(FabsightError, match="exactly one"):
        Flag()


def test_history_without_the_named_columns_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    h = planted_history(np.random.default_rng(0), lots=("L01",), wafers_per_lot=5)
    hist = _write_history(h, tmp_path / "h.csv", {k: k for k in _RENAMED})
    preds = _write_predictions(h, tmp_path / "p.json")
    code, out, err = run_cli(["commonality", preds, "--history", hist, "--pattern", "x", "--tool-col", "EQP"], capsys)
    assert code == 2 and not out and err.count("\n") == 1
    assert "h.csv: no column 'EQP' for tool" in err and "--tool-col" in err
    bare = tmp_path / "bare.csv"
    bare.write_text("LOT,WAFER,TOOL\nL01,01,T1\n")
    code, _, err = run_cli(["commonality", preds, "--history", bare, "--pattern", "x"], capsys)
    assert code == 2 and "bare.csv: no column 'lot' for lot" in err and "--lot-col" in err


def test_bad_history_values_and_unmatched_wafers(tmp_path: Path) -> None:
    bad_time = tmp_path / "t.csv"
    bad_time.write_text("lot,wafer,tool,time\nL01,01,T1,yesterday\n")
    with pytest.raises(FabsightError, match=r"t.csv: line 2: time 'yesterday' is not an ISO"):
        read_history(bad_time)
    other = tmp_path / "o.csv"
    other.write_text("lot,wafer,tool\nZ9,01,T1\nZ9,02,T2\n")
    with pytest.raises(FabsightError, match="no wafer of the results is in the history"):
        commonality([WaferResult("L01", "01", "Edge-Ring")], read_history(other), Flag(pattern="Edge-Ring"),
                    history_source=str(other))
