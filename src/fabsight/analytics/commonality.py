"""Commonality: which tool, chamber, slot or time window the flagged wafers share.

Inputs are per-wafer results (fabsight's ``wafer predict --json`` output, or any CSV / JSON
records with a lot, a wafer and a pattern label, a yield or defect classes) and a wafer
history CSV (one row per wafer and process step: lot, wafer, step, tool, chamber, slot,
time; the user names the columns). Wafers are flagged by one rule (a pattern, a yield below
a threshold, or a defect class) and compared with the other wafers of the results.

For every step and factor (tool; chamber as ``tool/chamber``; slot; time window) and every
level of it, a one-sided Fisher exact test asks whether flagged wafers went through that
level more often than the others (2×2 table: flagged / not flagged × at the level / at
another level of the same step). Each multi-level factor also gets a chi-square test of
independence (levels × flagged). p-values are corrected across all Fisher tests (and across
all chi-square tests) with Benjamini–Hochberg (``bh``, false-discovery rate) or Holm
(``holm``, family-wise error); findings are ranked by corrected p-value.

Rules worth knowing: a wafer seen more than once at a step (rework) counts at its last row;
a factor with the same level for every wafer at several steps (a slot kept through the flow)
is tested once, under the names of all those steps;
time windows split each step's wafers into ``time_windows`` groups of equal size by time;
wafers of the results that are not in the history are listed, not tested.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from fabsight.analytics.align import wafer_key
from fabsight.errors import FabsightError

WaferKey = tuple[str, str]
#: History fields, in the order their CLI options come; lot and wafer are required.
HISTORY_FIELDS = ("lot", "wafer", "step", "tool", "chamber", "slot", "time")
_FACTORS = ("tool", "chamber", "slot", "time")
#: Results record fields fabsight writes (``wafer predict --json``, ``info --json``) and their plain aliases.
_RESULT_ALIASES = {
    "lot": ("lot_id", "lot", "LotID"),
    "wafer": ("wafer_id", "wafer", "WaferID"),
    "label": ("label", "pattern", "failureType"),
    "yield": ("yield", "yield_", "sort_yield"),
    "classes": ("defect_classes", "defect_class", "classes", "class"),
}


@dataclass
class WaferResult:
    """One wafer of the results: its pattern label, yield and defect classes (when given)."""

    lot: str
    wafer: str
    label: str = ""
    yield_: float | None = None
    classes: frozenset[str] = frozenset()

    @property
    def key(self) -> WaferKey:
        return wafer_key(self.lot, self.wafer)


@dataclass(frozen=True)
class Flag:
    """Which wafers are flagged: exactly one of a pattern, a yield threshold or a defect class."""

    pattern: str | None = None
    yield_below: float | None = None
    defect_class: str | None = None

    def __post_init__(self) -> None:
        given = [v for v in (self.pattern, self.yield_below, self.defect_class) if v is not None]
        if len(given) != 1:
            raise FabsightError(None, "flag wafers by exactly one of --pattern, --yield-below, --defect-class")

    def describe(self) -> str:
        if self.pattern is not None:
            return f"pattern {self.pattern}"
        if self.yield_below is not None:
            return f"yield below {self.yield_below:g}"
        return f"defect class {self.defect_class}"

    def flags(self, r: WaferResult) -> bool:
        """Whether result ``r`` is flagged (a multi-label ``A+B`` carries both patterns)."""
        if self.pattern is not None:
            return self.pattern.casefold() in {p.strip().casefold() for p in r.label.split("+")}
        if self.yield_below is not None:
            return r.yield_ is not None and r.yield_ < self.yield_below
        return str(self.defect_class).casefold() in {c.casefold() for c in r.classes}


@dataclass
class HistoryRow:
    """One wafer at one step."""

    lot: str
    wafer: str
    step: str
    values: dict[str, str]
    time: datetime | None = None

    @property
    def key(self) -> WaferKey:
        return wafer_key(self.lot, self.wafer)


# ----------------------------------------------------------------------------- reading


def _pick(record: Mapping[str, Any], field_name: str) -> Any:
    for alias in _RESULT_ALIASES[field_name]:
        if alias in record and record[alias] not in (None, ""):
            return record[alias]
    return None


def _result(path: Path, i: int, record: Any) -> WaferResult:
    if not isinstance(record, Mapping):
        raise FabsightError(path, f"record {i + 1} is not an object with lot and wafer fields")
    lot, wafer = _pick(record, "lot"), _pick(record, "wafer")
    if lot is None and wafer is None:
        raise FabsightError(path, f"record {i + 1} has no lot_id/lot nor wafer_id/wafer field")
    y = _pick(record, "yield")
    try:
        y = None if y is None else float(y)
    except (TypeError, ValueError):
        raise FabsightError(path, f"record {i + 1}: yield {str(y)[:40]!r} is not a number") from None
    classes = _pick(record, "classes")
    if isinstance(classes, str):
        classes = [c for c in classes.replace(";", " ").replace(",", " ").split() if c]
    return WaferResult(
        lot=str(lot or ""), wafer=str(wafer or ""), label=str(_pick(record, "label") or ""), yield_=y,
        classes=frozenset(str(c) for c in (classes or [])),
    )


def _open_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise FabsightError(path, "no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise FabsightError(path, f"cannot be read as text ({exc})") from None


def read_results(path: str | Path) -> list[WaferResult]:
    """Per-wafer results from ``wafer predict --json`` output, a JSON list of records or a CSV."""
    path = Path(path)
    text = _open_text(path)
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise FabsightError(path, f"broken JSON ({exc})") from None
        records = data.get("results") if isinstance(data, dict) else data
        if not isinstance(records, list):
            raise FabsightError(path, "JSON without a list of wafer records (or a 'results' list)")
    else:
        records = list(csv.DictReader(text.splitlines()))
    out = [_result(path, i, r) for i, r in enumerate(records)]
    if not out:
        raise FabsightError(path, "no wafer records")
    return out


def _time(path: Path, line: int, text: str) -> datetime | None:
    if not text.strip():
        return None
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        raise FabsightError(
            path, f"line {line}: time {text[:40]!r} is not an ISO date/time (2026-01-05T08:30)"
        ) from None


def _history_columns(path: Path, header: Sequence[str], columns: Mapping[str, str | None],
                     explicit: Iterable[str]) -> dict[str, str]:
    """The CSV column of each history field; a required or user-named column that is absent is an error."""
    have = set(header)
    found: dict[str, str] = {}
    for name in HISTORY_FIELDS:
        col = columns.get(name) or name
        if col in have:
            found[name] = col
        elif name in ("lot", "wafer") or name in explicit:
            option = f"--{name}-col"
            raise FabsightError(
                path, f"no column {col!r} for {name} (columns: {', '.join(header) or 'none'}); name it with {option}"
            )
    if not any(f in found for f in _FACTORS):
        raise FabsightError(path, f"none of the factor columns {', '.join(columns.get(f) or f for f in _FACTORS)} "
                            f"is in the history (columns: {', '.join(header)})")
    return found


def read_history(
    path: str | Path, columns: Mapping[str, str | None] | None = None, explicit: Iterable[str] = ()
) -> list[HistoryRow]:
    """Wafer history rows from a CSV; ``columns`` maps a field (lot, wafer, step, tool, chamber,
    slot, time) to the user's column name, ``explicit`` lists the fields the user named (those
    must exist; default-named optional columns may be absent)."""
    path = Path(path)
    reader = csv.DictReader(_open_text(path).splitlines())
    found = _history_columns(path, reader.fieldnames or [], columns or {}, set(explicit))
    rows: list[HistoryRow] = []
    for line, rec in enumerate(reader, start=2):
        values = {f: (rec.get(found[f]) or "").strip() for f in _FACTORS if f in found and f != "time"}
        rows.append(HistoryRow(
            lot=(rec.get(found["lot"]) or "").strip(),
            wafer=(rec.get(found["wafer"]) or "").strip(),
            step=(rec.get(found["step"]) or "").strip() if "step" in found else "",
            values=values,
            time=_time(path, line, rec.get(found["time"]) or "") if "time" in found else None,
        ))
    if not rows:
        raise FabsightError(path, "the history has no rows")
    return rows


# ----------------------------------------------------------------------------- tests


@dataclass
class Finding:
    """One level of one factor at one step, tested against the other levels of that step."""

    step: str
    factor: str
    level: str
    flagged_at: int
    wafers_at: int
    flagged_elsewhere: int
    wafers_elsewhere: int
    odds_ratio: float
    p_value: float
    q_value: float = 1.0

    def sentence(self) -> str:
        """The finding in words, with its numbers (what ``ask`` and the CLI print)."""
        where = f"{self.factor} {self.level}" + (f" at {self.step}" if self.step else "")
        return (
            f"{self.flagged_at} of {self.wafers_at} wafers through {where} are flagged, against "
            f"{self.flagged_elsewhere} of {self.wafers_elsewhere} elsewhere "
            f"(Fisher p = {self.p_value:.2g}, corrected {self.q_value:.2g})"
        )


@dataclass
class FactorTest:
    """Chi-square test of independence of one multi-level factor at one step and the flag."""

    step: str
    factor: str
    levels: int
    wafers: int
    chi2: float
    dof: int
    p_value: float
    q_value: float = 1.0


@dataclass
class CommonalityReport:
    """Ranked findings of one commonality run (see the module docstring)."""

    criterion: str
    correction: str
    wafers: int
    flagged: int
    findings: list[Finding]
    factors: list[FactorTest]
    not_in_history: list[str] = field(default_factory=list)

    def significant(self, alpha: float = 0.05) -> list[Finding]:
        """Findings whose corrected p-value is below ``alpha`` (ranked)."""
        return [f for f in self.findings if f.q_value < alpha]

    def answer(self, factor: str | None = None, alpha: float = 0.05) -> str:
        """One grounded sentence: the strongest shared level (of ``factor``, e.g. ``tool``), or
        that none stands out, for ``ask`` ("which tool do the edge-ring wafers share?")."""
        pool = [f for f in self.findings if factor is None or f.factor == factor]
        base = f"{self.flagged} of {self.wafers} wafers have {self.criterion}"
        hits = [f for f in pool if f.q_value < alpha]
        if hits:
            return f"{base}; {hits[0].sentence()}."
        what = f"{factor} " if factor else ""
        best = f" (strongest: {pool[0].sentence()})" if pool else ""
        return f"{base}; no {what}level is shared more than chance at {alpha:g} after correction{best}."

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def holm(p: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (monotone, capped at 1)."""
    p = np.asarray(p, float)
    if p.size == 0:
        return p
    order = np.argsort(p)
    adj = np.maximum.accumulate(p[order] * (p.size - np.arange(p.size)))
    out = np.empty_like(adj)
    out[order] = np.minimum(adj, 1.0)
    return out


