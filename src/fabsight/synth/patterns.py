"""Fail-probability fields of the WM-811K basic patterns, drawn for a whole batch at once.

Each pattern is a function ``(geometry, n, rng, params) -> Field`` returning, for ``n``
maps of one grid shape, the probability that each die fails because of the pattern.
Working on ``(n, H, W)`` arrays instead of one map at a time is what makes the generator
fast (thousands of maps per second) without a compiled extension.

Shapes are defined in normalised wafer coordinates (the wafer is the unit disk, see
:mod:`fabsight.synth.geometry`), with every size that must stay visible on small grids
floored to a minimum number of dies. The definitions keep the classes that are
confused in real data apart on purpose:

- **Loc** never reaches the rim (its field is zero on the outer band) and stays off the
  centre; **Edge-Loc** always does reach the rim (its anchor rim die always fails).
- **Center** sits within 0.1 wafer radii of the centre and never reaches past 0.8; a
  **Loc** centre is at least 0.3 radii away.
- **Random** fails 12–40 % of the wafer, **none** only its background (≤ 3 %).
- **Edge-Ring** covers the whole rim; **Edge-Loc** at most a third of it.

Every field is made irregular by a smooth random "wobble" so no two maps share an
outline, as with real process signatures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy.special import expit

from fabsight.synth.geometry import Geometry

#: Parameters each pattern draws per map, as (low, high) ranges of a uniform draw, in
#: wafer radii unless the name says otherwise. ``generate_map(..., size=0.3)`` fixes one;
#: ``size=(0.2, 0.3)`` narrows its range.
PARAMS: dict[str, dict[str, tuple[float, float]]] = {
    "Center": {"size": (0.15, 0.4), "density": (0.6, 1.0), "softness": (0.03, 0.1), "offset": (0.0, 0.1)},
    "Donut": {"ring_radius": (0.36, 0.6), "width": (0.14, 0.3), "density": (0.55, 1.0), "offset": (0.0, 0.06)},
    "Edge-Loc": {"span_deg": (25.0, 110.0), "depth": (0.1, 0.32), "density": (0.6, 1.0)},
    "Edge-Ring": {"width": (0.05, 0.16), "density": (0.55, 1.0)},
    "Loc": {"size": (0.1, 0.22), "distance": (0.3, 0.68), "density": (0.7, 1.0)},
    "Near-full": {"density": (0.72, 0.97)},
    "Random": {"density": (0.12, 0.4)},
    "Scratch": {"length": (0.6, 1.5), "curvature": (-1.2, 1.2), "width_dies": (1.0, 2.0), "density": (0.85, 1.0)},
}

#: Grid shapes of the ``wm811k`` profile: the 16 quantiles (i + 1/2) / 16 of the real WM-811K
#: train pieces' grids ordered by die count (37,348 maps, 340 sizes, mostly 25-27 dies across);
#: a shape listed k times is drawn k times as often.
WM811K_SHAPES: tuple[tuple[int, int], ...] = (
    *((25, 27),) * 5,
    *((27, 25),) * 2,
    (26, 26),
    (29, 26),
    (35, 31),
    (35, 37),
    (39, 37),
    (41, 45),
    (48, 48),
    (52, 59),
    (69, 73),
)
#: Background fail rate of the ``wm811k`` profile: the 5-95 % range of the failing-die share
#: of the real ``none`` maps (median 15 %: real wafers without a pattern are far from clean).
WM811K_NOISE: tuple[float, float] = (0.035, 0.23)
#: Background fail rate of the ``wm811k`` profile's single-pattern maps per class, where the
#: real maps' differs from ``none``'s (fitted with the parameters below, paired with the
#: ``background`` statistic; Random and Near-full have no background apart from the pattern).
WM811K_CLASS_NOISE: dict[str, tuple[float, float]] = {
    "none": (0.043, 0.23),
    "Center": (0.027, 0.263),
    "Donut": (0.027, 0.269),
    "Edge-Loc": (0.035, 0.271),
    "Edge-Ring": (0.015, 0.141),
    "Loc": (0.008, 0.222),
    "Scratch": (0.014, 0.169),
}
#: Parameter ranges of the ``wm811k`` profile, fitted to the real WM-811K train pieces by
#: quantile matching (``benchmarks/synth_vs_real.py --fit``): each fitted parameter is
#: paired with the statistic of :mod:`fabsight.synth.realism` it drives, and its low / high
#: end is scaled by real / generated of that statistic's 10 % / 90 % quantile, measured with
#: each class's own real grid sizes (one round: a second one runs away wherever a floor
#: or clip of the pattern's definition binds, e.g. Edge-Ring's 1.2-die minimum width). Unpaired
#: parameters (densities, softness, curvature...) keep :data:`PARAMS`.
_WM811K_FITTED: dict[str, dict[str, tuple[float, float]]] = {
    "Center": {"size": (0.09, 0.4)},
    "Donut": {"ring_radius": (0.334, 0.609), "width": (0.113, 0.441)},
    "Edge-Loc": {"depth": (0.067, 0.508), "span_deg": (22.013, 134.153)},
    "Edge-Ring": {"width": (0.023, 0.101)},
    "Loc": {"size": (0.076, 0.348), "distance": (0.268, 0.885)},
    "Near-full": {"density": (0.705, 1.0)},
    "Random": {"density": (0.164, 0.535)},
    "Scratch": {"length": (0.484, 1.883)},
}
#: The ``wm811k`` profile's parameter ranges: :data:`PARAMS` with the fitted ones above in place.
WM811K_PARAMS: dict[str, dict[str, tuple[float, float]]] = {
    name: {**ranges, **_WM811K_FITTED.get(name, {})} for name, ranges in PARAMS.items()
}

#: Patterns with no preferred direction: their truth has ``angle = None``.
ROTATIONALLY_SYMMETRIC = frozenset({"Center", "Donut", "Edge-Ring", "Near-full", "Random"})


@dataclass
class Field:
    """What a pattern function returns for a batch of ``n`` maps."""

    p: np.ndarray  # (n, H, W) float32 fail probability caused by the pattern
    params: dict[str, np.ndarray]  # (n,) per-map generating parameters, reported as truth
    anchor: np.ndarray | None = None  # (n,) flat die index that always fails (keeps a cluster visible)
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # (n,) further truth (orientation, broken)


@lru_cache(maxsize=64)
def _basis(g: Geometry) -> np.ndarray:
    """(8, H*W) float32 fields ``1, u, v, u², v², uv, cos θ, sin θ``.

    Distances, ellipses and angular profiles are all linear combinations of these, so each
    costs one small matrix product for a whole batch instead of many full-grid passes.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        cos_t, sin_t = np.nan_to_num(g.u / g.rho, nan=1.0), np.nan_to_num(-g.v / g.rho)
    fields = (np.ones_like(g.u), g.u, g.v, g.u**2, g.v**2, g.u * g.v, cos_t, sin_t)
    return np.stack([f.ravel() for f in fields]).astype(np.float32)


