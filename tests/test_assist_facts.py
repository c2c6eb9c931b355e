"""Facts, clustering, knowledge base and grounded explanations on maps with known geometry."""

from __future__ import annotations

import re

import numpy as np
import pytest

from assist_maps import disc_map
from fabsight.assist.clustering import binomial_min_samples, cluster_defects, cluster_dies
from fabsight.assist.explain import explain_facts, pct
from fabsight.assist.facts import die_geometry, wafer_facts
from fabsight.assist.knowledge import load_kb
from fabsight.errors import FabsightError
from fabsight.types import WM811K_CLASSES, DefectList


@pytest.fixture(scope="module")
def kb():
    return load_kb()


def _pred(label: str, p: float, review: bool = False) -> dict:
    return {"label": label, "probability": p, "top3": [[label, p]], "needs_review": review,
            "review_reason": "low confidence" if review else ""}


@pytest.mark.parametrize(
    ("kind", "location", "sector", "shape"),
    [
        ("center", "centre", None, "blob"),
        ("edge-ring", "edge", None, "ring"),
        ("donut", "middle", None, "ring"),
        ("edge-ne", "edge", "NE", "arc"),
        ("loc-sw", "middle", "SW", "blob"),
        ("notch", "edge", "S", None),
        ("scratch", None, "NW", "line"),
        ("near-full", "whole wafer", None, None),
    ],
)
def test_location_and_shape_match_the_drawn_pattern(kind, location, sector, shape) -> None:
    f = wafer_facts(disc_map(kind))
    if location is not None:
        assert f.location.location == location
    assert f.location.sector == sector
    assert f.location.basis == "clusters"
    if shape is not None:
        assert f.extent.cluster_shapes[0] == shape


def test_pattern_dies_match_the_drawn_area() -> None:
    wmap = disc_map("center", noise=0.02)
    rows, cols = np.indices(wmap.shape)
    drawn = int((np.hypot(rows - 19.5, cols - 19.5) / 20 < 0.3).sum())
    f = wafer_facts(wmap)
    assert f.extent.clusters == 1
    assert abs(f.extent.pattern_dies - drawn) <= 0.1 * drawn
    assert f.extent.pattern_dies + f.extent.background_dies == wmap.n_fail
    assert f.clustering.background_rate == pytest.approx(0.02, abs=0.01)
    assert f.yield_.yield_ == pytest.approx(wmap.yield_, abs=1e-4)
    assert f.yield_.pattern_yield_loss == pytest.approx(f.extent.pattern_dies / wmap.n_dies, abs=1e-4)


def test_random_fails_form_no_cluster_and_clean_has_no_location() -> None:
    f = wafer_facts(disc_map("random"))
    assert f.extent.clusters == 0 and f.location.location == "spread"
    assert f.location.basis == "all failing dies"
    clean = wafer_facts(disc_map("clean", noise=0.0))
    assert clean.extent.failing == 0 and clean.location.location == "none"
    assert clean.yield_.severity == "low"


def test_sectors_follow_the_notch() -> None:
    assert wafer_facts(disc_map("edge-ne", notch="up")).location.sector == "SW"
    # notch drawn on the right: turning it down (90° clockwise) moves the upper-right blob to SE
    assert wafer_facts(disc_map("edge-ne", notch="right")).location.sector == "SE"
    geo = die_geometry(disc_map("clean"))
    assert np.nanmax(geo.radius) < 1.0 and np.nanmin(geo.radius) >= 0.0


def test_near_notch_counts_the_notch_blob() -> None:
    notch = wafer_facts(disc_map("notch", noise=0.0))
    far = wafer_facts(disc_map("edge-ne", noise=0.0))
    assert notch.notch.failing >= 0.6 * notch.notch.dies > 0
    assert far.notch.failing == 0


def test_binomial_min_samples_known_values() -> None:
    # alpha 1 %: P(X >= 2 | 9, 0.02) = 0.013, P(X >= 3) = 0.00076
    assert binomial_min_samples(0.02) == 3
    # P(X >= 6 | 9, 0.3) = 0.025, P(X >= 7) = 0.0043; at alpha 0.1 %: P(X >= 8) = 0.00043
    assert binomial_min_samples(0.3) == 7
    assert binomial_min_samples(0.3, alpha=0.001) == 8
    assert binomial_min_samples(0.9) == 9


def test_defect_clustering_finds_a_scratch_among_random_defects() -> None:
    rng = np.random.default_rng(1)
    n_rand = 300
    ang = rng.uniform(0, 2 * np.pi, n_rand)
    rad = 100_000 * np.sqrt(rng.uniform(0, 1, n_rand))
    t = np.linspace(0, 30_000, 80)
    x = np.concatenate([rad * np.cos(ang), 20_000 + t])
    y = np.concatenate([rad * np.sin(ang), -10_000 + 0.5 * t + rng.normal(0, 50, 80)])
    n = len(x)
    nan = np.full(n, np.nan)
    defects = DefectList(np.arange(n), x, y, nan, nan, np.full(n, -1), np.full(n, -1), nan, np.full(n, -1))
    res = cluster_defects(defects, die_pitch=(10_000.0, 10_000.0))
    assert res.clusters and res.clusters[0].shape == "line"
    assert set(res.clusters[0].members.tolist()) >= set(range(n_rand + 5, n - 5))
    assert res.eps <= 10_000.0
    assert sum(c.size for c in res.clusters[1:]) < 0.1 * n_rand


