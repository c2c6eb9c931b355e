"""Input defaults chosen from the training images, with the reason written down.

Fixed defaults (a 256-pixel square input, every image squashed to it) were tuned on one
dataset and fail quietly on others: a 500×1250 strip squashed to 256×256 shrinks its
long axis 5×, and a 20-pixel defect in a 640-pixel scan ends up smaller than one
stride-8 feature cell. So ``anomaly fit`` looks first:

* **Scale.** A defect is only seen when it covers about two stride-8 cells of the finest
  feature layer, i.e. :data:`MIN_DEFECT_PX` pixels at the network input. With defect masks
  (``ground_truth``) the 25th percentile of the defects' equivalent diameters says how far
  an image may be shrunk; without them the image is shrunk at most :data:`BLIND_MAX_SHRINK`
  times. When the short side would have to shrink more, the image is tiled at the largest
  tile that respects the limit (never finer than native resolution).
* **Shape.** Images up to :data:`MAX_ASPECT`:1 are resized whole; longer ones keep their
  aspect ratio (short side to the input size, squares along the long side).
* **Channels and sizes** are reported; grey images are repeated to three channels by the
  backbone. Sizes may differ (each image is resized or tiled on its own) unless they differ
  so much that no single scale fits them (:data:`MAX_AREA_RATIO`), which is refused.

Feature layers stay the measured default of each method and backbone
(:data:`fabsight.anomaly.features.DEFAULT_LAYERS`): none of the sets measured here
changed that choice. Every value can still be set by hand; what was set is not touched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from fabsight.anomaly.regions import STRUCTURE
from fabsight.errors import FabsightError

#: Network input side used unless set.
INPUT_SIZE = 256
#: Smallest defect diameter (pixels at the network input) kept visible: two stride-8 cells.
MIN_DEFECT_PX = 16.0
#: Without defect masks, the largest shrink factor from image to network input.
BLIND_MAX_SHRINK = 2.0
#: Longer images (long side / short side) keep their aspect ratio instead of being squashed.
MAX_ASPECT = 1.5
#: Training images whose areas differ by more than this cannot share one scale: refused.
MAX_AREA_RATIO = 64.0
#: Shrinking up to this much beyond the limit is tolerated rather than paying for tiles.
SHRINK_TOLERANCE = 1.1


@dataclass
class InputChoice:
    """The chosen input parameters, the facts they came from and one reason per choice."""

    input_size: int
    tile: int | None
    max_aspect: float | None
    facts: dict[str, Any] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def params(self) -> dict[str, Any]:
        """The model parameters this choice sets."""
        return {"input_size": self.input_size, "tile": self.tile, "max_aspect": self.max_aspect}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def survey_images(images: Sequence[np.ndarray], names: Sequence[str | os.PathLike[str]]) -> dict[str, Any]:
    """Sizes, aspect ratios and channels of the training images; refuses sizes no single scale fits."""
    if not images:
        raise FabsightError(None, "no training images to choose input settings from")
    hw = np.array([img.shape[:2] for img in images], dtype=np.float64)
    short, long_ = hw.min(axis=1), hw.max(axis=1)
    area = hw[:, 0] * hw[:, 1]
    small, big = int(np.argmin(area)), int(np.argmax(area))
    if area[big] > MAX_AREA_RATIO * area[small]:
        raise FabsightError(names[small], f"is {int(hw[small, 1])}×{int(hw[small, 0])} but {Path(names[big]).name} is "
                                          f"{int(hw[big, 1])}×{int(hw[big, 0])}: training images this different in "
                                          "size cannot share one scale; split them into separate models")
    grey = sum(1 for img in images if img.ndim == 2)
    return {"n_images": len(images), "median_height": float(np.median(hw[:, 0])),
            "median_width": float(np.median(hw[:, 1])), "median_short_side": float(np.median(short)),
            "aspect_median": round(float(np.median(long_ / short)), 3),
            "aspect_max": round(float(np.max(long_ / short)), 3),
            "n_sizes": len({tuple(x) for x in hw.astype(int).tolist()}), "n_grey": grey, "n_rgb": len(images) - grey}


def defect_diameters(mask_paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
    """Equivalent diameter (pixels) of every 8-connected defect region in these masks."""
    from fabsight.anomaly.datasets import read_mask

    out = []
    for p in mask_paths:
        labels, n = ndimage.label(read_mask(p, None), structure=STRUCTURE)
        if n:
            areas = np.bincount(labels.ravel())[1:]
            out.append(np.sqrt(4.0 * areas / np.pi))
    return np.concatenate(out) if out else np.zeros(0)


def _max_shrink(diameters: np.ndarray | None, source: str, reasons: list[str]) -> float:
    """How many times an image may be shrunk before small defects fall under :data:`MIN_DEFECT_PX`."""
    if diameters is None or diameters.size == 0:
        reasons.append(f"no defect masks: images are shrunk at most {BLIND_MAX_SHRINK:g}× (defects of "
                       f"{BLIND_MAX_SHRINK * MIN_DEFECT_PX:g} px stay visible)")
        return BLIND_MAX_SHRINK
    d = float(np.percentile(diameters, 25))
    limit = max(1.0, d / MIN_DEFECT_PX)
    reasons.append(f"defect scale from {diameters.size} regions in {source}: a quarter are under {d:.1f} px across; "
                   f"to keep them ≥ {MIN_DEFECT_PX:g} px at the network input images may shrink at most {limit:.2f}×")
    return limit


def choose_input(
    facts: dict[str, Any],
    diameters: np.ndarray | None = None,
    *,
    defect_source: str = "the masks",
    input_size: int | None = None,
    tile: int | None = None,
    max_aspect: float | None = None,
) -> InputChoice:
    """Input size, tiling and aspect handling for images described by ``facts`` (:func:`survey_images`).

    ``input_size``, ``tile`` (0 = never tile) and ``max_aspect`` (0 = always squash) given
    by the user are kept as they are; only the others are chosen.
    """
    reasons: list[str] = []
    warnings: list[str] = []
    s = int(input_size) if input_size is not None else INPUT_SIZE
    reasons.append(f"input size {s} px" + (" (set)" if input_size is not None else " (default)"))
    if facts["n_sizes"] > 1:
        warnings.append(f"training images come in {facts['n_sizes']} sizes: each is resized or tiled on its own")
    if facts["n_grey"] and facts["n_rgb"]:
        warnings.append(f"{facts['n_grey']} grey and {facts['n_rgb']} colour training images: grey ones are "
                        "repeated to three channels")
    if max_aspect is None:
        aspect: float | None = MAX_ASPECT
        reasons.append(f"images longer than {MAX_ASPECT:g}:1 keep their aspect ratio (median {facts['aspect_median']}"
                       f":1, longest {facts['aspect_max']}:1)")
    else:
        aspect = None if max_aspect == 0 else float(max_aspect)
        reasons.append("aspect handling set: " + ("every image squashed to a square" if aspect is None
                                                  else f"images longer than {aspect:g}:1 keep their aspect ratio"))
    if tile is not None:
        reasons.append("tiling set: " + ("off" if tile == 0 else f"{tile}-px tiles"))
        return InputChoice(s, tile or None, aspect, facts, reasons, warnings)
    short = float(facts["median_short_side"])
    limit = _max_shrink(diameters, defect_source, reasons)
    shrink = short / s
    if shrink <= limit * SHRINK_TOLERANCE:
        reasons.append(f"no tiling: the median short side ({short:g} px) is resized to {s} px (shrink factor "
                       f"{shrink:.2f}, within the limit)")
        return InputChoice(s, None, aspect, facts, reasons, warnings)
    t = round(s * limit)
    reasons.append(f"tiles of {t} px (resized to {s}): the median short side ({short:g} px) would shrink "
                   f"{shrink:.2f}× whole, more than the limit")
    return InputChoice(s, t, aspect, facts, reasons, warnings)