def _combine(g: Geometry, coeffs: list[np.ndarray]) -> np.ndarray:
    """Per-map linear combination of the :func:`_basis` fields: (n, H, W) float32."""
    c = np.stack([np.broadcast_to(np.asarray(a, dtype=np.float32), np.shape(coeffs[0])) for a in coeffs], axis=1)
    return (c @ _basis(g)).reshape(-1, *g.shape)


def _ellipse(g: Geometry, cu: np.ndarray, cv: np.ndarray, a: np.ndarray, b: np.ndarray, tilt: np.ndarray) -> np.ndarray:
    """Elliptical distance from (cu, cv) with semi-axes a, b (1 on the ellipse), per map."""
    ct, st = np.cos(tilt), np.sin(tilt)
    qa = (ct / a) ** 2 + (st / b) ** 2  # coefficients of the quadratic form in (u - cu, v - cv)
    qb = (st / a) ** 2 + (ct / b) ** 2
    qc = -2 * ct * st * (1 / a**2 - 1 / b**2)
    const = qa * cu**2 + qb * cv**2 + qc * cu * cv
    d2 = _combine(g, [const, -2 * qa * cu - qc * cv, -2 * qb * cv - qc * cu, qa, qb, qc, 0 * cu, 0 * cu])
    return np.sqrt(np.maximum(d2, 0, out=d2), out=d2)


