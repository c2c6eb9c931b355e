"""Registration of a test image onto its golden template.

Real pairs are never pixel-exact: the scanner shifts, the board rotates by a fraction of
a degree and the illumination drifts. A difference image taken without registration is
full of edge artefacts along every copper line, so registration comes first.

The method is coarse-to-fine: phase correlation on a downscaled copy finds the
translation in one FFT (robust to brightness changes, because it only looks at phase),
which seeds an ECC (enhanced correlation coefficient) refinement of a euclidean or affine
warp on a small image pyramid. ECC maximises a *normalised* correlation, so a global
gain/offset change in brightness does not move its optimum. If ECC fails to converge the
phase-correlation shift is kept, and if that is implausible the identity is used: a
slightly misregistered difference is still better than no answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

MOTIONS = {"translation": cv2.MOTION_TRANSLATION, "euclidean": cv2.MOTION_EUCLIDEAN, "affine": cv2.MOTION_AFFINE}


@dataclass
class Alignment:
    """A 2×3 warp taking test-image coordinates to template coordinates.

    ``template_aligned = cv2.warpAffine(template, matrix, size, flags=WARP_INVERSE_MAP)``
    puts the template in the test image's frame, so defect boxes stay in test coordinates.
    ``method`` says which stage produced it (``ecc``, ``phase`` or ``identity``) and
    ``score`` is the ECC correlation (or the phase-correlation response).
    """

    matrix: np.ndarray
    method: str
    score: float

    @property
    def shift(self) -> tuple[float, float]:
        """Translation (dx, dy) in pixels."""
        return float(self.matrix[0, 2]), float(self.matrix[1, 2])

    @property
    def angle_deg(self) -> float:
        """Rotation in degrees (counter-clockwise in image coordinates)."""
        return math.degrees(math.atan2(float(self.matrix[1, 0]), float(self.matrix[0, 0])))

    def to_dict(self) -> dict[str, object]:
        dx, dy = self.shift
        return {
            "method": self.method,
            "score": round(self.score, 4),
            "dx": round(dx, 3),
            "dy": round(dy, 3),
            "angle_deg": round(self.angle_deg, 4),
            "matrix": [[round(float(v), 6) for v in row] for row in self.matrix],
        }


def _downscale(img: np.ndarray, factor: float) -> np.ndarray:
    if factor == 1.0:
        return img
    h, w = img.shape
    return cv2.resize(img, (max(8, round(w * factor)), max(8, round(h * factor))), interpolation=cv2.INTER_AREA)


def _phase_shift(test: np.ndarray, template: np.ndarray) -> tuple[float, float, float]:
    """Translation of ``test`` relative to ``template`` by phase correlation (Hann-windowed)."""
    win = cv2.createHanningWindow((test.shape[1], test.shape[0]), cv2.CV_32F)
    (dx, dy), response = cv2.phaseCorrelate(template, test, win)
    return float(dx), float(dy), float(response)


def align(
    test: np.ndarray,
    template: np.ndarray,
    *,
    motion: str = "affine",
    max_size: int = 320,
    levels: int = 2,
    max_shift: float = 0.1,
    iterations: int = 60,
) -> Alignment:
    """Register ``test`` onto ``template`` (both 2-D grey images of one size).

    ``max_size`` is the long side of the coarsest pyramid level the search starts at;
    ``levels`` ECC refinements run at doubling resolutions up to ``max_size`` (full
    resolution is not needed: a sub-pixel estimate at half resolution is within a pixel
    at full resolution, and the detector tolerates that). ``max_shift`` (fraction of the
    image side) bounds a believable translation.
    """
    if test.shape != template.shape or test.ndim != 2:
        raise ValueError(f"align needs two 2-D images of one shape, got {test.shape} and {template.shape}")
    if motion not in MOTIONS:
        raise ValueError(f"motion must be one of {sorted(MOTIONS)}, got {motion!r}")
    t32 = test.astype(np.float32)
    m32 = template.astype(np.float32)
    top = min(1.0, max_size / max(test.shape))
    scales = [top / 2**k for k in reversed(range(levels))]

    coarse = scales[0]
    dx, dy, response = _phase_shift(_downscale(t32, coarse), _downscale(m32, coarse))
    dx, dy = dx / coarse, dy / coarse
    limit = max_shift * max(test.shape)
    if not (math.isfinite(dx) and math.isfinite(dy)) or math.hypot(dx, dy) > limit:
        dx, dy, response = 0.0, 0.0, 0.0
    # phaseCorrelate returns the shift of test relative to template: test(x) = template(x - d),
    # so test coordinates map to template coordinates by subtracting d.
    warp = np.array([[1, 0, -dx], [0, 1, -dy]], dtype=np.float32)
    best = Alignment(warp.copy(), "phase" if response > 0 else "identity", response)

    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, 1e-5)
    score = float("nan")
    for s in scales:
        scaled = warp.copy()
        scaled[:, 2] *= s
        try:
            score, scaled = cv2.findTransformECC(
                _downscale(t32, s), _downscale(m32, s), scaled, MOTIONS[motion], criteria, None, 5
            )
        except cv2.error:
            return best
        scaled[:, 2] /= s
        warp = scaled
    if not np.all(np.isfinite(warp)) or math.hypot(float(warp[0, 2]), float(warp[1, 2])) > limit:
        return best
    return Alignment(warp.astype(np.float64), "ecc", float(score))


def warp_template(template: np.ndarray, alignment: Alignment) -> np.ndarray:
    """The template resampled into the test image's frame (borders replicated)."""
    h, w = template.shape
    return cv2.warpAffine(
        template,
        alignment.matrix.astype(np.float32),
        (w, h),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_REPLICATE,
    )
