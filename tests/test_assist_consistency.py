"""Generated explanations never state both sides of a fact.

Each explanation is read back into claims (are there failing dies, do they form spatial
clusters and how many, is there a dominant pattern) and every claim must agree with every
other sentence and with the measured facts. Maps: every WM-811K class from the generator at
several noise levels and seeds, hand-drawn maps with and without predictions, and the real
KLARF, STDF and G85 fixtures.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from assist_maps import disc_map
from fabsight.assist.explain import Explanation, explain_facts
from fabsight.assist.facts import wafer_facts
from fabsight.assist.knowledge import load_kb
from fabsight.synth import generate_map
from fabsight.types import WM811K_CLASSES, WaferMap

_NO_CLUSTER = re.compile(r"failing dies form no spatial cluster|none of them is in a spatial cluster")
_CLUSTERS = re.compile(r"(\d+) of them form (\d+) spatial clusters?|only (\d+) of \d+ in clusters|"
                       r"The clustered failing dies")
_NO_FAILS = re.compile(r"None of the \d+ dies fails|no die fails")
_FAILS = re.compile(r"(\d+) of (\d+) dies fail \(")
_NO_PATTERN = re.compile(r"No (?:defect|dominant) pattern|no pattern is named")
_PATTERN = re.compile(r"The dominant patterns? (?:is|are) ")


def claims(e: Explanation) -> dict[str, set]:
    """What the text says about each fact: a set holding every value some sentence states."""
    said: dict[str, set] = {"clustered": set(), "failing": set(), "pattern": set(), "clusters": set()}
    text = e.text
    if _NO_CLUSTER.search(text):
        said["clustered"].add(False)
        said["clusters"].add(0)
    for m in _CLUSTERS.finditer(text):
        said["clustered"].add(True)
        if m.group(2):
            said["clusters"].add(int(m.group(2)))
    if _NO_FAILS.search(text) or re.search(r"\b(?:wafer|map) (?:is )?clean\b", text):  # "clean" + fails
        said["failing"].add(0)
    said["failing"] |= {int(m.group(1)) for m in _FAILS.finditer(text)}
    if _NO_PATTERN.search(text):
        said["pattern"].add(False)
    if _PATTERN.search(text):
        said["pattern"].add(True)
    return said


def check(e: Explanation) -> None:
    """One value per fact, and that value the measured one."""
    said = claims(e)
    for fact, values in said.items():
        assert len(values) <= 1, f"both sides of {fact} ({sorted(values, key=str)}): {e.text}"
    x = e.facts.extent
    assert said["failing"] <= {x.failing}, e.text
    assert said["clusters"] <= {x.clusters}, e.text
    assert said["clustered"] <= {x.clusters > 0}, e.text
    if x.clusters == 0:
        assert "lost to clustered fails" not in e.text or "0.0% lost to clustered fails" in e.text, e.text
    assert said["pattern"] <= {e.facts.pattern.status == "pattern"}, e.text


def prediction(label: str, p: float) -> dict:
    """A classifier record: confident (routed to nobody) at p >= 0.5, else sent to review."""
    return {"label": label, "probability": p, "top3": [[label, p]], "needs_review": p < 0.5,
            "review_reason": "low confidence" if p < 0.5 else ""}


DRAWN = ("center", "edge-ring", "donut", "edge-ne", "loc-sw", "scratch", "notch", "random", "near-full", "clean")


def generated_cases(pattern: str) -> Iterator[tuple[WaferMap, dict | None]]:
    """A generated class at 4 noise levels x 3 draws, each without a model and with 3 predictions."""
    rng = np.random.default_rng(25)
    for noise in (0.0, 0.02, 0.08, 0.2):
        for seed in range(3):
            wmap = WaferMap(generate_map(pattern, (40, 40), rng, noise=noise), wafer_id=f"{seed}")
            for pred in (None, prediction(pattern, 0.9), prediction("none", 0.95), prediction(pattern, 0.3)):
                yield wmap, pred


def drawn_cases(kind: str) -> Iterator[tuple[WaferMap, dict | None]]:
    for seed in range(4):
        for noise in (0.0, 0.01, 0.05):
            wmap = disc_map(kind, noise=noise, seed=seed)
            for pred in (None, prediction("none", 0.97), prediction("Center", 0.9)):
                yield wmap, pred


def real_cases(shared: Path) -> Iterator[tuple[WaferMap, dict | None]]:
    """Every map of the real KLARF (.000), STDF and G85 fixtures, without a model and called clean."""
    from fabsight.io import read_maps

    fx = shared / "fixtures"
    for path in [*sorted((fx / "klarf").glob("*.000")), fx / "stdf" / "lot2.stdf", *sorted((fx / "g85").glob("*.xml"))]:
        for wmap in read_maps(path):
            for pred in (None, prediction("none", 0.97)):
                yield wmap, pred


@pytest.fixture(scope="module")
def kb():
    return load_kb()


def test_the_reader_sees_both_sides_when_they_are_written(kb) -> None:
    """The check itself: the old wording ("no spatial cluster" beside "5 of them form 1 cluster") fails it."""
    e = explain_facts(wafer_facts(disc_map("random", seed=1)), kb)
    assert e.facts.extent.clusters > 0 and e.facts.location.basis == "all failing dies"
    check(e)
    e.sentences[1].text = "The failing dies form no spatial cluster; they are spread over the wafer."
    with pytest.raises(AssertionError, match="both sides of clustered"):
        check(e)


@pytest.mark.parametrize("pattern", WM811K_CLASSES)
def test_generated_maps_never_contradict_themselves(kb, pattern) -> None:
    for wmap, pred in generated_cases(pattern):
        check(explain_facts(wafer_facts(wmap, pred), kb))


@pytest.mark.parametrize("kind", DRAWN)
def test_drawn_maps_never_contradict_themselves(kb, kind) -> None:
    for wmap, pred in drawn_cases(kind):
        check(explain_facts(wafer_facts(wmap, pred), kb))


def test_real_files_never_contradict_themselves(kb, shared) -> None:
    n = 0
    for wmap, pred in real_cases(shared):
        check(explain_facts(wafer_facts(wmap, pred), kb))
        n += 1
    assert n == 2 * 9
