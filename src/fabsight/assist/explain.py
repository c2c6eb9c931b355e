"""Grounded natural-language explanations of wafer maps.

Each sentence is rendered from measured facts (:mod:`fabsight.assist.facts`) and carries the
dotted keys of the facts it states (``"location.zone_share.edge"``), so every claim can be
traced to a number in ``--json`` output and nothing is said that was not measured: a central
blob is never called "edge", and a low-confidence classification is reported as "no dominant
pattern" rather than as the classifier's best guess.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fabsight.assist.facts import WaferFacts, wafer_facts
from fabsight.assist.knowledge import KnowledgeBase, RootCause
from fabsight.types import WaferMap


def pct(x: float) -> str:
    """Percent with one decimal: the one format explanations use for fractions."""
    return f"{100 * x:.1f}%"


@dataclass
class Sentence:
    text: str
    facts: list[str]


@dataclass
class Explanation:
    """One wafer's explanation: sentences, the facts they cite and the knowledge-base causes."""

    facts: WaferFacts
    sentences: list[Sentence]
    root_causes: dict[str, list[RootCause]]
    vlm: dict[str, Any] | None = field(default=None)

    @property
    def text(self) -> str:
        return " ".join(s.text for s in self.sentences)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "wafer_id": self.facts.wafer_id,
            "lot_id": self.facts.lot_id,
            "explanation": self.text,
            "sentences": [{"text": s.text, "facts": s.facts} for s in self.sentences],
            "root_causes": {k: [c.to_dict() for c in v] for k, v in self.root_causes.items()},
            "facts": self.facts.to_dict(),
        }
        if self.vlm is not None:
            d["vlm"] = self.vlm
        return d


def _pattern_sentence(f: WaferFacts) -> Sentence:
    p = f.pattern
    if p.status == "unclassified":
        return Sentence("No classifier was given, so no pattern is named; the facts below are measured from the map.",
                        ["pattern.status"])
    if p.status == "uncertain":
        guess = f" (best guess {p.top3[0][0]} at {pct(p.top3[0][1])})" if p.top3 else ""
        return Sentence(f"No dominant pattern: the classifier is not confident{guess}; reason: {p.review_reason}.",
                        ["pattern.status", "pattern.top3", "pattern.review_reason"])
    if p.status == "none":
        return Sentence(f"No defect pattern: the classifier names none of its patterns (none, "
                        f"{pct(p.probability or 0)}).", ["pattern.status", "pattern.probability"])
    names = " and ".join(p.labels)
    noun = "pattern is" if len(p.labels) == 1 else "patterns are"
    return Sentence(f"The dominant {noun} {names} (classifier confidence {pct(p.probability or 0)}).",
                    ["pattern.labels", "pattern.probability"])


def _direction(f: WaferFacts) -> str:
    loc = f.location
    if loc.sector is None:
        return ", with no preferred direction"
    return f", towards the {loc.sector} sector ({loc.quadrant} quadrant with the notch down)"


def _location_subject(f: WaferFacts) -> str:
    """Who the location sentence is about, worded from the same cluster count the extent sentence states.

    The location is measured on all failing dies when the clusters hold too few of them
    (:data:`fabsight.assist.facts.CLUSTER_BASIS`); that is "mostly scattered", not "no cluster"
    when a few clusters exist, or the two sentences would state both sides of one fact.
    """
    e = f.extent
    if f.location.basis == "clusters":
        return "The clustered failing dies"
    if e.clusters == 0:
        return "The failing dies form no spatial cluster; they"
    return f"The failing dies are mostly scattered (only {e.pattern_dies} of {e.failing} in clusters); they"


def _location_sentence(f: WaferFacts) -> Sentence | None:
    loc = f.location
    keys = ["location.basis", "location.location", "extent.clusters", "extent.pattern_dies", "extent.failing"]
    if loc.location == "none":
        return None
    subject = _location_subject(f)
    if loc.location == "whole wafer":
        return Sentence(f"The failing dies cover the whole wafer ({pct(f.extent.fail_fraction)} of all dies fail).",
                        [*keys, "extent.fail_fraction"])
    if loc.location == "spread":
        shares = ", ".join(f"{z} {pct(s)}" for z, s in loc.zone_share.items())
        return Sentence(f"{subject} are spread over the wafer with no zone clearly enriched ({shares}).",
                        [*keys, "location.zone_share"])
    zone = loc.location
    share = loc.zone_share[zone]
    text = (f"{subject} lie mainly in the {zone} zone ({pct(share)} of them, median radius "
            f"{loc.radius_median:.2f} of the wafer radius){_direction(f)}.")
    return Sentence(text, [*keys, f"location.zone_share.{zone}", "location.radius_median", "location.sector",
                           "location.quadrant"])


