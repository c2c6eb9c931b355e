"""Supervised fine-tuning data for a VLM, in the LLaVA / Cosmos-cookbook conversation format.

The layout is what LLaVA-style trainers (and the Cosmos cookbook wafer-map recipe for Cosmos
Reason) read::

    OUT/images/000000.png …
    OUT/annotations.json   [{"id", "image": "images/000000.png",
                             "conversations": [{"from": "human", "value": "<image>\\n…"},
                                               {"from": "gpt", "value": "…"}]}, …]

Per map, as in the cookbook: a multiple-choice question over the pattern classes, a binary
"is this pattern X?" with the true class (yes) and with a wrong one (no); then, beyond it, a
description built from the measured facts (location, extent, yield, root causes), and, with a
golden reference, a comparison question on a side-by-side picture (map | golden) answered by
:mod:`fabsight.assist.compare`. Answers come only from labels and measurements. The pictures
are :func:`fabsight.assist.vlm.png_bytes`, the same ones ``--vlm`` sends at inference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.assist.compare import Baseline, compare_map
from fabsight.assist.explain import explain_facts
from fabsight.assist.facts import wafer_facts
from fabsight.assist.knowledge import KnowledgeBase
from fabsight.assist.vlm import IMAGE_SIZE, png_bytes
from fabsight.errors import FabsightError
from fabsight.types import WM811K_CLASSES, WaferMap
from fabsight.utils.atomic import atomic_dir

IMAGE_PROMPT = "<image>\nThis is an image of a wafer map: failing dies are red, good dies grey, off-wafer white. "


def _entry(ident: str, image: str, question: str, answer: str) -> dict[str, Any]:
    return {
        "id": ident,
        "image": image,
        "conversations": [{"from": "human", "value": IMAGE_PROMPT + question}, {"from": "gpt", "value": answer}],
    }


def _choices(classes: Sequence[str]) -> str:
    return " ".join(f"({i}) {c}." for i, c in enumerate(classes, 1))


def _pattern_text(labels: Sequence[str]) -> str:
    if list(labels) == ["none"]:
        return "no defect pattern (none)"
    return " and ".join(labels) + " patterns" if len(labels) > 1 else f"a {labels[0]} pattern"


def conversations(
    wmap: WaferMap,
    image: str,
    ident: str,
    classes: Sequence[str],
    kb: KnowledgeBase,
    rng: np.random.Generator,
) -> list[dict[str, Any]]:
    """The labelled questions for one map (multiple choice, binary yes/no, grounded description)."""
    labels = list(wmap.labels)
    out = [_entry(f"{ident}-multi", image,
                  f"There are {len(classes)} possible defect patterns: {_choices(classes)} "
                  "Which does this wafer map present?",
                  " ".join(f"({classes.index(x) + 1}) {x}." for x in labels))]
    truth = labels[0]
    out.append(_entry(f"{ident}-yes", image, f"Does the wafer map have the defect pattern {truth}?",
                      f"Yes, this wafer map presents the {truth} pattern."))
    wrong = str(rng.choice([c for c in classes if c not in labels]))
    out.append(_entry(f"{ident}-no", image, f"Does the wafer map have the defect pattern {wrong}?",
                      f"No, this wafer map presents {_pattern_text(labels)}, not {wrong}."))
    facts = wafer_facts(wmap, {"labels": labels, "probability": 1.0})
    sentences = [s.text for s in explain_facts(facts, kb).sentences[1:]]  # the label replaces the classifier
    out.append(_entry(f"{ident}-describe", image,
                      "Describe the defect pattern: what it is, where it lies, how large it is and its likely "
                      "root cause.", f"The wafer map shows {_pattern_text(labels)}. " + " ".join(sentences)))
    return out


def export_sft(
    maps: Sequence[WaferMap],
    out_dir: str | Path,
    kb: KnowledgeBase,
    *,
    golden: tuple[WaferMap, Baseline] | None = None,
    seed: int = 0,
    size: int = IMAGE_SIZE,
) -> dict[str, Any]:
    """Write images + ``annotations.json`` to ``out_dir`` atomically; returns a summary."""
    from fabsight.utils.progress import track

    unlabelled = [i for i, m in enumerate(maps) if not m.labels]
    if unlabelled:
        raise FabsightError(maps[unlabelled[0]].source or None,
                            f"{len(unlabelled)} maps have no label (first: wafer {maps[unlabelled[0]].wafer_id}); "
                            "give labelled data or --model to label them")
    present = {x for m in maps for x in m.labels}
    unknown = present - set(WM811K_CLASSES)
    if unknown:
        raise FabsightError(None, f"labels {sorted(unknown)} are not WM-811K pattern names")
    classes = [c for c in WM811K_CLASSES if c in present or c != "none"]
    rng = np.random.default_rng(seed)
    entries: list[dict[str, Any]] = []
    with atomic_dir(out_dir) as tmp:
        (tmp / "images").mkdir()
        for i, m in enumerate(track(list(maps), "exporting SFT data")):
            image = f"images/{i:06d}.png"
            (tmp / image).write_bytes(png_bytes(m, size))
            entries += conversations(m, image, f"{i:06d}", classes, kb, rng)
            if golden is not None and golden[1].shape == m.shape:
                pair = f"images/{i:06d}-golden.png"
                (tmp / pair).write_bytes(png_bytes([m, golden[0]], size))
                result = compare_map(m, golden[1])
                entries.append(_entry(f"{i:06d}-golden", pair,
                                      "The left map is the wafer under test, the right one the golden reference. "
                                      "What differs?", result.text))
        (tmp / "annotations.json").write_text(json.dumps(entries, indent=1) + "\n", encoding="utf-8")
    kinds: dict[str, int] = {}
    for e in entries:
        kind = e["id"].rsplit("-", 1)[1]
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"out": str(out_dir), "maps": len(maps), "conversations": len(entries), "by_kind": kinds,
            "classes": classes}