def correct(p: Sequence[float], method: str) -> np.ndarray:
    """Multiple-test corrected p-values: ``bh`` (Benjamini–Hochberg) or ``holm``."""
    from scipy.stats import false_discovery_control

    if method not in ("bh", "holm"):
        raise FabsightError(None, f"--correction {method!r}: expected bh or holm")
    arr = np.asarray(p, float)
    if arr.size == 0:
        return arr
    if method == "bh":
        return np.minimum(false_discovery_control(arr, method="bh"), 1.0)
    return holm(arr)


def _levels(rows: Sequence[HistoryRow], universe: set[WaferKey], time_windows: int) -> dict[tuple[str, str], dict]:
    """``(step, factor)`` → {wafer key: level}, the last row of a wafer at a step winning."""
    last: dict[tuple[str, WaferKey], HistoryRow] = {}
    for r in rows:
        if r.key in universe:
            last[(r.step, r.key)] = r
    out: dict[tuple[str, str], dict[WaferKey, str]] = {}
    for (step, key), r in last.items():
        tool = r.values.get("tool", "")
        for factor, value in r.values.items():
            level = f"{tool}/{value}" if factor == "chamber" and tool else value
            if level:
                out.setdefault((step, factor), {})[key] = level
    _add_time_windows(out, last, time_windows)
    return _merge_same(out)


