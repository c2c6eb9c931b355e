"""WM-811K-like single-type and MixedWM38-like mixed-type wafer maps with known truth.

A map is drawn in one pass: each requested basic pattern contributes a fail-probability
field (:mod:`fabsight.synth.patterns`), the fields and a background fail rate are
combined as independent causes (a die survives only if every cause spares it), and one
uniform draw per die decides. Maps of one class and grid shape are drawn as a batch, which
is why :func:`generate_dataset` is fast; :func:`generate_map` is the same code with a batch
of one.

Truth kept in ``WaferMap.extras`` (all positions in die coordinates, sizes in wafer radii):

``noise``
    mean background fail rate of the map (random fails outside any pattern).
``seed``
    the ``seed`` given to :func:`generate_dataset`.
``patterns``
    one entry per basic pattern in the map (empty for ``none``), each a dict with

    - ``centre``: ``[row, col]`` centroid of the pattern's fail probability;
    - ``radius``: mean distance of the pattern's fails from the wafer centre (0 centre, 1 rim);
    - ``angle``: direction of the centroid seen from the wafer centre, degrees counter-clockwise
      from 3 o'clock as drawn (row 0 at the top); ``None`` for patterns without a direction
      (Center, Donut, Edge-Ring, Near-full, Random);
    - ``extent``: fraction of the on-wafer dies the pattern covers (probability at least half
      its peak density);
    - the generating parameters of :data:`fabsight.synth.patterns.PARAMS` for that pattern
      (``density``, ``size``, ``width``, ``span_deg``, ``depth``, ``length``, ``curvature``…),
      plus ``orientation_deg``, ``broken`` and ``midpoint`` (``[row, col]`` of a point on the
      line) for Scratch and ``aspect`` for Loc;
    - mixed maps only, ``visible_dies``: how many dies of its footprint no other pattern of
      the map already fails. Every pattern of a mixed map is redrawn until this is at least
      :data:`MIN_VISIBLE_DIES` and :data:`VISIBLE_SHARE` of its footprint, so a label always
      means "visible on the map" (as in the real MixedWM38, labelled by looking at the maps).
      Single-type maps are drawn exactly as before this rule existed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from threadpoolctl import threadpool_limits

from fabsight.errors import FabsightError
from fabsight.synth.geometry import Geometry, check_shape, geometry
from fabsight.synth.patterns import (
    FIELDS,
    PARAMS,
    ROTATIONALLY_SYMMETRIC,
    WM811K_CLASS_NOISE,
    WM811K_NOISE,
    WM811K_PARAMS,
    WM811K_SHAPES,
    Field,
)
from fabsight.types import MIXEDWM38_LABELS, WM811K_CLASSES, WaferMap
from fabsight.utils.progress import track

#: Default range of the per-map background fail rate.
DEFAULT_NOISE: tuple[float, float] = (0.002, 0.03)

#: Per-pattern parameter ranges, as :data:`fabsight.synth.patterns.PARAMS`.
Ranges = Mapping[str, Mapping[str, tuple[float, float]]]


@dataclass(frozen=True)
class Profile:
    """The default ranges of one family of maps: pattern parameters, background fail rate, grids."""

    params: Ranges
    noise: tuple[float, float]
    shapes: tuple[tuple[int, int], ...]
    #: Background range of the single-pattern maps of a class (or ``none``) where it is not ``noise``.
    class_noise: Mapping[str, tuple[float, float]] = field(default_factory=dict)


#: ``profile=`` of :func:`generate_dataset`. ``default``: clean maps (background ≤ 3 %) on a
#: 52×52 grid, patterns well apart: the maps tests and demos reason about. ``wm811k``: ranges,
#: background and grid sizes fitted to the real WM-811K train pieces (see
#: :data:`fabsight.synth.patterns.WM811K_PARAMS`): the training data of ``wafer train --synthetic``.
PROFILES: dict[str, Profile] = {
    "default": Profile(PARAMS, DEFAULT_NOISE, ((52, 52),)),
    "wm811k": Profile(WM811K_PARAMS, WM811K_NOISE, WM811K_SHAPES, WM811K_CLASS_NOISE),
}

_ABBREVIATIONS = {
    "C": "Center",
    "D": "Donut",
    "EL": "Edge-Loc",
    "ER": "Edge-Ring",
    "L": "Loc",
    "NF": "Near-full",
    "S": "Scratch",
    "R": "Random",
}
_ORDER = {name: i for i, name in enumerate(MIXEDWM38_LABELS)}
# The MixedWM38 classes C1..C38 in the paper's order (Wang et al., 2020).
_MIXEDWM38_CODES = (
    "Normal C D EL ER L NF S R "
    "C+EL C+ER C+L C+S D+EL D+ER D+L D+S EL+L EL+S ER+L ER+S L+S "
    "C+EL+L C+EL+S C+ER+L C+ER+S C+L+S D+EL+L D+EL+S D+ER+L D+ER+S D+L+S EL+L+S ER+L+S "
    "C+L+EL+S C+L+ER+S D+L+EL+S D+L+ER+S"
)
#: The 38 MixedWM38 classes as label tuples (basic patterns in ``MIXEDWM38_LABELS`` order);
#: the normal class is ``("none",)``. Near-full and Random never combine with anything;
#: Center never meets Donut, nor Edge-Loc Edge-Ring.
MIXED_COMBINATIONS: tuple[tuple[str, ...], ...] = tuple(
    ("none",) if code == "Normal" else tuple(sorted((_ABBREVIATIONS[a] for a in code.split("+")), key=_ORDER.get))
    for code in _MIXEDWM38_CODES.split()
)
_SOLITARY = frozenset({"Near-full", "Random"})

#: A pattern of a mixed map must fail at least this many dies that no other pattern
#: already fails (dies where the others together fail with probability below ``COVERED``),
#: and at least ``VISIBLE_SHARE`` of its own footprint, or it is redrawn.
MIN_VISIBLE_DIES = 6
VISIBLE_SHARE = 0.5
COVERED = 0.2
#: Bound on the redraws of hidden patterns per batch; every ``REDRAW_ALL_EVERY``-th try
#: redraws the whole combination of the maps still hiding one.
MAX_TRIES = 40
REDRAW_ALL_EVERY = 8

# Cells drawn per batch: bounds memory (~5 arrays of this many float32) whatever the grid size.
_BATCH_CELLS = 2_000_000


def parse_pattern(pattern: str | Sequence[str]) -> tuple[str, ...]:
    """The basic patterns of a request, in canonical order (``()`` for ``none``).

    Accepts a WM-811K class name, a ``+``-joined combination (``"Center+Edge-Ring"``) or a
    sequence of basic pattern names.
    """
    names = pattern.split("+") if isinstance(pattern, str) else list(pattern)
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in FIELDS]
    if unknown or not names:
        raise FabsightError(
            None, f"unknown pattern {unknown[0] if unknown else pattern!r}: expected one of {', '.join(WM811K_CLASSES)}"
        )
    if len(set(names)) != len(names):
        raise FabsightError(None, f"pattern combination {'+'.join(names)} repeats a pattern")
    if len(names) > 1 and _SOLITARY & set(names):
        raise FabsightError(None, f"{'+'.join(names)}: Near-full and Random never combine with other patterns")
    return tuple(sorted(names, key=_ORDER.__getitem__))


def labels_of(names: tuple[str, ...]) -> tuple[str, ...]:
    """``WaferMap.labels`` for a parsed pattern: the patterns, or ``("none",)`` for a good wafer."""
    return names or ("none",)


def _check_range(name: str, value: Any) -> tuple[float, float]:
    """A user's ``value`` (a number, or a (low, high) pair) as a finite range."""
    try:
        arr = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        arr = np.empty(0)
    if arr.size not in (1, 2) or not np.all(np.isfinite(arr)) or arr[0] > arr[-1]:
        raise FabsightError(None, f"{name} must be a finite number or a (low, high) pair, got {value!r}")
    return float(arr[0]), float(arr[-1])


