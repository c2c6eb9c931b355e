"""Automatic defect classification of a KLARF: each defect's review images → a class number.

:func:`classify_klarf` reads a KLARF, finds every defect's review images
(:mod:`fabsight.adc.images`), classifies them with a die model (``fabsight die train``) and
returns an :class:`AdcResult`: one :class:`DefectRow` per defect plus counts per wafer and
class. :func:`write_classified` writes the input KLARF back with the class numbers filled in
(:mod:`fabsight.io.klarf_classes`: only ``CLASSNUMBER`` and the class lookup change).

**Several images per defect** (a review tool often takes a top-down and a tilted view, or
several detector channels): the defect's class probabilities are the **mean of its images'
calibrated probabilities** and its out-of-distribution score the mean of theirs; the
model's own review rule (:func:`fabsight.die.classifier.review_decisions`: calibrated
confidence under the model's ``min_confidence``, or out of distribution) is then applied
to that mean. One image per defect therefore gives exactly what ``fabsight die predict``
gives for that image. Averaging probabilities, not votes, lets a confident view outweigh an
uncertain one and keeps the result calibrated when the views agree.

**Class numbers**: a model class whose name the KLARF's lookup already has (case-insensitive)
takes that number; any other class takes the next number above every number in use. A
defect sent to review gets ``review_code`` (default 0, unclassified) and keeps its image
references; a defect without images keeps its original class and is counted as such.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.adc.images import ImageReader, allowed_roots, resolve_image
from fabsight.die.classifier import review_decisions
from fabsight.errors import FabsightError
from fabsight.io.klarf_classes import UNCLASSIFIED, KlarfClasses, KlarfDefect, locate_classes
from fabsight.utils.atomic import atomic_open
from fabsight.utils.progress import track

#: How several images of one defect become one decision (reported in every result).
COMBINE_RULE = ("mean of the images' calibrated class probabilities and OOD scores; the model's review rule "
                "applied to the mean")
NO_IMAGE = "no_image"


@dataclass
class DefectRow:
    """One defect's outcome. ``class_number`` is what the output KLARF holds for it;
    ``class_name`` the model's label (also for a defect sent to review: the suggestion)."""

    wafer: str
    defect_id: int
    class_name: str | None
    class_number: int | None
    original_class: int | None
    confidence: float | None
    needs_review: bool
    reason: str
    images: list[str]
    pages: list[int]


@dataclass
class AdcResult:
    """Everything one ADC run found; :meth:`to_dict` is the ``--json`` form."""

    klarf: Path
    model: str
    classes: list[str]
    class_numbers: dict[str, int]
    review_code: int
    rows: list[DefectRow]
    source: KlarfClasses = field(repr=False)

    def output_numbers(self) -> list[int | None]:
        """Per defect in file order: the class number to write (None: keep the file's)."""
        return [r.class_number if r.reason != NO_IMAGE else None for r in self.rows]

    def lookup_names(self) -> dict[int, str]:
        """Every class number the output uses, with its name, for the class lookup."""
        names = {n: c for c, n in self.class_numbers.items()}
        names.setdefault(self.review_code, self.source.class_names.get(self.review_code, UNCLASSIFIED))
        return names

    def counts(self) -> dict[str, Any]:
        """Defects per class (confidently classified), sent to review and without images, per wafer and lot."""
        per_wafer: dict[str, dict[str, Any]] = {}
        for r in self.rows:
            w = per_wafer.setdefault(r.wafer, {"defects": 0, "classes": Counter(), "needs_review": 0, NO_IMAGE: 0})
            w["defects"] += 1
            if r.reason == NO_IMAGE:
                w[NO_IMAGE] += 1
            elif r.needs_review:
                w["needs_review"] += 1
            else:
                w["classes"][r.class_name] += 1
        lot: dict[str, Any] = {"defects": 0, "classes": Counter(), "needs_review": 0, NO_IMAGE: 0}
        for w in per_wafer.values():
            for key in ("defects", "needs_review", NO_IMAGE):
                lot[key] += w[key]
            lot["classes"].update(w["classes"])
            w["classes"] = dict(w["classes"].most_common())
        lot["classes"] = dict(lot["classes"].most_common())
        return {"lot": lot, "wafers": per_wafer}

    def to_dict(self) -> dict[str, Any]:
        counts = self.counts()
        lot = counts["lot"]
        return {"klarf": str(self.klarf), "model": self.model, "combine": COMBINE_RULE,
                "class_numbers": self.class_numbers, "review_code": self.review_code,
                "review_rate": lot["needs_review"] / max(1, lot["defects"] - lot[NO_IMAGE]),
                "counts": counts, "defects": [asdict(r) for r in self.rows]}


def assign_numbers(classes: Sequence[str], named: Mapping[int, str], review_code: int) -> dict[str, int]:
    """Class name → number: the lookup's number for a name it has, else the next free number."""
    by_name = {v.strip().lower(): k for k, v in named.items()}
    used = set(named) | {review_code}
    nxt = max([0, *used]) + 1
    out: dict[str, int] = {}
    for c in classes:
        number = by_name.get(c.strip().lower())
        if number is None or number == review_code:
            number, nxt = nxt, nxt + 1
        out[c] = number
    return out