def _circle(g: Geometry, cu: np.ndarray, cv: np.ndarray) -> np.ndarray:
    """Distance of every die from (cu, cv), per map."""
    one = np.ones_like(cu)
    return _ellipse(g, cu, cv, one, one, 0 * cu)


def _wobble(g: Geometry, n: int, rng: np.random.Generator, amp: float, waves: int = 3) -> np.ndarray:
    """``1 + amp * w`` with ``w`` a smooth random field in [-1, 1] that makes outlines irregular.

    ``w`` is a few low-frequency plane waves; ``cos(a + b) = cos a cos b - sin a sin b`` with
    ``a`` depending only on the column and ``b`` only on the row turns the sum into one
    batched (H, 2k+1) @ (2k+1, W) product.
    """
    freq = rng.uniform(0.4, 1.4, (n, waves)) * np.pi
    direction = rng.uniform(0, 2 * np.pi, (n, waves))
    phase = rng.uniform(0, 2 * np.pi, (n, waves))
    a = (freq * np.cos(direction))[:, :, None] * g.u[0][None, None, :]  # (n, k, W)
    b = (freq * np.sin(direction))[:, :, None] * g.v[:, 0][None, None, :] + phase[:, :, None]  # (n, k, H)
    scale = amp / waves
    left = np.concatenate([np.cos(b), np.sin(b), np.ones((n, 1, g.shape[0]))], axis=1)
    right = np.concatenate([scale * np.cos(a), -scale * np.sin(a), np.ones((n, 1, g.shape[1]))], axis=1)
    return np.matmul(left.transpose(0, 2, 1).astype(np.float32), right.astype(np.float32))


def _col(a: np.ndarray) -> np.ndarray:
    """(n,) → (n, 1, 1) float32 so per-map parameters broadcast over the grid."""
    return np.asarray(a, dtype=np.float32)[:, None, None]


def _angular_fade(g: Geometry, n: int, rng: np.random.Generator, most: float) -> np.ndarray:
    """Density factor in [1 - most, 1] varying smoothly around the wafer (rings are rarely uniform)."""
    amp = rng.uniform(0, most, n)
    phase = rng.uniform(0, 2 * np.pi, n)
    zero = np.zeros(n)
    half = amp / 2  # 1 - amp * (1 + cos(theta - phase)) / 2
    return _combine(g, [1 - half, zero, zero, zero, zero, zero, -half * np.cos(phase), -half * np.sin(phase)])