def _profile(name: str) -> Profile:
    if name not in PROFILES:
        raise FabsightError(None, f"unknown profile {name!r}: expected one of {', '.join(PROFILES)}")
    return PROFILES[name]


def _noise_range(
    noise: float | tuple[float, float] | None, profile: Profile, names: tuple[str, ...]
) -> tuple[float, float]:
    """The background range of maps of pattern ``names``: ``noise``, else the profile's for that class."""
    default = profile.class_noise.get("+".join(labels_of(names)), profile.noise)
    lo, hi = default if noise is None else _check_range("noise", noise)
    if lo < 0 or hi > 1:
        raise FabsightError(None, f"noise {noise!r} must lie in [0, 1]")
    return lo, hi


def _check_params(combos: Iterable[tuple[str, ...]], params: Mapping[str, Any], base: Ranges) -> Ranges:
    """Validate ``**params`` against the patterns requested (every name must belong to one of
    them); returns every requested pattern's ranges: ``base``, with ``params`` in place."""
    combos = list(combos)
    known = {p for names in combos for name in names for p in base[name]}
    for name in params:
        if name not in known:
            choices = ", ".join(sorted(known)) or "none (the requested patterns take no parameters)"
            raise FabsightError(None, f"unknown parameter {name!r} for these patterns; known: {choices}")
    given = {name: _check_range(name, value) for name, value in params.items()}
    return {name: {k: given.get(k, r) for k, r in base[name].items()} for names in combos for name in names}


