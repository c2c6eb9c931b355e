"""Generated lots with known yield impact: paired inspection + sort wafers with planted kill
probabilities, and wafer histories with a planted tool effect.

They are what the kill-ratio and commonality tests and ``benchmarks/analytics_impact.py``
measure against: the answers are planted, so an estimate can be checked, not just run.

Paired lot model: every on-wafer die gets, with probability ``defect_die_rate``, one defect
event of a class drawn from ``class_share`` (1 + Poisson(1) defects of that class, sizes
log-normal around 2 µm). A die fails at sort when an independent baseline cause strikes
(``baseline_fail``) or its defect event kills it (``kill[class]``). So for class ``c`` the
fail rate of dies with the defect is ``b + k_c (1 − b)``: the kill ratio (minus the clean
fail rate ``b``) is ``k_c (1 − b)`` and the normalised kill probability is ``k_c``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from fabsight.synth.geometry import wafer_mask
from fabsight.types import BinDefinition, DefectList, DieState, WaferMap

#: Sort bins of generated wafers: 1 passes, the others are fail bins.
SORT_BINS: dict[int, BinDefinition] = {
    1: BinDefinition(1, True, "PASS"),
    5: BinDefinition(5, False, "LEAKAGE"),
    7: BinDefinition(7, False, "FUNCTIONAL"),
}
_PITCH_UM = 5000.0


@dataclass(frozen=True)
class PairedLot:
    """Inspection (KLARF-like) and sort maps of the same wafers, with the planted truth."""

    inspection: list[WaferMap]
    sort: list[WaferMap]
    kill: dict[int, float]
    baseline_fail: float

    def kill_ratio(self, cls: int) -> float:
        """The planted kill ratio of ``cls``: fail rate with it minus the clean fail rate."""
        return self.kill[cls] * (1 - self.baseline_fail)


def _indices(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """KLARF-style die indices per column / row: centred, Y growing up."""
    rows, cols = shape
    return np.arange(cols) - cols // 2, np.arange(rows - 1, -1, -1) - rows // 2


def _defects(rng: np.random.Generator, x: np.ndarray, y: np.ndarray, cls: np.ndarray) -> DefectList:
    """1 + Poisson(1) defects of the die's class on each defect die, at random in-die positions."""
    per_die = 1 + rng.poisson(1.0, x.size)
    xi, yi, cn = np.repeat(x, per_die), np.repeat(y, per_die), np.repeat(cls, per_die)
    n = int(per_die.sum())
    nan = np.full(n, np.nan)
    return DefectList(
        defect_id=np.arange(1, n + 1),
        x=nan,
        y=nan.copy(),
        xrel=rng.uniform(0, _PITCH_UM, n),
        yrel=rng.uniform(0, _PITCH_UM, n),
        xindex=xi.astype(np.int64),
        yindex=yi.astype(np.int64),
        size=np.round(rng.lognormal(np.log(2.0), 0.9, n), 3),
        class_number=cn.astype(np.int64),
    )