def _merge_same(levels: dict[tuple[str, str], dict[WaferKey, str]]) -> dict[tuple[str, str], dict[WaferKey, str]]:
    """One entry for a factor whose levels are the same at several steps (a slot kept through
    the flow): testing it once per step would only add copies to the multiple-test correction."""
    merged: dict[tuple[str, str], dict[WaferKey, str]] = {}
    steps_of: dict[tuple[str, str], list[str]] = {}
    for (step, factor), level_of in levels.items():
        twin = next((k for k, v in merged.items() if k[1] == factor and v == level_of), None)
        if twin is None:
            merged[(step, factor)] = level_of
            steps_of[(step, factor)] = [step]
        else:
            steps_of[twin].append(step)
    return {(", ".join(steps_of[k]), k[1]): v for k, v in merged.items()}


def _add_time_windows(out: dict, last: Mapping[tuple[str, WaferKey], HistoryRow], windows: int) -> None:
    """Per step, ``windows`` equal-size groups of wafers ordered by time, named by their span."""
    by_step: dict[str, list[tuple[datetime, WaferKey]]] = {}
    for (step, key), r in last.items():
        if r.time is not None:
            by_step.setdefault(step, []).append((r.time, key))
    for step, items in by_step.items():
        if windows < 2 or len(items) < 2 * windows:
            continue
        items.sort()
        for chunk in np.array_split(np.arange(len(items)), windows):
            first, final = items[chunk[0]][0], items[chunk[-1]][0]
            name = f"{first:%Y-%m-%d %H:%M}–{final:%Y-%m-%d %H:%M}"
            for i in chunk.tolist():
                out.setdefault((step, "time"), {})[items[i][1]] = name