def _background(g: Geometry) -> np.ndarray:
    """Relative background fail rate per die, mean 1: slightly more at the rim, as on real wafers."""
    profile = 0.7 + 0.6 * g.rho**6
    return (profile / profile[g.mask].mean()).astype(np.float32)


def _summarise(g: Geometry, name: str, f: Field) -> dict[str, list[Any]]:
    """Per-map truth columns of one pattern (lists, one entry per map)."""
    n = f.p.shape[0]
    p = f.p.reshape(n, -1)
    rows, cols = g.to_row_col(g.u, g.v)
    weights = np.stack([rows, cols, g.u, g.v, g.rho, np.ones_like(g.u)], axis=-1).reshape(-1, 6)
    sums = (p @ (weights * g.mask.reshape(-1, 1))).astype(np.float64)  # p-weighted sums over the wafer
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums[:, :5] / sums[:, 5:]  # NaN when the pattern has no weight on the wafer
    peak = np.asarray(f.params["density"], dtype=np.float32)[:, None]
    covered = np.count_nonzero((p >= 0.5 * peak) & g.mask.reshape(1, -1), axis=1) / np.count_nonzero(g.mask)
    angle = None if name in ROTATIONALLY_SYMMETRIC else np.degrees(np.arctan2(-mean[:, 3], mean[:, 2])) % 360.0
    out: dict[str, list[Any]] = {
        "centre": mean[:, :2].round(3).tolist(),
        "radius": mean[:, 4].round(4).tolist(),
        "angle": [None] * n if angle is None else angle.round(2).tolist(),
        "extent": covered.round(4).tolist(),
    }
    for key, values in {**f.params, **f.extra}.items():
        arr = np.asarray(values)
        out[key] = arr.tolist() if arr.dtype == bool else arr.astype(np.float64).round(4).tolist()
    return out


def _draw_field(name: str, g: Geometry, n: int, rng: np.random.Generator, params: Ranges) -> Field:
    """Parameters and fail-probability field of one pattern for ``n`` maps."""
    drawn = {k: rng.uniform(*r, n) for k, r in params[name].items()}
    return FIELDS[name](g, n, rng, drawn)


def _visible_dies(fields: Mapping[str, Field], g: Geometry) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per pattern, (dies it fails that no other pattern already fails, its footprint), per map.

    A die is the pattern's footprint where its fail probability is at least half its peak
    (as ``extent``), and its own where, in addition, the other patterns together fail it
    with probability below :data:`COVERED`: there the map shows the pattern, not the others.
    """
    spared = {name: 1 - f.p for name, f in fields.items()}
    out = {}
    for name, f in fields.items():
        others = np.ones_like(f.p)
        for other, s in spared.items():
            if other != name:
                others *= s
        peak = np.asarray(f.params["density"], dtype=np.float32)[:, None, None]
        footprint = (f.p >= 0.5 * peak) & g.mask
        own = footprint & (others > 1 - COVERED)
        out[name] = (own.sum(axis=(1, 2)), footprint.sum(axis=(1, 2)))
    return out


def _hidden(own: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Maps on which a pattern shows too little of itself to be seen (see :data:`MIN_VISIBLE_DIES`)."""
    return (own < MIN_VISIBLE_DIES) | (own < VISIBLE_SHARE * footprint)


def _splice(f: Field, rows: np.ndarray, new: Field) -> None:
    """Replace maps ``rows`` of field ``f`` by the redrawn ``new`` (in place)."""
    f.p[rows] = new.p
    for group, fresh in ((f.params, new.params), (f.extra, new.extra)):
        for key, values in fresh.items():
            group[key][rows] = values
    if f.anchor is not None and new.anchor is not None:
        f.anchor[rows] = new.anchor


