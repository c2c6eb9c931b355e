"""Pairing inline inspection (KLARF) with sort results (STDF, G85) of the same wafers.

Wafers are matched by lot id and wafer id. Ids are compared without case and surrounding
spaces; a wafer id that starts with its lot id (``GAL-LOT-02`` in lot ``GAL-LOT``) is taken
without that prefix, and numeric ids compare as numbers (``02`` = ``2``). An empty lot id (a
G85 map without ``LotId``) matches any lot, by wafer id alone.

Die indices: inspection tools and testers number dies differently (KLARF's Y grows up, most
testers' Y grows down; origins differ). :class:`Alignment` maps an inspection die index onto
the sort die index: first the flips, then the offset::

    sort_x = (-x if flip_x else x) + dx
    sort_y = (-y if flip_y else y) + dy

A pairing that leaves most defect dies off the tested dies, or most tested dies outside the
inspected wafer, is refused with the alignment that would fit best, so a user never gets kill
ratios from misaligned grids.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product

import numpy as np

from fabsight.errors import FabsightError
from fabsight.types import DieState, WaferMap

#: Below this fraction of defect dies on tested dies (or of tested dies inside the inspected
#: wafer) the grids are taken as not aligned.
MIN_OVERLAP = 0.5


@dataclass(frozen=True)
class Alignment:
    """How an inspection die index becomes a sort die index (flips first, then the offset)."""

    dx: int = 0
    dy: int = 0
    flip_x: bool = False
    flip_y: bool = False

    def apply(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sort-side die indices of inspection die indices ``x``, ``y``."""
        x = np.asarray(x, np.int64)
        y = np.asarray(y, np.int64)
        return (-x if self.flip_x else x) + self.dx, (-y if self.flip_y else y) + self.dy

    def options(self) -> str:
        """The CLI options that give this alignment (``--offset DX,DY --flip y``)."""
        flips = "".join(a for a, on in (("x", self.flip_x), ("y", self.flip_y)) if on)
        return f"--offset {self.dx},{self.dy}" + (f" --flip {flips}" if flips else "")

    @classmethod
    def parse(cls, offset: str | None = None, flip: str | None = None) -> Alignment:
        """An alignment from the CLI's ``--offset DX,DY`` and ``--flip x|y|xy`` texts."""
        dx = dy = 0
        if offset:
            parts = offset.replace(" ", "").split(",")
            if len(parts) != 2 or not all(re.fullmatch(r"[+-]?\d+", p) for p in parts):
                raise FabsightError(None, f"--offset {offset!r}: expected two integers DX,DY (e.g. 0,-3)")
            dx, dy = int(parts[0]), int(parts[1])
        flip = (flip or "").lower()
        if flip and (set(flip) - {"x", "y"} or len(set(flip)) != len(flip)):
            raise FabsightError(None, f"--flip {flip!r}: expected x, y or xy")
        return cls(dx, dy, "x" in flip, "y" in flip)


@dataclass
class WaferPair:
    """The inspection and sort maps of one wafer."""

    lot_id: str
    wafer_id: str
    inspection: WaferMap
    sort: WaferMap


@dataclass
class Pairing:
    """Matched wafers, and those found on one side only (``lot/wafer`` names)."""

    pairs: list[WaferPair]
    inspection_only: list[str]
    sort_only: list[str]


def on_wafer_dies(wmap: WaferMap) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """File die indices ``x``, ``y`` of every on-wafer die and whether it fails."""
    rows, cols = np.nonzero(wmap.grid != DieState.OFF)
    n_rows, n_cols = wmap.shape
    xs = np.arange(n_cols, dtype=np.int64) if wmap.x_index is None else np.asarray(wmap.x_index, np.int64)
    ys = np.arange(n_rows, dtype=np.int64) if wmap.y_index is None else np.asarray(wmap.y_index, np.int64)
    return xs[cols], ys[rows], wmap.grid[rows, cols] == DieState.FAIL