def _extent_sentence(f: WaferFacts) -> Sentence:
    e = f.extent
    if e.failing == 0:
        return Sentence(f"None of the {e.dies} dies fails.", ["extent.failing", "extent.dies"])
    head = f"{e.failing} of {e.dies} dies fail ({pct(e.fail_fraction)})"
    keys = ["extent.failing", "extent.dies", "extent.fail_fraction"]
    if e.clusters == 0:
        return Sentence(f"{head}; none of them is in a spatial cluster.", [*keys, "extent.clusters"])
    plural = "cluster" if e.clusters == 1 else "clusters"
    largest = f"largest {e.cluster_sizes[0]} dies, {e.cluster_shapes[0]}-shaped"
    verb = "is a scattered background fail" if e.background_dies == 1 else "are scattered background fails"
    return Sentence(f"{head}; {e.pattern_dies} of them form {e.clusters} spatial {plural} ({largest}) and "
                    f"{e.background_dies} {verb}.",
                    [*keys, "extent.pattern_dies", "extent.clusters", "extent.cluster_sizes",
                     "extent.cluster_shapes", "extent.background_dies"])


def _defect_sentence(f: WaferFacts) -> Sentence | None:
    d = f.defect_clustering
    if d is None:
        return None
    n = len(d.labels)
    keys = ["defect_clustering.points", "defect_clustering.count"]
    if not d.clusters:
        return Sentence(f"The file's {n} defects form no spatial cluster.", keys)
    c = d.clusters[0]
    plural = "cluster" if len(d.clusters) == 1 else "clusters"
    return Sentence(f"The file's {n} defects form {len(d.clusters)} spatial {plural} on the wafer (largest {c.size} "
                    f"defects, {c.shape}-shaped); {n - d.clustered} are isolated.",
                    [*keys, "defect_clustering.clusters", "defect_clustering.isolated"])


def _defect_size_sentence(f: WaferFacts) -> Sentence | None:
    """The KLARF defects' sizes (``DSIZE``), when the file gives them."""
    d = f.defects
    if d is None or not d.sized:
        return None
    return Sentence(f"Defect sizes (DSIZE, {d.sized} defects): mean {d.mean_size:.2f} µm, median "
                    f"{d.median_size:.2f} µm, largest {d.max_size:.2f} µm.",
                    ["defects.sized", "defects.mean_size", "defects.median_size", "defects.max_size"])


def _yield_sentence(f: WaferFacts) -> Sentence:
    y = f.yield_
    return Sentence(f"Yield is {pct(y.yield_)}, with {pct(y.pattern_yield_loss)} lost to clustered fails "
                    f"and {pct(y.background_yield_loss)} to background fails; severity is {y.severity} "
                    f"(total yield loss {pct(y.yield_loss)}).",
                    ["yield.yield", "yield.pattern_yield_loss", "yield.background_yield_loss", "yield.severity",
                     "yield.yield_loss"])


def _notch_sentence(f: WaferFacts) -> Sentence | None:
    n = f.notch
    if n.dies == 0:
        return None
    return Sentence(f"{n.failing} of the {n.dies} dies near the notch fail ({pct(n.fail_fraction)}).",
                    ["near_notch.failing", "near_notch.dies", "near_notch.fail_fraction"])


def _repeater_sentence(f: WaferFacts) -> Sentence | None:
    """This wafer's repeating defects, when the lot it was explained with has any on it."""
    r = f.lot.get("repeaters")
    if not r:
        return None
    sites = "site" if r["sites"] == 1 else "sites"
    return Sentence(f"{r['repeaters']} of its {r['defects']} defects are repeaters: they repeat at the same die "
                    f"position within {r['tolerance_um']:g} µm ({r['sites']} {sites}; {r['in_wafer']} within "
                    f"this wafer, {r['in_lot']} across the lot's wafers).",
                    ["lot.repeaters"])


def _killer_sentence(f: WaferFacts) -> Sentence | None:
    """The lot's deadliest defect class, when its kill ratio is above zero beyond doubt (95 % CI)."""
    k = f.lot.get("killer")
    if not k:
        return None
    return Sentence(f"Over the lot's {k['wafers']} wafers with inspection and sort, defect class {k['name']} "
                    f"kills the most dies: kill ratio {k['kill_ratio']:+.3f} (95 % CI {k['kill_ratio_low']:+.3f} "
                    f"to {k['kill_ratio_high']:+.3f}; clean dies fail {pct(k['clean_fail_rate'])}), yield loss "
                    f"{pct(k['yield_loss'])}.",
                    ["lot.killer"])


