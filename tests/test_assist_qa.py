"""Offline Q&A: held-out phrasings, refusals, and answers checked against the measured facts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from assist_maps import disc_map
from fabsight.assist.facts import wafer_facts
from fabsight.assist.knowledge import load_kb
from fabsight.assist.qa import INTENTS, Lot, ask, delexicalize

PHRASINGS = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "qa_phrasings.yaml"
#: wafer id → (drawn pattern, the classifier label the test pretends to get)
LOT = {"1": ("edge-ring", "Edge-Ring"), "2": ("center", "Center"), "3": ("donut", "Donut"),
       "4": ("scratch", "Scratch"), "5": ("edge-ne", "Edge-Loc"), "6": ("random", "Random")}


def _pred(label: str) -> dict:
    return {"label": label, "probability": 0.9, "top3": [[label, 0.9]], "needs_review": False, "review_reason": None}


@pytest.fixture(scope="module")
def lot() -> Lot:
    facts = [wafer_facts(disc_map(kind, seed=int(w), wafer_id=w, lot_id="L1"), _pred(label))
             for w, (kind, label) in LOT.items()]
    return Lot(facts, load_kb())


@pytest.fixture(scope="module")
def phrasings() -> dict:
    return yaml.safe_load(PHRASINGS.read_text())


def test_phrasings_are_held_out(phrasings) -> None:
    examples = {delexicalize(e).lower() for i in INTENTS for e in i.examples}
    asked = [p["q"] for p in phrasings["answerable"]]
    assert len(asked) >= 40 and len(phrasings["unanswerable"]) >= 10
    assert not examples & {delexicalize(q).lower() for q in asked + phrasings["unanswerable"]}


def test_held_out_phrasings_are_understood_and_unanswerable_refused(lot, phrasings) -> None:
    wrong = []
    for item in phrasings["answerable"]:
        a = ask(item["q"], lot)
        expected = {k: str(v) for k, v in (item.get("slots") or {}).items()}
        got = {k: a.slots.get(k) for k in expected}
        if not a.answered or a.intent != item["intent"] or got != expected:
            wrong.append((item["q"], a.intent, got))
    accuracy = 1 - len(wrong) / len(phrasings["answerable"])
    # measured 54/58 = 0.931 and 24/24 refused (benchmarks/explain.py); misses are listed on failure
    assert accuracy >= 0.9, wrong
    refused = [ask(q, lot) for q in phrasings["unanswerable"]]
    kept = [(a.question, a.text) for a in refused if a.answered]
    assert not kept, kept
    assert all("cannot be answered from the data" in a.text for a in refused if not a.answered)


def test_pattern_questions_select_the_right_wafers(lot) -> None:
    a = ask("Which wafers show edge-ring?", lot)
    assert a.answered and a.data["wafers"] == ["1"]
    assert a.text == "1 of 6 wafers show Edge-Ring: 1."
    b = ask("Does wafer 4 have a scratch?", lot)
    assert b.data["present"] is True and b.text.startswith("Yes")
    c = ask("Does wafer 2 have a donut?", lot)
    assert c.data["present"] is False and c.text.startswith("No")
    d = ask("Which wafers have a donutt pattern?", lot)  # typo: fuzzy match
    assert d.slots["pattern"] == "Donut" and d.data["wafers"] == ["3"]


def test_counts_and_yields_come_from_the_facts(lot) -> None:
    by_id = dict(zip(lot.ids, lot.facts, strict=True))
    a = ask("How many dies fail near the notch on wafer 1?", lot)
    assert a.data["failing"] == by_id["1"].notch.failing and a.data["dies"] == by_id["1"].notch.dies
    total = ask("How many dies fail near the notch?", lot)
    assert total.data["failing"] == sum(f.notch.failing for f in lot.facts)
    yields = {w: f.yield_.yield_ for w, f in by_id.items()}
    worst = min(yields, key=yields.get)
    r = ask("Which wafer has the lowest yield?", lot)
    assert r.data["order"][0] == worst and r.text.startswith(f"Wafer {worst} has the lowest yield")
    best = ask("Which wafer has the highest yield?", lot)
    assert best.data["order"][0] == max(yields, key=yields.get)
    cmp = ask(f"Is wafer {worst} worse than the lot?", lot)
    others = [y for w, y in yields.items() if w != worst]
    assert cmp.data["worse"] is True and cmp.data["lot_median"] == pytest.approx(float(np.median(others)))
    assert cmp.text.startswith("Yes") and "rank 1 of 6" in cmp.text
    z = ask("How many failing dies are at the edge of wafer 1?", lot)
    assert z.intent == "zone_fails" and z.data["failing"] == by_id["1"].extent.failing_by_zone["edge"]


def test_root_cause_answers_quote_the_knowledge_base(lot) -> None:
    kb = load_kb()
    a = ask("Which process problems lead to scratches?", lot)
    assert a.intent == "root_cause" and kb.get("Scratch").causes[0].cause in a.text
    b = ask("What is the likely root cause on wafer 1?", lot)
    assert b.data["pattern"] == "Edge-Ring" and "edge-bead" in b.text.lower()


def test_refusals_name_what_is_missing(lot) -> None:
    a = ask("Is wafer 42 worse than the lot?", lot)
    assert not a.answered and "wafer 42 is not in the data" in a.text
    b = ask("What is the weather in Dresden today?", lot)
    assert not b.answered and b.intent in (None, "out_of_scope")
    unclassified = Lot([wafer_facts(disc_map("edge-ring", wafer_id="9"))], load_kb())
    c = ask("Which wafers show edge-ring?", unclassified)
    assert c.answered and "No classifier was given" in c.text
    single = ask("How many dies fail?", unclassified)
    assert single.data["failing"] == unclassified.facts[0].extent.failing


def test_out_of_scope_questions_in_an_in_scope_frame_are_refused(lot) -> None:
    # each borrows a computable question's frame (how much ... wafer, which ... wafers, how many wafers)
    for q in ("How much does a 300 mm wafer cost?", "Which prober tested these wafers?",
              "How many wafers per hour does the scanner process?", "Who reviewed wafer 3?",
              "When did wafer 2 leave the etcher?"):
        a = ask(q, lot)
        assert not a.answered and a.text.startswith("This question cannot be answered from the data"), (q, a.text)
    # ... while the same words in a question the maps answer still get an answer
    cost = ask("What does the edge ring cost us in yield?", lot)
    assert cost.answered and cost.intent == "severity"
    many = ask("How many wafers were inspected?", lot)
    assert many.answered and many.data["count"] == 6


@pytest.fixture(scope="module")
def demo_facts() -> dict[str, list]:
    """Facts of the packaged example lots per file: KLARF A101-A103, the STDF and the G85 of A103."""
    from fabsight.demo import example_files
    from fabsight.io import read_maps

    return {p.name: [wafer_facts(m) for m in read_maps(p)] for p in example_files()}


def test_inspection_and_sort_of_one_lot_list_each_wafer_once(demo_facts) -> None:
    a103 = [f for name, fs in demo_facts.items() if "A103" in name for f in fs]
    assert len(a103) == 12  # 8 inspected, 3 sorted in the STDF, 1 in the G85
    lot = Lot(a103, load_kb())
    listed = ask("List the wafer ids", lot)
    assert listed.intent == "wafer_count" and listed.data["count"] == 8
    assert listed.data["wafers"] == [f"{i:02d}" for i in range(1, 9)]
    assert listed.data["sources"]["01"] == ["inspection M1-ETCH", "sort"] and listed.text.startswith("8 wafers")
    # yields per source, each wafer once per source: never one number averaging inspection with sort
    y = ask("What is the yield?", lot)
    inspection = [f for f in a103 if f.source.startswith("inspection")]
    sort = {f.wafer_id: f for f in a103 if f.source == "sort"}  # the G85 copy of 01 replaces the STDF one
    assert y.text.startswith("Inspection M1-ETCH: Lot yield") and " Sort: Lot yield" in y.text
    dies = sum(f.extent.dies for f in inspection)
    good = dies - sum(f.extent.failing for f in inspection)
    assert y.data["by_source"]["inspection M1-ETCH"]["yield"] == pytest.approx(good / dies)
    assert f"over {len(sort)} wafers" in y.text.split("Sort:")[1]
    one = ask("What is the yield of wafer 1?", lot)
    assert one.text.count("Wafer 01: yield") == 2


def test_defect_counts_and_sizes_come_from_the_klarf(shared) -> None:
    from fabsight.io import read_maps

    maps = read_maps(shared / "fixtures" / "klarf" / "QUU_NUU.000")
    lot = Lot([wafer_facts(m) for m in maps], load_kb())
    count = ask("How many defects are on wafer 2?", lot)
    assert count.answered and count.intent == "defect_count"
    assert count.data["defects"] == len(maps[0].defects) == 56 and "56 defects" in count.text
    size = ask("What is the average defect size?", lot)
    sizes = np.concatenate([m.defects.size for m in maps])
    assert size.answered and size.intent == "defect_size"
    assert size.data["mean_size"] == pytest.approx(sizes.mean(), abs=1e-3)
    assert f"largest {sizes.max():.2f} µm" in size.text
    # sort data hold no defect list: refused in one sentence, not answered with the pattern
    sort = Lot([wafer_facts(m) for m in read_maps(shared / "fixtures" / "stdf" / "lot2.stdf")], load_kb())
    for q in ("How many defects are on the wafer?", "What is the average defect size?"):
        a = ask(q, sort)
        assert not a.answered and a.intent != "main_pattern" and "no defect list" in a.text
        assert a.text.count(". ") == 0 and a.text.endswith(").")


def test_trends_over_lots_are_measured_per_lot(demo_facts) -> None:
    klarf = [f for name, fs in demo_facts.items() if name.endswith(".klarf") for f in fs]
    lot = Lot(klarf, load_kb())
    trend = ask("Is the yield getting worse over the lots?", lot)
    assert trend.intent == "lot_trend" and list(trend.data["lots"]) == ["A101", "A102", "A103"]
    for name, value in trend.data["lots"].items():
        assert value == pytest.approx(np.mean([f.yield_.yield_ for f in klarf if f.lot_id == name]))
    defects = ask("How does the number of defects change from lot to lot?", lot)
    assert defects.intent == "lot_trend" and defects.data["measure"] == "mean defects per wafer"
    assert defects.data["lots"]["A103"] == pytest.approx(np.mean([f.defects.count for f in klarf
                                                                  if f.lot_id == "A103"]))
    single = ask("Is the yield getting worse over the lots?", Lot(demo_facts["LOT-A101.klarf"], load_kb()))
    assert not single.answered and "the data holds one lot (A101)" in single.text
