"""``ask`` and ``explain`` over a lot's yield analytics, on generated lots with known answers:
planted repeaters counted, planted kill ratios and the deadliest class named, a planted tool
found from a wafer history, the dominant defect class from the Pareto, and each question
refused in one sentence saying what is missing when the data cannot answer it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from clikit import invoke
from fabsight.analytics.commonality import read_history
from fabsight.analytics.lot import LotAnalytics
from fabsight.analytics.pareto import pareto
from fabsight.analytics.repeaters import find_repeaters
from fabsight.assist.explain import explain_maps
from fabsight.assist.facts import wafer_facts
from fabsight.assist.knowledge import load_kb
from fabsight.assist.qa import Lot, ask
from fabsight.io import write_klarf
from fabsight.synth import generate_dataset
from fabsight.synth.defects import generate_defect_lot
from fabsight.synth.impact import paired_lot, planted_history


@pytest.fixture(scope="module")
def kb():
    return load_kb()


@pytest.fixture(scope="module")
def repeater_lot():
    return generate_defect_lot(n_wafers=4, lot_id="REP1", seed=4)


@pytest.fixture(scope="module")
def paired():
    return paired_lot(np.random.default_rng(11), n_wafers=8, shape=(30, 30), sort_flip_y=False)


def _lot(maps, kb, history=None, preds=None) -> Lot:
    preds = preds or [None] * len(maps)
    return Lot([wafer_facts(m, p) for m, p in zip(maps, preds, strict=True)], kb, LotAnalytics(list(maps), history))


def test_repeaters_are_counted_from_find_repeaters(repeater_lot, kb) -> None:
    found = find_repeaters(repeater_lot.maps)
    planted = sum(int(p.sum()) for p in repeater_lot.planted)
    assert abs(found.total - planted) <= 0.05 * planted
    a = ask("Are there repeaters?", _lot(repeater_lot.maps, kb))
    assert a.answered and a.intent == "repeaters" and a.data["repeaters"] == found.total
    assert a.text.startswith(f"Yes: {found.total:,} of the {sum(len(m.defects) for m in repeater_lot.maps):,} defects")
    one = ask("Do defects repeat on wafer 2?", _lot(repeater_lot.maps, kb))
    assert one.answered and one.data["repeaters"] == int(found.wafers[1].flags.sum())
    clean = generate_defect_lot(n_wafers=3, wafer_repeaters=0, lot_repeaters=0, lot_id="CLN1", seed=1)
    assert ask("Are there any repeating defects?", _lot(clean.maps, kb)).text.startswith("No: none of the ")


def test_kill_ratio_answers_name_the_planted_killer(paired, kb) -> None:
    lot = _lot(paired.inspection + paired.sort, kb)
    top = ask("Which defect class kills the most dies?", lot)
    assert top.answered and top.intent == "kill_ratio" and top.text.startswith("Defect class 1 CLASS1 kills the most")
    assert "alignment --offset 0,0" in top.text
    two = ask("What is the kill ratio of class 2?", lot)
    assert two.answered and abs(two.data["row"]["kill_ratio"] - paired.kill_ratio(2)) < 0.06
    assert f"kill ratio {two.data['row']['kill_ratio']:+.3f}" in two.text
    missing = ask("What is the kill ratio of class 9?", lot)
    assert not missing.answered and "defect class 9 is on no paired wafer" in missing.text


def test_kill_ratio_is_refused_saying_what_is_missing(paired, kb) -> None:
    only = ask("Which defect class kills the most dies?", _lot(paired.inspection, kb))
    assert not only.answered and only.intent == "kill_ratio"
    assert only.text.endswith("and the data holds inspection (KLARF) results only.")
    facts_only = Lot([wafer_facts(m) for m in paired.inspection], kb)
    assert "only stored facts" in ask("What is the kill ratio of class 1?", facts_only).text


def test_dominant_defect_class_comes_from_the_pareto(paired, kb) -> None:
    a = ask("Which defect class dominates?", _lot(paired.inspection, kb))
    expected = pareto(paired.inspection, "class").rows[0]
    assert a.answered and a.intent == "defect_pareto" and f"{expected.label} dominates" in a.text
    bins = ask("Which bin loses the most dies?", _lot(paired.sort, kb))
    assert bins.answered and bins.data["unit"] == "failing dies" and "yield loss" in bins.text
    maps = generate_dataset(2, classes=("Center",), shapes=((30, 30),), seed=1)
    assert ask("Which defect class dominates?", _lot(maps, kb)).intent == "main_pattern"  # no defect list


def test_commonality_finds_the_planted_tool(tmp_path: Path, kb) -> None:
    hist = planted_history(np.random.default_rng(5), lots=("L01",), wafers_per_lot=40, rate_with=0.9,
                           rate_without=0.05)
    path = tmp_path / "history.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, list(hist.rows[0]))
        writer.writeheader()
        writer.writerows(hist.rows)
    maps = generate_dataset(40, classes=("Center",), shapes=((26, 26),), seed=2)[:40]
    preds = []
    for i, m in enumerate(maps, start=1):
        m.lot_id, m.wafer_id = "L01", f"{i:02d}"
        label = "Edge-Ring" if ("L01", m.wafer_id) in hist.flagged else "none"
        preds.append({"label": label, "probability": 0.95})
    lot = _lot(maps, kb, read_history(path), preds)
    a = ask("Which tool do the edge-ring wafers share?", lot)
    assert a.answered and a.intent == "commonality" and a.slots["factor"] == "tool"
    assert f"{len(hist.flagged)} of 40 wafers have pattern Edge-Ring; " in a.text and "tool ETCH02 at ETCH" in a.text
    assert a.data["findings"][0]["level"] == "ETCH02" and a.data["findings"][0]["p_value"] < 0.01
    no_history = ask("Which tool do the edge-ring wafers share?", _lot(maps, kb, None, preds))
    assert not no_history.answered and "needs a wafer history CSV" in no_history.text
    no_pattern = ask("Which chamber do the wafers share?", lot)
    assert not no_pattern.answered and "name a pattern" in no_pattern.text


def test_explanations_state_repeaters_and_the_killer(repeater_lot, paired, kb) -> None:
    found = find_repeaters(repeater_lot.maps)
    texts = [e.text for e in explain_maps(repeater_lot.maps, kb)]
    for text, w in zip(texts, found.wafers, strict=True):
        assert (f"{int(w.flags.sum())} of its {w.flags.size} defects are repeaters" in text) == bool(w.flags.any())
    insp = explain_maps(paired.inspection + paired.sort, kb)[: len(paired.inspection)]
    assert all("defect class 1 CLASS1 kills the most dies: kill ratio +" in e.text for e in insp)
    assert all(e.facts.lot["killer"]["name"] == "1 CLASS1" for e in insp)


def test_cli_ask_with_a_history(repeater_lot, tmp_path: Path) -> None:
    klarf = write_klarf(repeater_lot.maps, tmp_path / "rep.000")
    code, out, _ = invoke("ask", klarf, "Are there repeaters?", "--json")
    assert code == 0 and json.loads(out)["intent"] == "repeaters" and json.loads(out)["answered"]
    bad = tmp_path / "hist.csv"
    bad.write_text("LOT,WAFER,tool\nREP1,01,T1\n")
    code, out, err = invoke("ask", klarf, "Which tool do the edge-ring wafers share?", "--history", bad)
    assert code == 2 and err.strip().splitlines() == [f"error: {bad}: no column 'lot' for lot (columns: LOT, WAFER, "
                                                      "tool); name it with --lot-col"]