def _fisher_tests(step: str, factor: str, level_of: Mapping[WaferKey, str], flagged: set[WaferKey]) -> list[Finding]:
    from scipy.stats import fisher_exact

    keys = list(level_of)
    flag = np.array([k in flagged for k in keys])
    levels = np.array([level_of[k] for k in keys])
    found = []
    for level in sorted(set(levels.tolist())):
        at = levels == level
        a, c = int((flag & at).sum()), int((~flag & at).sum())
        b, d = int((flag & ~at).sum()), int((~flag & ~at).sum())
        odds, p = fisher_exact([[a, c], [b, d]], alternative="greater")
        found.append(Finding(step, factor, level, a, a + c, b, b + d, float(odds), float(p)))
    return found


def _chi2_test(step: str, factor: str, level_of: Mapping[WaferKey, str], flagged: set[WaferKey]) -> FactorTest | None:
    from scipy.stats import chi2_contingency

    names = sorted(set(level_of.values()))
    table = np.zeros((len(names), 2), np.int64)
    index = {n: i for i, n in enumerate(names)}
    for key, level in level_of.items():
        table[index[level], int(key in flagged)] += 1
    if len(names) < 3 or table[:, 1].sum() == 0 or table[:, 0].sum() == 0:
        return None  # two levels: the Fisher tests are the exact form of the same question
    res = chi2_contingency(table, correction=False)
    return FactorTest(step, factor, len(names), int(table.sum()), float(res.statistic), int(res.dof), float(res.pvalue))


def commonality(
    results: Sequence[WaferResult],
    history: Sequence[HistoryRow],
    flag: Flag,
    *,
    correction: str = "bh",
    time_windows: int = 4,
    history_source: str | None = None,
) -> CommonalityReport:
    """Rank the history levels the flagged wafers share more than chance (see the module docstring)."""
    correct([], correction)  # an unknown method is refused before any work
    hist_keys = {r.key for r in history}
    res_keys = {r.key: r for r in results}
    universe = set(res_keys) & hist_keys
    if not universe:
        lots_r = ", ".join(sorted({r.lot for r in results})[:5])
        lots_h = ", ".join(sorted({r.lot for r in history})[:5])
        raise FabsightError(history_source, f"no wafer of the results is in the history (results lots: {lots_r}; "
                            f"history lots: {lots_h}); check the --lot-col/--wafer-col columns")
    flagged = {k for k in universe if flag.flags(res_keys[k])}
    findings: list[Finding] = []
    factors: list[FactorTest] = []
    for (step, factor), level_of in sorted(_levels(history, universe, time_windows).items()):
        if len(set(level_of.values())) < 2:
            continue  # every wafer at one level: nothing to compare with
        findings += _fisher_tests(step, factor, level_of, flagged)
        chi = _chi2_test(step, factor, level_of, flagged)
        if chi is not None:
            factors.append(chi)
    for f, q in zip(findings, correct([f.p_value for f in findings], correction), strict=True):
        f.q_value = float(q)
    for t, q in zip(factors, correct([t.p_value for t in factors], correction), strict=True):
        t.q_value = float(q)
    findings.sort(key=lambda f: (f.q_value, f.p_value, -_finite(f.odds_ratio), f.step, f.factor, f.level))
    factors.sort(key=lambda t: (t.q_value, t.p_value, t.step, t.factor))
    missing = sorted(f"{r.lot}/{r.wafer}" for r in results if r.key not in hist_keys)
    return CommonalityReport(flag.describe(), correction, len(universe), len(flagged), findings, factors, missing)


def _finite(x: float) -> float:
    return x if math.isfinite(x) else 1e300
