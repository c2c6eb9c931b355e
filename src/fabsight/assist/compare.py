"""Compare a wafer with a golden reference: one good map, or a baseline from many wafers.

The reference is a per-die fail probability. From ``n`` reference maps a die that failed
``k`` times gets the shrunken estimate ``(k + a·p̄) / (n + a)`` (a beta-binomial prior of
strength ``a = 2`` centred on the reference's overall fail rate ``p̄``), so one golden map
gives its good dies a small, non-zero fail probability instead of an impossible zero, and a
baseline of 25 wafers is trusted die by die.

Significance, at false-discovery rate ``alpha`` (5 %) with Benjamini–Hochberg:

* **per die**: a failing die's p-value is its reference fail probability (the chance it fails
  by the baseline alone); good dies have p = 1. With a single golden map no single die can be
  significant, which is honest: one map cannot tell a new fail from the random rate.
* **per region** (centre disc, then the middle and edge zones cut into 8 notch-relative
  sectors, and the three zones): observed fails against the expected ``Σ p`` with a Poisson
  upper-tail test. Regions are where one golden map still gives strong evidence.
* **overall**: the wafer's fail count against its expectation, the same test.

The "difference map" holds the dies failing here that fail on fewer than half of the reference
maps (raw frequency, so a die that failed on the one golden map is not "new"); its
facts (and the classifier, when a model is given) say what new pattern appeared.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fabsight.assist.explain import pct
from fabsight.assist.facts import SECTORS, WaferFacts, die_geometry, wafer_facts, zone_masks
from fabsight.errors import FabsightError
from fabsight.types import DieState, WaferMap

PRIOR = 2.0
ALPHA = 0.05


@dataclass
class Baseline:
    """Per-die reference fail probability (shrunken, for tests) and raw fail frequency (NaN off-wafer)."""

    fail_prob: np.ndarray
    fail_freq: np.ndarray
    n_wafers: int
    mean_rate: float
    source: str

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.fail_prob.shape[0]), int(self.fail_prob.shape[1]))


def build_baseline(maps: Sequence[WaferMap], *, prior: float = PRIOR, source: str = "") -> Baseline:
    """Shrunken per-die fail probability of the reference maps (see the module docstring)."""
    if not maps:
        raise FabsightError(source or None, "no golden maps to build a reference from")
    shapes = {m.shape for m in maps}
    if len(shapes) > 1:
        raise FabsightError(source or None, f"golden maps have different grid shapes {sorted(shapes)}; "
                            "a baseline needs one die grid")
    grids = np.stack([m.grid for m in maps])
    on = grids != DieState.OFF
    k = (grids == DieState.FAIL).sum(axis=0)
    n = on.sum(axis=0)
    rate = (k.sum() + 1.0) / (n.sum() + 2.0)
    prob = np.where(n > 0, (k + prior * rate) / np.maximum(n + prior, 1e-9), np.nan)
    freq = np.where(n > 0, k / np.maximum(n, 1), np.nan)
    return Baseline(prob, freq, len(maps), float(rate), source)


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """BH-adjusted q-values (monotone, capped at 1)."""
    p = np.asarray(p, dtype=float)
    if p.size == 0:
        return p
    order = np.argsort(p)
    ranked = p[order] * p.size / np.arange(1, p.size + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty_like(q)
    out[order] = np.minimum(q, 1.0)
    return out


@dataclass
class RegionTest:
    region: str
    dies: int
    observed: int
    expected: float
    p_value: float
    q_value: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return {"region": self.region, "dies": self.dies, "observed": self.observed,
                "expected": round(self.expected, 3), "ratio": round(self.observed / self.expected, 3)
                if self.expected > 0 else None, "p_value": float(f"{self.p_value:.3g}"),
                "q_value": float(f"{self.q_value:.3g}")}


@dataclass
class Comparison:
    """How one wafer differs from its reference."""

    wafer_id: str
    lot_id: str
    reference: dict[str, Any]
    observed: int
    expected: float
    p_value: float
    differs: bool
    new_fails: int
    recovered: int
    significant_dies: list[tuple[int, int]]
    regions: list[RegionTest]
    difference: WaferFacts
    sentences: list[str] = field(default_factory=list)
    vlm: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return " ".join(self.sentences)

    def to_dict(self) -> dict[str, Any]:
        d = {
            "wafer_id": self.wafer_id,
            "lot_id": self.lot_id,
            "summary": self.text,
            "reference": self.reference,
            "differs": self.differs,
            "observed_fails": self.observed,
            "expected_fails": round(self.expected, 3),
            "p_value": float(f"{self.p_value:.3g}"),
            "new_fails": self.new_fails,
            "recovered": self.recovered,
            "significant_dies": [list(rc) for rc in self.significant_dies],
            "regions": [r.to_dict() for r in self.regions],
            "significant_regions": [r.region for r in self.regions if r.q_value < ALPHA],
            "difference": self.difference.to_dict(),
        }
        if self.vlm is not None:
            d["vlm"] = self.vlm
        return d


def _poisson_upper(observed: int, expected: float) -> float:
    from scipy.stats import poisson

    if observed <= 0:
        return 1.0
    return float(poisson.sf(observed - 1, max(expected, 1e-12)))


def _regions(wmap: WaferMap) -> dict[str, np.ndarray]:
    """Centre disc, middle and edge zones by sector, and the three zones (masks over the grid)."""
    geo = die_geometry(wmap)
    zones = zone_masks(geo)
    ang = np.nan_to_num(geo.angle, nan=0.0)
    sector = ((ang + 22.5) % 360 // 45).astype(int)
    out = {"centre": zones["centre"]}
    for z in ("middle", "edge"):
        for i, name in enumerate(SECTORS):
            out[f"{z} {name}"] = zones[z] & (sector == i)
    out.update({f"{z} zone": m for z, m in zones.items()})
    return out


def _verdict(c: Comparison, what: str, sig: list[RegionTest]) -> str:
    """The first sentence: a difference is only stated as one when a test found it significant.

    The overall test is one-sided (excess fails), so a wafer with fewer fails than expected
    (p = 1) shows no significant difference in its count, even when one region has an excess.
    """
    counted = f"{c.observed} failing dies against {c.expected:.1f} expected (p = {c.p_value:.2g})"
    if c.p_value < ALPHA:
        return f"Wafer {c.wafer_id} differs from {what}: {counted}."
    if sig:
        return (f"Wafer {c.wafer_id} shows no significant difference from {what} in its fail count ({counted}), "
                f"but differs locally.")
    return f"Wafer {c.wafer_id} shows no significant difference from {what}: {counted}."


def _sentences(c: Comparison) -> list[str]:
    ref = c.reference
    what = "the golden map" if ref["wafers"] == 1 else f"a baseline of {ref['wafers']} wafers"
    significant = sorted((r for r in c.regions if r.q_value < ALPHA), key=lambda r: r.p_value)
    fine = sum(not r.region.endswith("zone") for r in c.regions)
    sig = [r for r in significant if not r.region.endswith("zone")] or significant  # zones when no sector stands out
    out = [_verdict(c, what, sig)]
    if sig:
        listing = "; ".join(f"{r.region} {r.observed} vs {r.expected:.1f} expected (q = {r.q_value:.2g})"
                            for r in sig[:4])
        if len(sig) > fine / 2:
            out.append(f"Excess fails cover most of the wafer ({len(sig)} of {fine} regions); strongest: {listing}.")
        else:
            out.append(f"Excess fails concentrate in {len(sig)} region{'s' if len(sig) > 1 else ''}: {listing}.")
    elif c.p_value < ALPHA:
        out.append("No single region stands out: the excess is spread over the wafer.")
    new = "die fails here that usually passes" if c.new_fails == 1 else "dies fail here that usually pass"
    back = "usually failing die passes" if c.recovered == 1 else "usually failing dies pass"
    sig_n = len(c.significant_dies)
    out.append(f"{c.new_fails} {new}, {c.recovered} {back}; {sig_n} {'die is' if sig_n == 1 else 'dies are'} "
               f"individually significant at FDR {pct(ALPHA)}.")
    d = c.difference
    if d.extent.clusters:
        where = d.location.location + (f", {d.location.sector} sector" if d.location.sector else "")
        shape = d.extent.cluster_shapes[0]
        label = (f"; the classifier reads it as {' + '.join(d.pattern.labels)} ({pct(d.pattern.probability or 0)})"
                 if d.pattern.status == "pattern" else "")
        out.append(f"The new fails form {d.extent.clusters} cluster{'s' if d.extent.clusters > 1 else ''} "
                   f"(largest {d.extent.cluster_sizes[0]} dies, {shape}-shaped, {where}){label}.")
    elif c.new_fails:
        out.append("The new fails are scattered: no new spatial pattern.")
    return out


def _check_shape(wmap: WaferMap, baseline: Baseline) -> None:
    if wmap.shape != baseline.shape:
        raise FabsightError(wmap.source or None, f"wafer {wmap.wafer_id or '?'} has a {wmap.shape[0]}x{wmap.shape[1]} "
                            f"die grid but the golden reference is {baseline.shape[0]}x{baseline.shape[1]}")


def difference_map(wmap: WaferMap, baseline: Baseline) -> WaferMap:
    """Dies failing here that usually pass on the reference as FAIL, other on-wafer dies GOOD."""
    _check_shape(wmap, baseline)
    on = (wmap.grid != DieState.OFF) & np.isfinite(baseline.fail_freq)
    new = on & (wmap.grid == DieState.FAIL) & (np.nan_to_num(baseline.fail_freq, nan=1.0) < 0.5)
    grid = np.where(on, np.where(new, DieState.FAIL, DieState.GOOD), DieState.OFF)
    return wmap.with_grid(grid.astype(np.uint8))


def compare_map(
    wmap: WaferMap,
    baseline: Baseline,
    *,
    alpha: float = ALPHA,
    difference_prediction: Mapping[str, Any] | None = None,
) -> Comparison:
    """Test ``wmap`` against the reference (see the module docstring)."""
    _check_shape(wmap, baseline)
    on = (wmap.grid != DieState.OFF) & np.isfinite(baseline.fail_prob)
    p = np.where(on, np.nan_to_num(baseline.fail_prob, nan=0.0), 0.0)
    fail = on & (wmap.grid == DieState.FAIL)
    observed, expected = int(fail.sum()), float(p.sum())
    p_die = np.where(fail, p, 1.0)[on]
    q_die = benjamini_hochberg(p_die)
    rc = np.argwhere(on)
    significant = [(int(r), int(c)) for (r, c), q in zip(rc, q_die, strict=True) if q < alpha]
    tests = []
    for name, mask in _regions(wmap).items():
        m = mask & on
        if m.any():
            k, lam = int((fail & m).sum()), float(p[m].sum())
            tests.append(RegionTest(name, int(m.sum()), k, lam, _poisson_upper(k, lam)))
    for t, q in zip(tests, benjamini_hochberg(np.array([t.p_value for t in tests])), strict=True):
        t.q_value = float(q)
    overall = _poisson_upper(observed, expected)
    diff = difference_map(wmap, baseline)
    result = Comparison(
        wafer_id=str(wmap.wafer_id),
        lot_id=str(wmap.lot_id),
        reference={"source": baseline.source, "wafers": baseline.n_wafers, "mean_fail_rate": round(baseline.mean_rate,
                                                                                                   5)},
        observed=observed,
        expected=expected,
        p_value=overall,
        differs=overall < alpha or any(t.q_value < alpha for t in tests),
        new_fails=diff.n_fail,
        recovered=int((on & (wmap.grid == DieState.GOOD) & (np.nan_to_num(baseline.fail_freq) >= 0.5)).sum()),
        significant_dies=significant,
        regions=tests,
        difference=wafer_facts(diff, difference_prediction),
    )
    result.sentences = _sentences(result)
    return result