def die_keys(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """One int64 key per die index pair, for set operations on dies."""
    return (np.asarray(x, np.int64) << 32) + (np.asarray(y, np.int64) & 0xFFFFFFFF)


def _norm_lot(lot: str) -> str:
    return lot.strip().casefold()


def _norm_wafer(lot: str, wafer: str) -> str:
    """The comparable form of a wafer id (see the module docstring)."""
    return wafer_key(lot, wafer)[1]


def wafer_key(lot: str, wafer: str) -> tuple[str, str]:
    """The comparable ``(lot, wafer)`` of a wafer: how every analytics module matches wafers
    across files (see the module docstring)."""
    w, lo = wafer.strip().casefold(), _norm_lot(lot)
    if lo and w.startswith(lo) and len(w) > len(lo):
        w = w[len(lo):].lstrip("-_.#/ ") or w
    return lo, str(int(w)) if w.isdigit() else w


def _name(m: WaferMap) -> str:
    return f"{m.lot_id}/{m.wafer_id}"


def _check_lots(inspection: Sequence[WaferMap], sort: Sequence[WaferMap]) -> None:
    """Refuse sort and inspection files that share no lot (empty lot ids match any)."""
    lots_i = {_norm_lot(m.lot_id) for m in inspection}
    lots_s = {_norm_lot(m.lot_id) for m in sort}
    if "" in lots_i or "" in lots_s or lots_i & lots_s:
        return
    shown_i = ", ".join(sorted({m.lot_id for m in inspection}))
    shown_s = ", ".join(sorted({m.lot_id for m in sort}))
    raise FabsightError(
        sort[0].source or None,
        f"sort lot {shown_s} is not the inspection lot {shown_i} (of {inspection[0].source}): "
        "sort and inspection files of different lots",
    )


def pair_wafers(inspection: Sequence[WaferMap], sort: Sequence[WaferMap]) -> Pairing:
    """Match inspection and sort maps by lot and wafer id (see the module docstring)."""
    if not inspection or not sort:
        raise FabsightError(None, "kill ratios need both inspection (KLARF) and sort (STDF/G85) wafers")
    _check_lots(inspection, sort)
    by_wafer: dict[str, list[WaferMap]] = {}
    for s in sort:
        by_wafer.setdefault(_norm_wafer(s.lot_id, s.wafer_id), []).append(s)
    pairs: list[WaferPair] = []
    used: set[int] = set()
    inspection_only: list[str] = []
    for m in inspection:
        lot = _norm_lot(m.lot_id)
        match = next(
            (s for s in by_wafer.get(_norm_wafer(m.lot_id, m.wafer_id), [])
             if id(s) not in used and (not lot or not _norm_lot(s.lot_id) or _norm_lot(s.lot_id) == lot)),
            None,
        )
        if match is None:
            inspection_only.append(_name(m))
            continue
        used.add(id(match))
        pairs.append(WaferPair(m.lot_id or match.lot_id, m.wafer_id, m, match))
    sort_only = [_name(s) for s in sort if id(s) not in used]
    if not pairs:
        raise FabsightError(
            sort[0].source or None,
            f"no wafer is in both the inspection and the sort files (inspection: "
            f"{', '.join(inspection_only[:8])}; sort: {', '.join(sort_only[:8])})",
        )
    return Pairing(pairs, inspection_only, sort_only)


@dataclass
class Overlap:
    """How well an alignment puts one wafer's inspection dies on its sort dies."""

    defect_dies: int
    defect_dies_tested: int
    tested_dies: int
    tested_dies_inspected: int

    @property
    def landed(self) -> float:
        """Fraction of defect dies that fall on a tested die (1 without defects)."""
        return self.defect_dies_tested / self.defect_dies if self.defect_dies else 1.0

    @property
    def covered(self) -> float:
        """Fraction of tested dies inside the inspected wafer."""
        return self.tested_dies_inspected / self.tested_dies if self.tested_dies else 0.0

    @property
    def score(self) -> float:
        return min(self.landed, self.covered)


def defect_dies(wmap: WaferMap) -> tuple[np.ndarray, np.ndarray]:
    """Unique die indices holding at least one defect of an inspection map."""
    d = wmap.defects
    if d is None or not len(d):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    keys = np.unique(np.stack([d.xindex.astype(np.int64), d.yindex.astype(np.int64)], 1), axis=0)
    return keys[:, 0], keys[:, 1]


def overlap(pair: WaferPair, alignment: Alignment) -> Overlap:
    """Defect dies on tested dies and tested dies inside the inspection wafer, under ``alignment``."""
    sx, sy, _ = on_wafer_dies(pair.sort)
    tested = die_keys(sx, sy)
    ix, iy, _ = on_wafer_dies(pair.inspection)
    inspected = die_keys(*alignment.apply(ix, iy))
    dx, dy = defect_dies(pair.inspection)
    defects = die_keys(*alignment.apply(dx, dy))
    return Overlap(
        defect_dies=int(defects.size),
        defect_dies_tested=int(np.isin(defects, tested).sum()),
        tested_dies=int(tested.size),
        tested_dies_inspected=int(np.isin(tested, inspected).sum()),
    )


def _per_flip(pair: WaferPair) -> list[tuple[Alignment, Overlap]]:
    """For each of the four flips, the offset that puts the die grids best on each other.

    The offset matching the centres of the two grids is tried, with one die either way; the
    best by :attr:`Overlap.score` is kept.
    """
    ix, iy, _ = on_wafer_dies(pair.inspection)
    sx, sy, _ = on_wafer_dies(pair.sort)
    out = []
    for fx, fy in product((False, True), repeat=2):
        tx, ty = Alignment(0, 0, fx, fy).apply(ix, iy)
        cx = round((sx.min() + sx.max() - tx.min() - tx.max()) / 2)
        cy = round((sy.min() + sy.max() - ty.min() - ty.max()) / 2)
        tried = [Alignment(int(cx + ox), int(cy + oy), fx, fy) for ox, oy in product((-1, 0, 1), repeat=2)]
        scored = [(a, overlap(pair, a)) for a in tried]
        out.append(max(scored, key=lambda t: t[1].score))
    return out


def best_alignment(pair: WaferPair) -> tuple[Alignment, Overlap]:
    """The flip and offset that put the inspection wafer best on the sort wafer.

    Die overlap decides first; a round wafer fits itself under every flip, so among equal
    fits the one where defect dies fail most often (:func:`association`) wins.
    """
    candidates = _per_flip(pair)
    top = max(o.score for _, o in candidates)
    return max((c for c in candidates if c[1].score >= top), key=lambda c: association([pair], c[0]).excess)


@dataclass
class Association:
    """Fail counts of dies with and without defects under one alignment, pooled over wafers."""

    failing_with: int = 0
    dies_with: int = 0
    failing_without: int = 0
    dies_without: int = 0

    @property
    def excess(self) -> float:
        """Fail rate of defect dies minus that of the other dies (0 without either)."""
        if not self.dies_with or not self.dies_without:
            return 0.0
        return self.failing_with / self.dies_with - self.failing_without / self.dies_without

    @property
    def stderr(self) -> float:
        """Standard error of :attr:`excess` under "defects and fails are unrelated"."""
        n1, n2 = self.dies_with, self.dies_without
        if not n1 or not n2:
            return float("inf")
        p = (self.failing_with + self.failing_without) / (n1 + n2)
        return float(np.sqrt(max(p * (1 - p), 1e-12) * (1 / n1 + 1 / n2)))


def association(pairs: Sequence[WaferPair], alignment: Alignment) -> Association:
    """How much more often defect dies fail than other tested dies, under ``alignment``."""
    a = Association()
    for pair in pairs:
        sx, sy, failed = on_wafer_dies(pair.sort)
        dx, dy = defect_dies(pair.inspection)
        hit = np.isin(die_keys(sx, sy), die_keys(*alignment.apply(dx, dy)))
        a.failing_with += int(failed[hit].sum())
        a.dies_with += int(hit.sum())
        a.failing_without += int(failed[~hit].sum())
        a.dies_without += int((~hit).sum())
    return a


def flip_warning(pairs: Sequence[WaferPair], alignment: Alignment, z: float = 4.0) -> str | None:
    """A warning when another flip fits the die grids as well and ties defects to fails far
    better (by ``z`` standard errors): on round wafers a wrong flip still overlaps, so only
    the defect–fail association can catch it. None when ``alignment`` is the best."""
    if not pairs:
        return None
    mine = association(pairs, alignment)
    fit = overlap(pairs[0], alignment).score
    rivals = [a for a, o in _per_flip(pairs[0]) if o.score >= fit and a != alignment]
    if not rivals:
        return None
    best = max(rivals, key=lambda a: association(pairs, a).excess)
    theirs = association(pairs, best)
    if theirs.excess - mine.excess <= z * max(mine.stderr, theirs.stderr):
        return None
    return (
        f"{best.options()} fits the die grids as well and defect dies then fail {theirs.excess:+.1%} more often "
        f"than other dies, against {mine.excess:+.1%} with {alignment.options()}: check the die index directions"
    )


def check_alignment(pair: WaferPair, alignment: Alignment) -> Overlap:
    """The overlap of ``pair`` under ``alignment``; refused when the grids do not line up."""
    o = overlap(pair, alignment)
    if o.landed >= MIN_OVERLAP and o.covered >= MIN_OVERLAP:
        return o
    hint, fit = best_alignment(pair)
    advice = (
        f"; {hint.options()} fits best ({fit.landed:.0%} of defect dies tested, {fit.covered:.0%} of tested dies "
        "inspected)" if fit.score >= MIN_OVERLAP and hint != alignment else ""
    )
    raise FabsightError(
        pair.sort.source or None,
        f"die grids of wafer {pair.lot_id}/{pair.wafer_id} cannot be aligned with {alignment.options()}: "
        f"{o.defect_dies_tested} of {o.defect_dies} defect dies fall on tested dies and "
        f"{o.tested_dies_inspected} of {o.tested_dies} tested dies on the inspected wafer "
        f"({pair.inspection.source}){advice}",
    )