def _keep_visible(
    fields: dict[str, Field], g: Geometry, rng: np.random.Generator, params: Ranges
) -> dict[str, np.ndarray]:
    """Redraw the patterns of a mixed map that another pattern hides, until each shows itself.

    A Loc blob or a Scratch drawn on top of a Center blob, a Donut ring or an Edge-Ring
    band fails dies that fail anyway: the map cannot show it, yet its label would claim
    it. Real MixedWM38 labels were assigned by looking at the maps, so every label is
    visible there. Each try redraws (new position, size and shape) only the hidden
    patterns of the maps that have one; every :data:`REDRAW_ALL_EVERY`-th try redraws
    every pattern of those maps, since a large Center can leave no room for a Loc. After
    :data:`MAX_TRIES` tries the remaining maps keep their last draw (all rng-driven, so
    the result still depends only on the seed; only grids of about 15×15 dies are too
    small for some four-pattern combinations). Returns the own-die count of every pattern
    per map, which the truth reports as ``visible_dies``.
    """
    names = list(fields)
    for attempt in range(1, MAX_TRIES + 1):
        counts = _visible_dies(fields, g)
        hidden = {name: _hidden(*counts[name]) for name in names}
        bad = np.logical_or.reduce(list(hidden.values()))
        if not bad.any():
            break
        whole = attempt % REDRAW_ALL_EVERY == 0
        for name in names:
            rows = np.flatnonzero(bad if whole else hidden[name])
            if rows.size:
                _splice(fields[name], rows, _draw_field(name, g, rows.size, rng, params))
    return {name: own for name, (own, _) in _visible_dies(fields, g).items()}