def load_die_model(model: Any, runtime: str = "torch", device: str = "cpu", n_threads: int = 2) -> Any:
    """A :class:`~fabsight.die.model.DieModel` from a directory (a loaded one passes through);
    a model of another task is refused by its card."""
    if not isinstance(model, (str, os.PathLike)):
        return model
    from fabsight.artifacts import load

    if runtime == "torch":
        return load(model, task="die-classifier", device=device)
    return load(model, runtime, task="die-classifier", n_threads=n_threads)


def _defect_error(klarf: Path, d: KlarfDefect, exc: Exception) -> FabsightError:
    return FabsightError(klarf, f"wafer '{d.wafer}' defect {d.defect_id}: {exc}")


def _load_defect(klarf: Path, d: KlarfDefect, roots: Sequence[Path],
                 reader: ImageReader) -> tuple[list[str], list[np.ndarray]]:
    paths, images = [], []
    for ref in d.images:
        try:
            path = resolve_image(ref, roots)
            images.append(reader.read(path, ref.page))
        except (ValueError, FabsightError) as exc:
            raise _defect_error(klarf, d, exc) from None
        paths.append(str(path))
    return paths, images


def _chunks(doc: KlarfClasses, roots: Sequence[Path], batch: int) -> Iterator[list[tuple[int, list[str], list[Any]]]]:
    """Defects with images, loaded ``batch`` images at a time (memory stays bounded on big lots)."""
    reader = ImageReader()
    pending: list[tuple[int, list[str], list[Any]]] = []
    n_images = 0
    for i, d in enumerate(doc.defects):
        if not d.images:
            continue
        paths, images = _load_defect(doc.path, d, roots, reader)
        pending.append((i, paths, images))
        n_images += len(images)
        if n_images >= batch:
            yield pending
            pending, n_images = [], 0
    if pending:
        yield pending


def _combine(decisions: Sequence[dict[str, Any]], classes: Sequence[str], min_confidence: float) -> dict[str, Any]:
    """One decision from a defect's image decisions (see the module docstring)."""
    col = {c: j for j, c in enumerate(classes)}
    proba = np.zeros((len(decisions), len(classes)))
    for row, d in zip(proba, decisions, strict=True):
        for t in d["top"]:
            row[col[t["label"]]] = t["p"]
    mean = proba.mean(axis=0, keepdims=True)
    ood = np.array([np.mean([d["ood_score"] for d in decisions])])
    label = [classes[int(mean.argmax())]]
    return review_decisions(mean, label, ood, classes, min_confidence=min_confidence, top_k=1)[0]


def classify_klarf(
    klarf: str | os.PathLike[str],
    model: Any,
    *,
    images: Sequence[str | os.PathLike[str]] = (),
    review_code: int = 0,
    runtime: str = "torch",
    device: str = "cpu",
    n_threads: int = 2,
    batch_size: int = 64,
    tta: bool = False,
    progress: bool = True,
) -> AdcResult:
    """Classify every defect of ``klarf`` from its review images with a die ``model``
    (a model directory, or a loaded :class:`~fabsight.die.model.DieModel`).

    ``images``: folders besides the KLARF's own where image references are looked up (and
    the only places they may lead). The first missing, unreadable or out-of-bounds image
    raises :class:`FabsightError` naming the KLARF, wafer and defect; nothing is written here.
    ``progress``: a bar on stderr (off where a caller shows its own, as batch jobs do).
    """
    path = Path(klarf)
    doc = locate_classes(path)
    die = load_die_model(model, runtime, device, n_threads)
    classes = [str(c) for c in die.classes]
    roots = allowed_roots(path, images)
    min_conf = float(die.classifier.min_confidence)
    numbers = assign_numbers(classes, doc.class_names, review_code)
    decided: dict[int, tuple[dict[str, Any], list[str]]] = {}
    n_batches = math.ceil(sum(len(d.images) for d in doc.defects) / batch_size)
    chunks = _chunks(doc, roots, batch_size)
    for chunk in track(chunks, f"classifying {path.name}", total=n_batches) if progress else chunks:
        flat = [im for _, _, ims in chunk for im in ims]
        out = die.predict(flat, top_k=len(classes), tta=tta)
        at = 0
        for i, paths, ims in chunk:
            decided[i] = (_combine(out[at : at + len(ims)], classes, min_conf), paths)
            at += len(ims)
    rows = [_row(d, decided.get(i), numbers, review_code) for i, d in enumerate(doc.defects)]
    return AdcResult(path, str(getattr(die, "dir", model)), classes, numbers, review_code, rows, doc)


def _row(d: KlarfDefect, decided: tuple[dict[str, Any], list[str]] | None, numbers: Mapping[str, int],
         review_code: int) -> DefectRow:
    if decided is None:
        return DefectRow(d.wafer, d.defect_id, None, d.class_number, d.class_number, None, False, NO_IMAGE, [], [])
    dec, paths = decided
    review = bool(dec["needs_review"])
    return DefectRow(d.wafer, d.defect_id, dec["label"], review_code if review else numbers[dec["label"]],
                     d.class_number, float(dec["confidence"]), review, "+".join(dec["review_reasons"]), paths,
                     [ref.page for ref in d.images])


def write_classified(result: AdcResult, out: str | os.PathLike[str]) -> Path:
    """Write the input KLARF with ``result``'s class numbers and a lookup naming every class,
    atomically (whole or not at all); every other byte is the input's."""
    data = result.source.patched(result.output_numbers(), result.lookup_names())
    with atomic_open(out, "wb") as fh:
        fh.write(data)
    return Path(out)