def test_kb_covers_every_class_and_validates(kb, tmp_path) -> None:
    assert set(kb.patterns) == set(WM811K_CLASSES)
    assert "edge-bead" in kb.get("edge-ring").causes[0].cause.lower()
    assert any("CMP" in c.cause for c in kb.get("Scratch").causes)
    assert all(kb.get(c).causes for c in WM811K_CLASSES if c != "none")
    bad = tmp_path / "kb.yaml"
    bad.write_text("patterns:\n  Center:\n    description: x\n    causes:\n      - cause: y\n"
                   "        process_steps: []\n        reasoning: z\n")
    with pytest.raises(FabsightError, match=r"causes\[0\]\.process_steps must be a non-empty list"):
        load_kb(bad)
    bad.write_text("patterns:\n  Centre-Blob:\n    description: x\n")
    with pytest.raises(FabsightError, match="unknown pattern 'Centre-Blob'"):
        load_kb(bad)
    bad.write_text("patterns: [")
    with pytest.raises(FabsightError, match="not valid YAML"):
        load_kb(bad)
    good = tmp_path / "mine.yaml"
    good.write_text("patterns:\n  Scratch:\n    description: a line\n    causes:\n      - cause: Our robot R2\n"
                    "        process_steps: [R2 blade]\n        reasoning: it happened before\n")
    mine = load_kb(good)
    assert mine.get("Scratch").causes[0].cause == "Our robot R2" and mine.get("Center") is None


def _lookup(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _renderings(value) -> set[str]:
    """Every way an explanation may print a fact value."""
    if isinstance(value, (list, tuple)):
        return set().union(*(_renderings(v) for v in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(_renderings(v) for v in value.values())) if value else set()
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return set()
    out = {str(value), pct(value), f"{value:.2f}"}
    return out


@pytest.mark.parametrize("kind", ["center", "edge-ring", "donut", "edge-ne", "random", "near-full", "scratch"])
@pytest.mark.parametrize("confident", [True, False])
def test_every_number_in_an_explanation_is_a_cited_fact(kb, kind, confident) -> None:
    label = {"center": "Center", "edge-ring": "Edge-Ring", "donut": "Donut", "edge-ne": "Edge-Loc",
             "random": "Random", "near-full": "Near-full", "scratch": "Scratch"}[kind]
    e = explain_facts(wafer_facts(disc_map(kind), _pred(label, 0.9 if confident else 0.35, not confident)), kb)
    facts = e.facts.to_dict()
    for s in e.sentences:
        allowed = set().union(*(_renderings(_lookup(facts, k)) for k in s.facts))
        for number in re.findall(r"\d+(?:\.\d+)?%?", s.text):
            assert number in allowed, f"{number!r} in {s.text!r} is not one of its facts {s.facts}"


def test_klarf_explanation_numbers_are_facts(kb, shared) -> None:
    from fabsight.io import read_maps

    for wmap in read_maps(shared / "fixtures" / "klarf" / "QUU_NUU.000"):
        e = explain_facts(wafer_facts(wmap), kb)
        facts = e.facts.to_dict()
        assert any("defects form" in s.text for s in e.sentences)
        sizes = wmap.defects.size
        assert f"mean {sizes.mean():.2f} µm" in e.text and f"largest {sizes.max():.2f} µm" in e.text
        for s in e.sentences:
            allowed = set().union(*(_renderings(_lookup(facts, k)) for k in s.facts))
            assert set(re.findall(r"\d+(?:\.\d+)?%?", s.text)) <= allowed, s.text


def test_explanation_never_contradicts_the_measured_location(kb) -> None:
    central = explain_facts(wafer_facts(disc_map("center"), _pred("Center", 0.95)), kb)
    assert not re.search(r"\bedge\b", central.text.lower())
    assert "centre zone" in central.text and "The dominant pattern is Center" in central.text
    ring = explain_facts(wafer_facts(disc_map("edge-ring"), _pred("Edge-Ring", 0.95)), kb)
    assert "edge zone" in ring.text and "centre" not in ring.text.lower()
    assert "Edge-Ring" in ring.root_causes and "edge-bead" in ring.text.lower()
    # a classifier that says Center on an edge ring: the facts win and the mismatch is flagged
    wrong = explain_facts(wafer_facts(disc_map("edge-ring"), _pred("Center", 0.9)), kb)
    assert "measured location (edge) is not where Center is expected (centre)" in wrong.text


def test_low_confidence_says_no_dominant_pattern(kb) -> None:
    e = explain_facts(wafer_facts(disc_map("edge-ne"), _pred("Edge-Loc", 0.35, review=True)), kb)
    assert e.text.startswith("No dominant pattern")
    assert "dominant pattern is" not in e.text and not e.root_causes
    clean = explain_facts(wafer_facts(disc_map("clean"), _pred("none", 0.97)), kb)
    assert clean.text.startswith("No defect pattern") and not clean.root_causes
    unclassified = explain_facts(wafer_facts(disc_map("donut")), kb)
    assert "no pattern is named" in unclassified.text and "middle zone" in unclassified.text


def test_cluster_dies_labels_align_with_failing_dies() -> None:
    wmap = disc_map("edge-ring")
    res = cluster_dies(wmap)
    assert len(res.labels) == wmap.n_fail
    assert res.clustered == int((res.labels >= 0).sum())
    assert res.to_dict()["clusters"][0]["shape"] == "ring"
