"""Learn from a fab's review history: KLARF defects that already carry manual class numbers.

A KLARF that went through manual review holds, for each reviewed defect, a class number
(``CLASSNUMBER``), a lookup naming the numbers and the review images. That is a labelled
image set: :func:`klarf_image_folder` lays it out as the ``ROOT/CLASS/*`` folder
``fabsight die train`` reads (every image of a defect carries the defect's class), and
:func:`evaluate_klarfs` scores a die model defect by defect the way ``fabsight adc``
classifies them.

Which defects count as labelled: with ``classes`` (``--classes 1=particle,2=scratch``) only
those numbers, named so; without, every number the file's lookup names, except 0 (the
KLARF convention for "unclassified") and names that say unclassified. Defects without
images or with another number are left out and counted.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fabsight.adc.classify import classify_klarf, load_die_model
from fabsight.adc.images import ImageReader, allowed_roots, resolve_image
from fabsight.errors import FabsightError
from fabsight.io.klarf_classes import KlarfClasses, locate_classes

_UNCLASSIFIED = re.compile(r"^\s*(un|not\s*|non\s*)classified\s*$|^\s*unknown\s*$", re.IGNORECASE)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def parse_classes(text: str) -> dict[int, str]:
    """``1=particle,2=scratch`` → ``{1: "particle", 2: "scratch"}``."""
    out: dict[int, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        number, sep, name = part.partition("=")
        try:
            key = int(number)
        except ValueError:
            key = None
        if not sep or key is None or not name.strip():
            raise FabsightError(None, f"--classes: {part!r} is not NUMBER=NAME (e.g. 1=particle,2=scratch)")
        out[key] = name.strip()
    if not out:
        raise FabsightError(None, "--classes names no class (e.g. 1=particle,2=scratch)")
    return out


def labelled_names(doc: KlarfClasses, classes: Mapping[int, str] | None) -> dict[int, str]:
    """Class number → name for the numbers that count as manual labels (module docstring)."""
    if classes is not None:
        return dict(classes)
    return {k: v for k, v in doc.class_names.items() if k != 0 and not _UNCLASSIFIED.match(v)}


def _link(src: Path, dst: Path) -> None:
    try:
        os.symlink(os.path.abspath(src), dst)
    except OSError:  # no symbolic links here (some file systems): copy
        import shutil

        shutil.copyfile(src, dst)


def klarf_image_folder(klarfs: Sequence[str | os.PathLike[str]], out_root: str | os.PathLike[str], *,
                       classes: Mapping[int, str] | None = None,
                       images: Sequence[str | os.PathLike[str]] = ()) -> dict[str, Any]:
    """Write ``out_root/CLASS/*`` from the labelled defects of ``klarfs`` (links to the image
    files; TIFF pages written as PNG) and return what was used and what was left out."""
    import cv2

    root = Path(out_root)
    used: Counter[str] = Counter()
    skipped = {"no_image": 0, "unlabelled": 0}
    for k, klarf in enumerate(klarfs):
        doc = locate_classes(klarf)
        names = labelled_names(doc, classes)
        roots = allowed_roots(klarf, images)
        reader = ImageReader()
        for d in doc.defects:
            if d.class_number not in names:
                skipped["unlabelled"] += 1
                continue
            if not d.images:
                skipped["no_image"] += 1
                continue
            folder = root / _SAFE.sub("_", names[d.class_number])
            folder.mkdir(parents=True, exist_ok=True)
            for j, ref in enumerate(d.images):
                try:
                    path = resolve_image(ref, roots)
                    stem = _SAFE.sub("_", f"{k}_{d.wafer}_{d.defect_id}_{j}")
                    if path.suffix.lower() in (".tif", ".tiff"):
                        page = reader.read(path, ref.page)
                        cv2.imwrite(str(folder / f"{stem}.png"),
                                    cv2.cvtColor(page, cv2.COLOR_RGB2BGR) if page.ndim == 3 else page)
                    else:
                        _link(path, folder / f"{stem}{path.suffix.lower()}")
                except (ValueError, FabsightError) as exc:
                    raise FabsightError(klarf, f"wafer '{d.wafer}' defect {d.defect_id}: {exc}") from None
            used[names[d.class_number]] += 1
    if len(used) < 2:
        raise FabsightError(klarfs[0] if klarfs else None,
                            f"needs defects of at least two named classes with images, found {dict(used)} "
                            "(name the class numbers with --classes 1=particle,2=scratch)")
    return {"klarfs": [str(Path(p).resolve()) for p in klarfs], "defects_per_class": dict(used),
            "left_out": skipped}


def evaluate_klarfs(model: Any, klarfs: Sequence[str | os.PathLike[str]], *,
                    classes: Mapping[int, str] | None = None, images: Sequence[str | os.PathLike[str]] = (),
                    runtime: str = "torch", device: str = "cpu", tta: bool = False) -> dict[str, Any]:
    """Per-defect metrics of a die model on KLARFs with manual classes (defects whose class the
    model does not know are left out and counted)."""
    from fabsight.die.metrics import classification_metrics

    die = load_die_model(model, runtime, device)
    known = {c.lower(): c for c in die.classes}
    truth: list[str] = []
    pred: list[str] = []
    review: list[bool] = []
    left_out: Counter[str] = Counter()
    for klarf in klarfs:
        result = classify_klarf(klarf, die, images=images, tta=tta)  # one bar per KLARF, one after another
        names = labelled_names(result.source, classes)
        for r in result.rows:
            name = names.get(r.original_class) if r.original_class is not None else None
            if name is None or r.class_name is None or name.lower() not in known:
                left_out["no_image" if r.class_name is None else "unlabelled" if name is None else name] += 1
                continue
            truth.append(known[name.lower()])
            pred.append(r.class_name)
            review.append(r.needs_review)
    if not truth:
        raise FabsightError(klarfs[0] if klarfs else None, "no defect has both images and a class the model knows")
    metrics = classification_metrics(truth, pred, die.classes)
    metrics["needs_review_rate"] = sum(review) / len(review)
    metrics["data"] = [str(Path(p).resolve()) for p in klarfs]
    metrics["left_out"] = dict(left_out)
    return metrics