def _batch(
    names: tuple[str, ...],
    g: Geometry,
    n: int,
    rng: np.random.Generator,
    noise: tuple[float, float],
    params: Ranges,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """``n`` maps of one pattern combination and shape: (n, H, W) uint8 grids and their truth.

    Works in place on a few (n, H, W) buffers: at 52×52 the full-grid passes, not the
    Python around them, are what limits maps per second. Mixed maps first go through
    :func:`_keep_visible`; single-pattern maps draw nothing more (same maps as before it).
    """
    fields = {name: _draw_field(name, g, n, rng, params) for name in names}
    visible = _keep_visible(fields, g, rng, params) if len(names) > 1 else {}
    survive: np.ndarray | None = None  # probability that no pattern fails a die
    anchors: list[np.ndarray] = []
    columns: dict[str, dict[str, list[Any]]] = {}
    for name, f in fields.items():
        columns[name] = _summarise(g, name, f)
        if name in visible:
            columns[name]["visible_dies"] = visible[name].tolist()
        if f.anchor is not None:
            anchors.append(f.anchor)
        spared = np.subtract(1, f.p, out=f.p)
        survive = spared if survive is None else np.multiply(survive, spared, out=survive)
    level = rng.uniform(*noise, n).astype(np.float32)
    scratch = np.multiply(-level[:, None, None], _background(g))  # background: survive *= 1 - rate
    scratch += 1
    np.maximum(scratch, 0, out=scratch)
    survive = scratch if survive is None else np.multiply(survive, scratch, out=survive)
    fail = rng.random(survive.shape, dtype=np.float32) >= survive
    flat = fail.reshape(n, -1)
    for anchor in anchors:
        flat[np.arange(n), anchor] = True
    grids = fail.view(np.uint8)  # 0/1, then OFF 0, GOOD 1, FAIL 2
    grids += 1
    grids *= g.mask
    truths = [
        {
            "noise": round(float(level[i]), 5),
            "patterns": {name: {k: col[i] for k, col in cols.items()} for name, cols in columns.items()},
        }
        for i in range(n)
    ]
    return grids, truths


def generate_map(
    pattern: str | Sequence[str],
    shape: tuple[int, int] = (52, 52),
    rng: np.random.Generator | int | None = None,
    *,
    noise: float | tuple[float, float] | None = None,
    profile: str = "default",
    **params: float | tuple[float, float],
) -> np.ndarray:
    """One synthetic wafer map: a (H, W) uint8 grid of 0 off-wafer / 1 good / 2 failing dies.

    ``pattern`` is a WM-811K class, a ``+``-joined combination or a sequence of basic
    patterns (a MixedWM38-style mixed map). ``noise`` is the background fail rate (a number,
    a (low, high) range, or ``None`` for the profile's); ``0`` leaves only the
    pattern's own fails. ``params`` fix or narrow the pattern parameters of the
    :data:`PROFILES` entry ``profile`` (:data:`fabsight.synth.patterns.PARAMS` by default),
    e.g. ``density=1.0`` or ``size=(0.2, 0.25)``.
    """
    names = parse_pattern(pattern)
    g = geometry(check_shape(shape))
    prof = _profile(profile)
    ranges = _check_params([names], params, prof.params)
    grids, _ = _batch(names, g, 1, np.random.default_rng(rng), _noise_range(noise, prof, names), ranges)
    return grids[0]


def generate_dataset(
    per_class: int,
    *,
    shapes: Sequence[tuple[int, int]] | None = None,
    classes: Sequence[str | Sequence[str]] | None = None,
    mixed: bool = False,
    seed: int = 0,
    noise: float | tuple[float, float] | None = None,
    profile: str = "default",
    **params: float | tuple[float, float],
) -> list[WaferMap]:
    """``per_class`` labelled maps of every class, grouped by class, identical for the same ``seed``.

    ``classes`` defaults to the nine WM-811K classes, or with ``mixed=True`` to the 38
    :data:`MIXED_COMBINATIONS`; entries may also be combinations (``"Center+Loc"``). Each
    map's grid shape is drawn uniformly from ``shapes`` (a shape listed twice is drawn twice
    as often). ``profile`` (a :data:`PROFILES` name) sets the defaults of ``shapes``, ``noise``
    and the pattern parameters ``params`` narrow. ``labels`` is the tuple of basic
    patterns (``("none",)`` for a good wafer); ``extras`` holds the truth described in the
    module docstring.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 0:
        raise FabsightError(None, f"per_class must be a non-negative integer, got {per_class!r}")
    prof = _profile(profile)
    shapes = prof.shapes if shapes is None else shapes
    if not shapes:
        raise FabsightError(None, "shapes is empty: give at least one (rows, cols) grid shape")
    geos = [geometry(check_shape(s)) for s in shapes]
    default = MIXED_COMBINATIONS if mixed else WM811K_CLASSES
    combos = [parse_pattern(c) for c in (default if classes is None else classes)]
    ranges = _check_params(combos, params, prof.params)
    noises = [_noise_range(noise, prof, names) for names in combos]
    rng = np.random.default_rng(seed)
    with threadpool_limits(1):  # BLAS threads only fight over the tiny products drawn here
        return _draw_dataset(combos, per_class, geos, rng, seed, noises, ranges)


def _draw_dataset(
    combos: list[tuple[str, ...]],
    per_class: int,
    geos: list[Geometry],
    rng: np.random.Generator,
    seed: int,
    noises: list[tuple[float, float]],
    params: Ranges,
) -> list[WaferMap]:
    """Plan batches (one class, one shape, bounded size) first, then draw them in order: the
    plan depends only on the seed, so the maps do too."""
    jobs: list[tuple[int, tuple[str, ...], Geometry, np.ndarray]] = []  # (class slot, patterns, shape, map slots)
    for k, names in enumerate(combos):
        shape_of = rng.integers(len(geos), size=per_class)
        for s, g in enumerate(geos):
            slots = np.flatnonzero(shape_of == s)
            step = max(1, _BATCH_CELLS // (g.shape[0] * g.shape[1]))
            jobs += [(k, names, g, slots[i : i + step]) for i in range(0, len(slots), step)]

    maps: list[WaferMap | None] = [None] * (len(combos) * per_class)
    for k, names, g, slots in track(jobs, "generating wafer maps"):
        grids, truths = _batch(names, g, len(slots), rng, noises[k], params)
        labels = labels_of(names)
        for slot, grid, truth in zip(slots.tolist(), grids, truths, strict=True):
            truth["seed"] = seed
            index = k * per_class + slot
            maps[index] = WaferMap(
                grid,
                lot_id=f"synth-{seed}",
                wafer_id=str(index),
                source="fabsight.synth",
                format="synthetic",
                labels=labels,
                extras=truth,
            )
    return cast(list[WaferMap], maps)  # every slot was filled by exactly one job
