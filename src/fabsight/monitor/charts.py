"""Attribute control charts for lots: p-charts (plain or Laney p′) and Western-Electric rules.

A p-chart plots each lot's proportion (failing dies, or wafers showing a pattern) against
limits ``p̄ ± 3·sqrt(p̄(1-p̄)/nᵢ)`` whose centre line ``p̄`` comes from baseline lots only,
so a drifting process cannot widen its own limits. Limits vary with each lot's size nᵢ.

Failing dies cluster (a scratch kills a row of neighbours), so die counts are
over-dispersed against the binomial and a plain p-chart on tens of thousands of dies per
lot alarms on nearly every lot. Laney's p′-chart (Laney 2002) fixes that: it measures
the lot-to-lot spread of the baseline z-scores with the average moving range,
``σz = MR̄ / 1.128``, and widens the binomial sigma by that factor. σz = 1 means the
data are binomial and p′ is the p-chart.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from fabsight.errors import FabsightError

ChartKind = Literal["p", "laney"]
#: d2 for moving ranges of two points: E[|x1 - x2|] = 1.128 σ.
_D2 = 1.128


@dataclass
class ControlChart:
    """One chart: per-lot values with their limits; arrays are aligned with ``lots``."""

    name: str
    kind: ChartKind
    lots: list[str]
    value: np.ndarray
    n: np.ndarray
    center: float
    ucl: np.ndarray
    lcl: np.ndarray
    z: np.ndarray  # (value - center) / sigma of the chart (Laney-widened for p′)
    sigma_z: float
    n_baseline: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "center": self.center,
            "sigma_z": self.sigma_z,
            "n_baseline": self.n_baseline,
            "points": [
                {"lot": lot, "value": float(v), "n": int(n), "lcl": float(lo), "ucl": float(hi), "z": float(z)}
                for lot, v, n, lo, hi, z in zip(self.lots, self.value, self.n, self.lcl, self.ucl, self.z, strict=True)
            ],
        }


def _z(value: np.ndarray, center: float, sigma: np.ndarray) -> np.ndarray:
    """Standardised distance; with zero sigma (p̄ = 0 or 1) any departure is infinitely far."""
    diff = value - center
    with np.errstate(divide="ignore", invalid="ignore"):
        far = np.where(diff == 0, 0.0, np.sign(diff) * np.inf)
        return np.where(sigma > 0, diff / np.where(sigma > 0, sigma, 1.0), far)


def p_chart(
    name: str,
    lots: list[str],
    counts: np.ndarray,
    sizes: np.ndarray,
    *,
    n_baseline: int,
    kind: ChartKind = "laney",
) -> ControlChart:
    """Chart of ``counts / sizes`` per lot with limits from the first ``n_baseline`` lots."""
    counts = np.asarray(counts, dtype=np.float64)
    sizes = np.asarray(sizes, dtype=np.float64)
    if not 1 <= n_baseline <= len(lots):
        raise FabsightError(None, f"baseline must be 1..{len(lots)} lots, got {n_baseline}")
    if kind == "laney" and n_baseline < 2:
        raise FabsightError(
            None, "--baseline: a Laney p′-chart needs at least 2 baseline lots (one moving range); use --chart p for 1"
        )
    if (sizes <= 0).any():
        raise FabsightError(None, f"{name}: every lot needs at least one die/wafer to chart")
    value = counts / sizes
    center = float(counts[:n_baseline].sum() / sizes[:n_baseline].sum())
    sigma = np.sqrt(center * (1 - center) / sizes)
    sigma_z = 1.0
    if kind == "laney":
        zb = _z(value[:n_baseline], center, sigma[:n_baseline])
        mr = np.abs(np.diff(zb))
        # Identical baseline lots (or a zero rate) give no spread estimate: stay binomial.
        if np.isfinite(mr).all() and mr.mean() > 0:
            sigma_z = float(mr.mean() / _D2)
    sigma = sigma * sigma_z
    return ControlChart(
        name=name,
        kind=kind,
        lots=list(lots),
        value=value,
        n=sizes.astype(np.int64),
        center=center,
        ucl=np.minimum(1.0, center + 3 * sigma),
        lcl=np.maximum(0.0, center - 3 * sigma),
        z=_z(value, center, sigma),
        sigma_z=sigma_z,
        n_baseline=n_baseline,
    )


def western_electric(z: np.ndarray) -> list[list[str]]:
    """Western-Electric rule violations per point (the point that completes the pattern).

    1: one point beyond 3σ; 2: two of three successive points beyond 2σ on one side;
    3: four of five successive points beyond 1σ on one side; 4: eight successive points
    on one side of the centre line. These catch sustained small shifts that a single
    3σ limit misses.
    """
    z = np.asarray(z, dtype=np.float64)
    hits: list[list[str]] = [[] for _ in z]
    rules = (
        (2, 3, 2.0, "rule 2: 2 of 3 beyond 2σ"),
        (4, 5, 1.0, "rule 3: 4 of 5 beyond 1σ"),
        (8, 8, 0.0, "rule 4: 8 in a row on one side"),
    )
    for i, zi in enumerate(z):
        if abs(zi) > 3:
            hits[i].append("rule 1: beyond 3σ")
        for need, window, level, label in rules:
            if i + 1 < window:
                continue
            w = z[i + 1 - window : i + 1]
            for side in (1.0, -1.0):
                if side * zi > level and np.count_nonzero(side * w > level) >= need:
                    hits[i].append(f"{label} ({'above' if side > 0 else 'below'})")
    return hits