def lot_facts(maps: Sequence[WaferMap], facts: Sequence[WaferFacts]) -> None:
    """Add the lot-wide facts to each map's facts: its repeaters
    (:func:`~fabsight.analytics.repeaters.find_repeaters`) and the deadliest defect class of the
    lot's paired inspection and sort wafers (:func:`~fabsight.analytics.killratio.kill_ratios`)."""
    from fabsight.analytics.lot import LotAnalytics
    from fabsight.errors import FabsightError

    if not any(m.defects is not None for m in maps):
        return
    an = LotAnalytics(list(maps))
    try:
        found = an.repeaters
    except FabsightError:
        found = None
    kill = an.kill_ratio
    top = kill.by_class[0] if kill is not None and kill.by_class else None
    killer = None
    if kill is not None and top is not None and top.kill_ratio_low > 0:
        killer = {"name": top.name, "wafers": len(kill.wafers), "kill_ratio": top.kill_ratio,
                  "kill_ratio_low": top.kill_ratio_low, "kill_ratio_high": top.kill_ratio_high,
                  "clean_fail_rate": kill.clean_fail_rate, "yield_loss": top.yield_loss,
                  "alignment": kill.alignment.options()}
    flagged = {} if found is None else {id(m): w for m, w in zip(an.inspection, found.wafers, strict=True)}
    for m, f in zip(maps, facts, strict=True):
        w = flagged.get(id(m))
        if w is not None and w.flags.any():
            f.lot["repeaters"] = {**w.to_json(), "tolerance_um": found.tolerance_um}
        if killer is not None and m.defects is not None:
            f.lot["killer"] = killer


def _mismatch_sentence(f: WaferFacts, kb: KnowledgeBase) -> Sentence | None:
    """Flag a classifier label whose expected location the measurement contradicts."""
    if f.pattern.status != "pattern":
        return None
    for label in f.pattern.labels:
        entry = kb.get(label)
        measured = f.location.location
        if entry is None or entry.expected_location == "any" or measured in ("none", "spread"):
            continue
        if measured != entry.expected_location:
            return Sentence(f"The measured location ({measured}) is not where {label} is expected "
                            f"({entry.expected_location}); review this wafer.",
                            ["location.location", "pattern.labels", "knowledge_base.expected_location"])
    return None


def _root_causes(f: WaferFacts, kb: KnowledgeBase) -> tuple[dict[str, list[RootCause]], Sentence | None]:
    if f.pattern.status != "pattern":
        return {}, None
    causes: dict[str, list[RootCause]] = {}
    parts = []
    for label in f.pattern.labels:
        entry = kb.get(label)
        if entry is None or not entry.causes:
            parts.append(f"the knowledge base lists none for {label}")
            continue
        causes[label] = list(entry.causes)
        top = entry.causes[0]
        parts.append(f"for {label}, {top.cause[0].lower()}{top.cause[1:]} (check {', '.join(top.process_steps)})")
    return causes, Sentence("Most likely root cause from the knowledge base: " + "; ".join(parts) + ".",
                            ["pattern.labels", "knowledge_base"])


def explain_facts(facts: WaferFacts, kb: KnowledgeBase) -> Explanation:
    """Build the explanation of one wafer from its facts alone."""
    causes, cause_sentence = _root_causes(facts, kb)
    candidates = [
        _pattern_sentence(facts),
        _location_sentence(facts),
        _extent_sentence(facts),
        _defect_sentence(facts),
        _defect_size_sentence(facts),
        _yield_sentence(facts),
        _notch_sentence(facts),
        _repeater_sentence(facts),
        _killer_sentence(facts),
        _mismatch_sentence(facts, kb),
        cause_sentence,
    ]
    return Explanation(facts, [s for s in candidates if s is not None], causes)


def explain_maps(
    maps: Sequence[WaferMap],
    kb: KnowledgeBase,
    predictions: Sequence[Mapping[str, Any]] | None = None,
) -> list[Explanation]:
    """Explain each map; ``predictions`` are the classifier's ``predict_details`` records, if any.

    The maps are explained as one lot: repeaters and the deadliest defect class (when inspection
    and sort of the same wafers are among them) are measured over all of them (:func:`lot_facts`)."""
    from fabsight.utils.progress import track

    preds: Sequence[Mapping[str, Any] | None] = predictions if predictions is not None else [None] * len(maps)
    facts = [wafer_facts(m, p) for m, p in track(list(zip(maps, preds, strict=True)), "explaining")]
    lot_facts(maps, facts)
    return [explain_facts(f, kb) for f in facts]