def paired_lot(
    rng: np.random.Generator,
    *,
    n_wafers: int = 10,
    shape: tuple[int, int] = (40, 40),
    kill: Mapping[int, float] | None = None,
    class_share: Mapping[int, float] | None = None,
    class_names: Mapping[int, str] | None = None,
    defect_die_rate: float = 0.3,
    baseline_fail: float = 0.08,
    lot_id: str = "SIM01",
    sort_flip_y: bool = True,
    sort_offset: tuple[int, int] = (0, 0),
) -> PairedLot:
    """A lot of paired wafers (see the module docstring).

    The sort maps number their dies as ``sort_x = x + dx``, ``sort_y = (−y if sort_flip_y) + dy``
    from the inspection indices, as a tester with Y growing down would; their wafer ids carry
    the lot prefix (``SIM01-03``) as STDF files often do.
    """
    kill = dict(kill or {1: 0.9, 2: 0.5, 3: 0.1})
    share = dict(class_share or dict.fromkeys(kill, 1.0))
    classes = np.array(list(share), np.int64)
    probs = np.array([share[c] for c in classes], float)
    kill_of = np.array([kill[c] for c in classes], float)
    names = dict(class_names or {c: f"CLASS{c}" for c in classes.tolist()})
    mask = wafer_mask(shape)
    xs, ys = _indices(shape)
    t0 = datetime(2026, 1, 5, 8, 0)
    inspection, sort = [], []
    for w in range(1, n_wafers + 1):
        rows, cols = np.nonzero(mask)
        has = rng.random(rows.size) < defect_die_rate
        pick = rng.choice(classes.size, size=rows.size, p=probs / probs.sum())
        fails = (rng.random(rows.size) < baseline_fail) | (has & (rng.random(rows.size) < kill_of[pick]))
        insp = np.where(mask, DieState.GOOD, DieState.OFF).astype(np.uint8)
        insp[rows[has], cols[has]] = DieState.FAIL
        defects = _defects(rng, xs[cols[has]], ys[rows[has]], classes[pick[has]])
        stamp = t0 + timedelta(hours=w)
        inspection.append(WaferMap(
            grid=insp, lot_id=lot_id, wafer_id=f"{w:02d}", format="klarf", die_pitch=(_PITCH_UM, _PITCH_UM),
            x_index=xs, y_index=ys, defects=defects, timestamp=stamp,
            extras={"class_names": names, "step_id": "M1_CMP"},
        ))
        grid = np.where(mask, DieState.GOOD, DieState.OFF).astype(np.uint8)
        grid[rows[fails], cols[fails]] = DieState.FAIL
        bins = np.where(mask, 1, -1).astype(np.int32)
        bins[rows[fails], cols[fails]] = rng.choice([5, 7], size=int(fails.sum()))
        sx = xs + sort_offset[0]
        sy = (-ys if sort_flip_y else ys) + sort_offset[1]
        sort.append(WaferMap(
            grid=grid, lot_id=lot_id, wafer_id=f"{lot_id}-{w:02d}", format="stdf",
            die_pitch=(_PITCH_UM, _PITCH_UM), x_index=sx, y_index=sy, bins=bins,
            bin_definitions=dict(SORT_BINS), timestamp=stamp + timedelta(days=20),
        ))
    return PairedLot(inspection, sort, kill, baseline_fail)


@dataclass(frozen=True)
class History:
    """Wafer history rows (lot, wafer, step, tool, chamber, slot, time) and the flagged wafers."""

    rows: list[dict[str, str]]
    flagged: set[tuple[str, str]]
    wafers: list[tuple[str, str]]


def planted_history(
    rng: np.random.Generator,
    *,
    lots: Sequence[str] = ("L01", "L02", "L03", "L04"),
    wafers_per_lot: int = 25,
    steps: Mapping[str, Sequence[str]] | None = None,
    effect: tuple[str, str] | None = ("ETCH", "ETCH02"),
    rate_with: float = 0.6,
    rate_without: float = 0.1,
) -> History:
    """Histories where wafers through ``effect`` (step, tool) are flagged with ``rate_with``,
    others with ``rate_without``; ``effect=None`` gives a history independent of the flags.

    Each wafer goes through every step on a tool drawn at random, in chamber A or B, in its
    slot (its wafer number); step times run one wafer after another from a start date.
    """
    steps = dict(steps or {"LITHO": ["LITHO01", "LITHO02", "LITHO03"], "ETCH": ["ETCH01", "ETCH02", "ETCH03"],
                           "CMP": ["CMP01", "CMP02"], "IMPLANT": ["IMP01", "IMP02", "IMP03", "IMP04"]})
    rows: list[dict[str, str]] = []
    flagged: set[tuple[str, str]] = set()
    keys: list[tuple[str, str]] = []
    start = datetime(2026, 1, 5, 8, 0)
    for li, lot in enumerate(lots):
        for w in range(1, wafers_per_lot + 1):
            key = (lot, f"{w:02d}")
            keys.append(key)
            hit = False
            for si, (step, tools) in enumerate(steps.items()):
                tool = str(tools[rng.integers(len(tools))])
                hit |= effect is not None and (step, tool) == tuple(effect)
                when = start + timedelta(days=li, hours=si * 4, minutes=w * 5)
                rows.append({"lot": lot, "wafer": key[1], "step": step, "tool": tool,
                             "chamber": "AB"[int(rng.integers(2))], "slot": str(w),
                             "time": when.isoformat(timespec="minutes")})
            if rng.random() < (rate_with if hit else rate_without):
                flagged.add(key)
    return History(rows, flagged, keys)
