"""Candidate defects from an aligned test/template pair, and what each one looks like.

Both images are binarised into *copper* (dark in DeepPCB-style scans) and substrate.
A defect is copper the template does not have (``added``: short, spur, spurious copper)
or copper the template has and the test lacks (``removed``: open, mousebite, pin-hole).
Registration is never perfect to the pixel, so the comparison is made against a
*dilated* template for added copper and an *eroded* template for removed copper: a pixel
only counts when it is wrong by more than ``tolerance`` pixels from any template edge.
This kills the one-pixel rim that misregistration draws along every line, at the cost of
shaving ``tolerance`` pixels off defects that touch an edge; the full extent of each
defect is recovered afterwards from the plain (untolerant) difference around it.

Fragments of one defect (a spur broken by the tolerance band, a ragged open) are merged
when they lie within ``merge_distance`` pixels of each other and have the same polarity.

For every candidate the module measures what separates the six DeepPCB defect types:
polarity, size and shape, and *topology* — how many copper regions and how many holes
the neighbourhood has in the template versus the test (an open splits a line: one more
copper region; a short joins two; a pin-hole adds a hole; spurious copper adds an
isolated region without touching any template copper; spurs and mousebites change the
outline but not the topology).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

#: Names of the per-candidate features, in the column order of :func:`candidate_features`.
FEATURE_NAMES: tuple[str, ...] = (
    "added",
    "core_area",
    "full_area",
    "width",
    "height",
    "aspect",
    "extent",
    "fragments",
    "mean_diff",
    "touch_template_copper",
    "touch_template_substrate",
    "template_copper_regions_touched",
    "template_substrate_regions_touched",
    "d_copper_regions",
    "d_holes",
    "d_copper_regions_wide",
    "d_holes_wide",
    "template_copper_fraction",
    "min_thickness",
)


@dataclass
class DetectionParams:
    """Knobs of the candidate detector (stored in the model card; tuned by training).

    ``threshold`` binarises grey levels (copper is darker); ``tolerance`` is the
    misregistration band in pixels; ``min_area`` the smallest difference area (pixels,
    after the tolerance band) kept as a candidate; ``merge_distance`` joins fragments;
    ``context`` is the margin of the neighbourhood the features look at.
    ``shift_tolerance`` is the largest *local* misregistration (pixels) a candidate is
    re-checked for within ``shift_window`` pixels around it (see :func:`find_candidates`).
    """

    threshold: int = 128
    tolerance: int = 2
    min_area: int = 6
    merge_distance: int = 6
    context: int = 8
    shift_tolerance: int = 3
    shift_window: int = 16

    def to_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in self.__dict__.items()}


@dataclass
class Candidate:
    """One difference region: the box of its full extent (test-image pixels, x2/y2 exclusive),
    its polarity, its area inside the tolerance band, a difference strength in [0, 1] and
    its feature vector (:data:`FEATURE_NAMES`)."""

    box: tuple[int, int, int, int]
    added: bool
    core_area: int
    strength: float
    features: np.ndarray = field(repr=False)


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def copper_mask(gray: np.ndarray, threshold: int) -> np.ndarray:
    """Copper (dark) pixels as a uint8 0/1 mask."""
    return (gray < threshold).astype(np.uint8)


#: Regions smaller than this (pixels) are ragged-edge specks of the binarisation and do
#: not count as a change of topology.
_MIN_REGION = 5


def _n_regions(mask: np.ndarray) -> int:
    """Copper regions of at least ``_MIN_REGION`` pixels."""
    if not mask.any():
        return 0
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    return int(np.count_nonzero(stats[1:, cv2.CC_STAT_AREA] >= _MIN_REGION))


def _n_holes(copper: np.ndarray) -> int:
    """Substrate regions (≥ ``_MIN_REGION`` px) fully enclosed by copper inside the window."""
    sub = (1 - copper).astype(np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(sub, connectivity=4)
    if n <= 1:
        return 0
    inner = np.ones(n, bool)
    inner[0] = False
    inner[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = False
    return int(np.count_nonzero(inner & (stats[:, cv2.CC_STAT_AREA] >= _MIN_REGION)))


def _window(box: tuple[int, int, int, int], margin: int, shape: tuple[int, int]) -> tuple[slice, slice]:
    x1, y1, x2, y2 = box
    h, w = shape
    return slice(max(0, y1 - margin), min(h, y2 + margin)), slice(max(0, x1 - margin), min(w, x2 + margin))


def _touched_labels(labels: np.ndarray, ring: np.ndarray) -> int:
    vals = np.unique(labels[ring > 0])
    return int(np.count_nonzero(vals))


def _features(
    test_cu: np.ndarray,
    temp_cu: np.ndarray,
    diff_gray: np.ndarray,
    core: np.ndarray,
    box: tuple[int, int, int, int],
    added: bool,
    n_fragments: int,
    params: DetectionParams,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    shape = test_cu.shape
    ys, xs = _window(box, params.context, shape)
    t_cu = test_cu[ys, xs]
    m_cu = temp_cu[ys, xs]
    core_w = core[ys, xs]
    # Full extent: the untolerant difference connected to the core inside the window.
    raw = (t_cu & (1 - m_cu)) if added else (m_cu & (1 - t_cu))
    grown = cv2.dilate(core_w, _disk(params.tolerance + 1))
    full = raw & grown | core_w
    full_area = int(full.sum())
    ring = cv2.dilate(full, _disk(1)) & (1 - full)
    touch_cu = float((ring & m_cu).sum()) / max(1, int(ring.sum()))
    touch_sub = float((ring & (1 - m_cu)).sum()) / max(1, int(ring.sum()))
    _, cu_labels = cv2.connectedComponents(m_cu, connectivity=8)
    _, sub_labels = cv2.connectedComponents((1 - m_cu).astype(np.uint8), connectivity=4)
    cu_touched = _touched_labels(cu_labels, ring & m_cu)
    sub_touched = _touched_labels(sub_labels, ring & (1 - m_cu))
    # Topology change: only where the defect is, so that misregistration elsewhere in the
    # window (which the tolerance band hides in ``core`` but not in raw masks) cannot count.
    patch = cv2.dilate(full, _disk(2)).astype(bool)
    mixed = m_cu.copy()
    mixed[patch] = t_cu[patch]
    d_cu = _n_regions(mixed) - _n_regions(m_cu)
    d_holes = _n_holes(mixed) - _n_holes(m_cu)
    ys2, xs2 = _window(box, 3 * params.context, shape)
    m_wide = temp_cu[ys2, xs2]
    mixed_wide = m_wide.copy()
    oy, ox = ys.start - ys2.start, xs.start - xs2.start
    sub_view = mixed_wide[oy : oy + mixed.shape[0], ox : ox + mixed.shape[1]]
    sub_view[patch] = mixed[patch]
    d_cu_wide = _n_regions(mixed_wide) - _n_regions(m_wide)
    d_holes_wide = _n_holes(mixed_wide) - _n_holes(m_wide)
    fy, fx = np.nonzero(full)
    full_box = (
        xs.start + int(fx.min()),
        ys.start + int(fy.min()),
        xs.start + int(fx.max()) + 1,
        ys.start + int(fy.max()) + 1,
    )
    x1, y1, x2, y2 = full_box
    w, h = x2 - x1, y2 - y1
    dist = cv2.distanceTransform(full, cv2.DIST_L2, 3)
    feats = np.array(
        [
            float(added),
            float(core_w.sum()),
            float(full_area),
            float(w),
            float(h),
            float(max(w, h) / max(1, min(w, h))),
            float(full_area) / max(1, w * h),
            float(n_fragments),
            float(diff_gray[ys, xs][core_w > 0].mean()) if core_w.any() else 0.0,
            touch_cu,
            touch_sub,
            float(cu_touched),
            float(sub_touched),
            float(d_cu),
            float(d_holes),
            float(d_cu_wide),
            float(d_holes_wide),
            float(m_cu.mean()),
            float(2 * dist.max()),
        ],
        dtype=np.float64,
    )
    return feats, full_box


def _components(core: np.ndarray, params: DetectionParams) -> list[tuple[np.ndarray, tuple[int, int, int, int], int]]:
    """Merged connected regions of a difference mask: (full-size mask, box, number of fragments).

    Works on external contours and small crops rather than labelling the whole image:
    the masks are sparse, and contour tracing is ~100× faster than full-frame labelling.
    """
    joined = cv2.dilate(core, _disk(max(1, params.merge_distance // 2))) if params.merge_distance > 0 else core
    contours, _ = cv2.findContours(joined, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    out = []
    for contour in contours:
        x, y, w, h = cv2.boundingRect(contour)
        group = np.zeros((h, w), np.uint8)
        cv2.drawContours(group, [contour], -1, 1, thickness=cv2.FILLED, offset=(-x, -y))
        sub_core = core[y : y + h, x : x + w] & group
        _n, _, stats, _ = cv2.connectedComponentsWithStats(sub_core, connectivity=8)
        # Isolated single pixels are JPEG/binarisation noise, not fragments of a defect.
        sizes = stats[1:, cv2.CC_STAT_AREA]
        area = int(sizes[sizes >= 2].sum())
        if area < params.min_area:
            continue
        ys, xs = np.nonzero(sub_core)
        box = (x + int(xs.min()), y + int(ys.min()), x + int(xs.max()) + 1, y + int(ys.max()) + 1)
        full = np.zeros_like(core)
        full[y : y + h, x : x + w] = sub_core
        out.append((full, box, int(np.count_nonzero(sizes >= 2))))
    return out


def _tolerant_differences(test_cu: np.ndarray, temp_cu: np.ndarray, tolerance: int) -> tuple[np.ndarray, np.ndarray]:
    """Copper added beyond the tolerance band, and copper removed inside it.

    The band is ``tolerance`` pixels wide, except on *thin* template structures (lines
    and gaps narrower than twice the band, which the band would swallow whole): there it
    is one pixel, so a cut through a hair-line trace or a bridge across a narrow gap is
    still seen.
    """
    if tolerance <= 0:
        return test_cu & (1 - temp_cu), (1 - test_cu) & temp_cu
    k = _disk(tolerance)
    cross = cv2.getStructuringElement(cv2.MORPH_CROSS, (3, 3))
    substrate = (1 - temp_cu).astype(np.uint8)
    thin_cu = temp_cu & (1 - cv2.morphologyEx(temp_cu, cv2.MORPH_OPEN, k))
    thin_gap = substrate & (1 - cv2.morphologyEx(substrate, cv2.MORPH_OPEN, k))
    far_from_cu = (1 - cv2.dilate(temp_cu, k)) | (thin_gap & (1 - cv2.dilate(temp_cu, cross)))
    deep_in_cu = cv2.erode(temp_cu, k, borderType=cv2.BORDER_REPLICATE) | (
        thin_cu & cv2.erode(temp_cu, cross, borderType=cv2.BORDER_REPLICATE)
    )
    return test_cu & far_from_cu, (1 - test_cu) & deep_in_cu


def _best_shift(
    test_cu: np.ndarray, temp_pad: np.ndarray, box: tuple[int, int, int, int], params: DetectionParams
) -> tuple[int, int]:
    """The integer (dy, dx) within ±shift_tolerance that best fits the template around ``box``."""
    s = params.shift_tolerance
    h, w = test_cu.shape
    x1, y1, x2, y2 = box
    m = params.shift_window
    y1, x1, y2, x2 = max(0, y1 - m), max(0, x1 - m), min(h, y2 + m), min(w, x2 + m)
    window = test_cu[y1:y2, x1:x2].astype(np.float32)
    search = temp_pad[y1 : y2 + 2 * s, x1 : x2 + 2 * s].astype(np.float32)
    cost = cv2.matchTemplate(search, window, cv2.TM_SQDIFF)
    # Keep the global registration unless a local shift is clearly better.
    if cost[s, s] <= cost.min() + 2.0:
        return 0, 0
    i, j = np.unravel_index(int(np.argmin(cost)), cost.shape)
    return int(i) - s, int(j) - s


def find_candidates(test: np.ndarray, template_aligned: np.ndarray, params: DetectionParams) -> list[Candidate]:
    """Every difference region between a test image and its aligned template.

    Line-scanned boards are not rigid (scan-speed drift, slightly different line widths),
    so after the global registration parts of an image can still sit two or three pixels
    off and draw long slivers along lines. Each candidate is therefore re-checked locally:
    the integer shift (up to ``shift_tolerance``) that best fits the template around it is
    found by template matching, the tolerant difference is recomputed under that shift,
    and the candidate is dropped when too little of it survives — a real defect is a
    difference that no small shift explains. Its features are measured under the shift.
    """
    test_cu = copper_mask(test, params.threshold)
    temp_cu = copper_mask(template_aligned, params.threshold)
    added, removed = _tolerant_differences(test_cu, temp_cu, params.tolerance)
    diff_gray = cv2.absdiff(test, template_aligned)
    s = params.shift_tolerance
    temp_pad = cv2.copyMakeBorder(temp_cu, s, s, s, s, cv2.BORDER_REPLICATE) if s > 0 else temp_cu
    h, w = test_cu.shape
    out: list[Candidate] = []
    for is_added, mask in ((True, added), (False, removed)):
        for core, box, frags in _components(mask.astype(np.uint8), params):
            local_temp = temp_cu
            if s > 0:
                dy, dx = _best_shift(test_cu, temp_pad, box, params)
                if (dy, dx) != (0, 0):
                    local_temp = temp_pad[s + dy : s + dy + h, s + dx : s + dx + w]
                    ys, xs = _window(box, 2 * params.tolerance + 2, (h, w))
                    still = _tolerant_differences(test_cu[ys, xs], local_temp[ys, xs], params.tolerance)[
                        0 if is_added else 1
                    ]
                    kept = core[ys, xs] & still
                    if int(kept.sum()) < params.min_area:
                        continue
                    core = np.zeros_like(core)
                    core[ys, xs] = kept
                    ky, kx = np.nonzero(kept)
                    box = (
                        xs.start + int(kx.min()),
                        ys.start + int(ky.min()),
                        xs.start + int(kx.max()) + 1,
                        ys.start + int(ky.max()) + 1,
                    )
            feats, full_box = _features(test_cu, local_temp, diff_gray, core, box, is_added, frags, params)
            out.append(Candidate(full_box, is_added, int(feats[1]), float(feats[8]) / 255.0, feats))
    return out