def _offset_centre(n: int, rng: np.random.Generator, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = rng.uniform(0, 2 * np.pi, n)
    return offset * np.cos(a), -offset * np.sin(a)


def _nearest_die(g: Geometry, cu: np.ndarray, cv: np.ndarray) -> np.ndarray:
    r, c = g.to_row_col(cu, cv)
    h, w = g.shape
    return np.clip(np.rint(r), 0, h - 1).astype(np.int64) * w + np.clip(np.rint(c), 0, w - 1).astype(np.int64)


def _soft_step(x: np.ndarray, scale: float | np.ndarray, peak: np.ndarray) -> np.ndarray:
    """``peak * sigmoid(x / scale)``, in place on ``x``."""
    x /= scale
    expit(x, out=x)
    x *= _col(peak)
    return x


def center(g: Geometry, n: int, rng: np.random.Generator, prm: dict[str, np.ndarray]) -> Field:
    """Dense blob on the wafer centre whose density falls off softly with radius."""
    prm["size"] = np.maximum(prm["size"], 1.5 / g.dies_per_radius)
    cu, cv = _offset_centre(n, rng, prm["offset"])
    x = _circle(g, cu, cv)
    x *= _wobble(g, n, rng, 0.25)
    np.subtract(_col(prm["size"]), x, out=x)
    p = _soft_step(x, _col(prm["softness"]), prm["density"])
    p *= g.rho < 0.8  # cut the faint tail: a Center never reaches the edge band
    return Field(p, prm, anchor=_nearest_die(g, cu, cv))


def donut(g: Geometry, n: int, rng: np.random.Generator, prm: dict[str, np.ndarray]) -> Field:
    """Ring at mid radius around an empty centre."""
    prm["width"] = np.maximum(prm["width"], 2.0 / g.dies_per_radius)
    cu, cv = _offset_centre(n, rng, prm["offset"])
    x = _circle(g, cu, cv)
    x *= _wobble(g, n, rng, 0.08)
    x -= _col(prm["ring_radius"])
    np.abs(x, out=x)
    np.subtract(_col(prm["width"] / 2), x, out=x)
    p = _soft_step(x, 0.035, prm["density"])
    p *= _angular_fade(g, n, rng, 0.4)
    return Field(p, prm)


def edge_ring(g: Geometry, n: int, rng: np.random.Generator, prm: dict[str, np.ndarray]) -> Field:
    """Band all around the rim, of varying width and density."""
    prm["width"] = np.maximum(prm["width"], 1.2 / g.dies_per_radius)
    x = _wobble(g, n, rng, 0.3)
    x *= _col(prm["width"])
    x += g.rho - 1  # rho - (1 - width * wobble)
    p = _soft_step(x, 0.5 / g.dies_per_radius, prm["density"])
    p *= _angular_fade(g, n, rng, 0.45)
    return Field(p, prm)


def edge_loc(g: Geometry, n: int, rng: np.random.Generator, prm: dict[str, np.ndarray]) -> Field:
    """Lens-shaped cluster on part of the rim; its anchor rim die always fails."""
    min_span = np.degrees(3.5 / g.dies_per_radius)
    prm["span_deg"] = np.clip(prm["span_deg"], min_span, 120.0)
    prm["depth"] = np.maximum(prm["depth"], 1.5 / g.dies_per_radius)
    direction = rng.uniform(-np.pi, np.pi, n)
    cos_half = np.cos(np.radians(prm["span_deg"]) / 2)
    zero = np.zeros(n)
    # arc profile: 1 at the cluster's direction, 0 at ± span / 2 and beyond
    arc = _combine(g, [-cos_half, zero, zero, zero, zero, zero, np.cos(direction), np.sin(direction)])
    arc /= _col(1 - cos_half)
    np.clip(arc, 0, 1, out=arc)
    inside = arc > 0
    np.sqrt(arc, out=arc)
    arc *= _wobble(g, n, rng, 0.25)
    arc *= _col(prm["depth"])
    arc += g.rho - 1  # rho - (1 - reach)
    p = _soft_step(arc, 0.5 / g.dies_per_radius, prm["density"])
    p *= inside
    gap = np.abs((g.rim_theta[None, :] - direction[:, None] + np.pi) % (2 * np.pi) - np.pi)
    return Field(p, prm, anchor=g.rim_index[np.argmin(gap, axis=1)])


def loc(g: Geometry, n: int, rng: np.random.Generator, prm: dict[str, np.ndarray]) -> Field:
    """Compact elliptical cluster away from both the centre and the rim."""
    aspect = rng.uniform(1.0, 1.8, n)
    semi_major = np.maximum(prm["size"], 2.0 / g.dies_per_radius) * np.sqrt(aspect)
    semi_major = np.minimum(semi_major, 0.3)  # leaves room between centre and rim on any grid
    prm["size"] = semi_major / np.sqrt(aspect)
    prm["distance"] = np.clip(prm["distance"], semi_major + 0.12, 0.85 - 1.2 * semi_major)
    direction = rng.uniform(-np.pi, np.pi, n)
    cu, cv = prm["distance"] * np.cos(direction), -prm["distance"] * np.sin(direction)
    x = _ellipse(g, cu, cv, semi_major, prm["size"] / np.sqrt(aspect), rng.uniform(0, np.pi, n))
    x *= _wobble(g, n, rng, 0.25)
    np.subtract(1, x, out=x)
    p = _soft_step(x, 0.15, prm["density"])
    p *= (g.rho < 0.9) & ~g.rim  # a Loc never touches the rim
    return Field(p, prm, anchor=_nearest_die(g, cu, cv), extra={"aspect": aspect})


def scratch(g: Geometry, n: int, rng: np.random.Generator, prm: dict[str, np.ndarray]) -> Field:
    """Thin curved line (1–2 dies wide), random orientation and bend, sometimes broken."""
    h, w = g.shape
    prm["length"] = np.maximum(prm["length"], 6.0 / g.dies_per_radius)
    step = 0.35 / max(h, w) * 2  # < half a die on the longer axis: no holes in the rasterised line
    steps = int(np.ceil(prm["length"].max() / step)) + 2
    s = np.arange(steps, dtype=np.float64)[None, :] * step  # (1, M)
    length = prm["length"][:, None]
    s = s - length / 2  # arc length measured from the midpoint
    on_curve = np.abs(s) <= length / 2
    direction = rng.uniform(-np.pi, np.pi, n)
    mid_r = 0.65 * np.sqrt(rng.uniform(0, 1, n))
    mid_a = rng.uniform(-np.pi, np.pi, n)
    heading = direction[:, None] + prm["curvature"][:, None] * s
    # integrate the heading along the arc; subtract the value at s=0 so the midpoint is fixed
    x = np.cumsum(np.cos(heading), axis=1) * step
    y = np.cumsum(np.sin(heading), axis=1) * step
    zero = np.argmin(np.abs(s), axis=1)
    rows = np.arange(n)
    x = x - x[rows, zero][:, None] + (mid_r * np.cos(mid_a))[:, None]
    y = y - y[rows, zero][:, None] + (mid_r * np.sin(mid_a))[:, None]
    broken = rng.uniform(0, 1, n) < 0.35
    for _ in range(2):  # up to two gaps of 0.05–0.15 radii on a broken scratch
        start = rng.uniform(-0.5, 0.5, n)[:, None] * length
        gap = rng.uniform(0.05, 0.15, n)[:, None]
        on_curve &= ~(broken[:, None] & (s >= start) & (s < start + gap))
    half_width = (prm["width_dies"][:, None] - 1) / 2
    line = np.zeros((n, h * w), dtype=bool)
    for side in (-1.0, 1.0):  # stamp each point at ± half the extra width along the normal
        pu = x - side * half_width * np.sin(heading) * (2 / w)
        pv = -(y + side * half_width * np.cos(heading) * (2 / h))
        r, c = g.to_row_col(pu, pv)
        r, c = np.rint(r).astype(np.int64), np.rint(c).astype(np.int64)
        ok = on_curve & (r >= 0) & (r < h) & (c >= 0) & (c < w)
        line[np.broadcast_to(rows[:, None], ok.shape)[ok], r[ok] * w + c[ok]] = True
    p = line.reshape(n, h, w).astype(np.float32) * _col(prm["density"])
    orientation = np.degrees(direction) % 180.0
    midpoint = np.stack(g.to_row_col(mid_r * np.cos(mid_a), -mid_r * np.sin(mid_a)), axis=1)
    return Field(p, prm, extra={"orientation_deg": orientation, "broken": broken, "midpoint": midpoint})


def _uniform(spread: float) -> Callable[[Geometry, int, np.random.Generator, dict[str, np.ndarray]], Field]:
    """Field of a pattern spread over the whole wafer (Random, Near-full), ``spread`` its unevenness."""

    def fn(g: Geometry, n: int, rng: np.random.Generator, prm: dict[str, np.ndarray]) -> Field:
        p = _wobble(g, n, rng, spread)
        p *= _col(prm["density"])
        return Field(np.clip(p, 0, 1, out=p), prm)

    return fn


#: The field function of each basic pattern.
FIELDS: dict[str, Callable[[Geometry, int, np.random.Generator, dict[str, np.ndarray]], Field]] = {
    "Center": center,
    "Donut": donut,
    "Edge-Loc": edge_loc,
    "Edge-Ring": edge_ring,
    "Loc": loc,
    "Near-full": _uniform(0.1),
    "Random": _uniform(0.35),
    "Scratch": scratch,
}
