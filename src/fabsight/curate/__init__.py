"""Dataset curation and health checks before training: ``fabsight curate``.

The NVIDIA VLM/VFM ADC write-up stresses that domain adaptation depends on the quality of
the unlabeled set: redundant, blurry and irrelevant images must go before training. This
package finds them (and unreadable files, label conflicts, train/test leakage, class
imbalance, and the wafer-map equivalents) and writes a manifest; it never deletes.

    from fabsight.curate import curate
    manifest = curate(["data/train", "data/test"])          # kind detected from the files
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fabsight.curate.images import CurateOptions, curate_images
from fabsight.curate.maps import curate_maps
from fabsight.curate.output import write_clean_tree, write_contact_sheet, write_manifest
from fabsight.errors import FabsightError

__all__ = ["CurateOptions", "curate", "curate_images", "curate_maps", "detect_kind", "write_clean_tree",
           "write_contact_sheet", "write_manifest"]


def detect_kind(data: Sequence[str | os.PathLike[str]]) -> str:
    """``"maps"`` or ``"images"``: wafer-data files, ``.npy`` grids or PNGs with ≤ 3 grey levels are maps."""
    import numpy as np
    from PIL import Image

    from fabsight.curate.scan import scan
    from fabsight.die.data import IMAGE_SUFFIXES

    for d in data:
        p = Path(d)
        if not p.exists():
            raise FabsightError(p, "no such file or folder")
        if p.is_file():
            return "maps"
    entries = scan(data, (*IMAGE_SUFFIXES, ".npy"))
    if any(e.path.suffix.lower() == ".npy" for e in entries):
        return "maps"
    pngs = [e.path for e in entries if e.path.suffix.lower() == ".png"][:5]
    if len(pngs) < len(entries[:5]) or not pngs:
        return "images"
    for p in pngs:
        try:
            with Image.open(p) as im:
                if im.mode not in ("L", "P", "I;16", "I") or len(np.unique(np.asarray(im))) > 3:
                    return "images"
        except OSError:
            continue
    return "maps"


def curate(data: Sequence[str | os.PathLike[str]], *, kind: str = "auto", options: CurateOptions | None = None,
           backbone: str | None = None, device: str = "cpu", input_size: int | None = None) -> dict[str, Any]:
    """Check DATA (image folders or wafer-map sources) → manifest dict; ``kind`` is auto, images or maps."""
    if kind not in ("auto", "images", "maps"):
        raise FabsightError("--kind", f"{kind!r} is not auto, images or maps")
    if kind == "auto":
        kind = detect_kind(data)
    if kind == "maps":
        if backbone is not None:
            raise FabsightError("--backbone", "embedding checks are for images; wafer maps are compared die by die")
        return curate_maps(data)
    return curate_images(data, options=options, backbone=backbone, device=device, input_size=input_size)
