"""The root-cause knowledge base: a YAML file shipped with fabsight, replaceable with ``--kb FILE``.

The knowledge base is data, not code, so a fab can put its own excursion history in it
without touching fabsight; it is validated on load so a typo becomes one clear error line
instead of a silently missing root cause.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from fabsight.errors import FabsightError
from fabsight.types import WM811K_CLASSES

LOCATIONS = ("centre", "middle", "edge", "whole wafer", "any")
_CAUSE_KEYS = {"cause", "process_steps", "reasoning"}
_PATTERN_KEYS = {"description", "expected_location", "causes"}


@dataclass(frozen=True)
class RootCause:
    cause: str
    process_steps: tuple[str, ...]
    reasoning: str

    def to_dict(self) -> dict[str, Any]:
        return {"cause": self.cause, "process_steps": list(self.process_steps), "reasoning": self.reasoning}


@dataclass(frozen=True)
class PatternKnowledge:
    name: str
    description: str
    expected_location: str
    causes: tuple[RootCause, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class KnowledgeBase:
    patterns: dict[str, PatternKnowledge]
    source: str

    def get(self, pattern: str | None) -> PatternKnowledge | None:
        """Entry for a pattern name, matched case-insensitively (``edge-ring`` finds ``Edge-Ring``)."""
        if pattern is None:
            return None
        return self.patterns.get(pattern) or next(
            (p for n, p in self.patterns.items() if n.lower() == pattern.lower()), None
        )


def _str(value: Any, where: str, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise FabsightError(path, f"{where} must be a non-empty string")
    return value.strip()


def _cause(raw: Any, where: str, path: str) -> RootCause:
    if not isinstance(raw, dict):
        raise FabsightError(path, f"{where} must be a mapping with keys {sorted(_CAUSE_KEYS)}")
    unknown = set(raw) - _CAUSE_KEYS
    missing = _CAUSE_KEYS - set(raw)
    if unknown or missing:
        raise FabsightError(path, f"{where}: " + "; ".join(
            part for part in (
                f"unknown keys {sorted(unknown)}" if unknown else "",
                f"missing keys {sorted(missing)}" if missing else "",
            ) if part
        ))
    steps = raw["process_steps"]
    if not isinstance(steps, list) or not steps:
        raise FabsightError(path, f"{where}.process_steps must be a non-empty list")
    return RootCause(
        cause=_str(raw["cause"], f"{where}.cause", path),
        process_steps=tuple(_str(s, f"{where}.process_steps[{i}]", path) for i, s in enumerate(steps)),
        reasoning=_str(raw["reasoning"], f"{where}.reasoning", path),
    )


def parse_kb(raw: Any, path: str) -> KnowledgeBase:
    """Validate a loaded YAML document and build the :class:`KnowledgeBase`."""
    if not isinstance(raw, dict) or not isinstance(raw.get("patterns"), dict):
        raise FabsightError(path, "knowledge base must be a mapping with a 'patterns' mapping")
    if raw.get("version", 1) != 1:
        raise FabsightError(path, f"unsupported knowledge-base version {raw.get('version')!r} (expected 1)")
    known = {c.lower(): c for c in WM811K_CLASSES}
    patterns: dict[str, PatternKnowledge] = {}
    for name, entry in raw["patterns"].items():
        canonical = known.get(str(name).lower())
        if canonical is None:
            raise FabsightError(path, f"unknown pattern {name!r}; expected one of {', '.join(WM811K_CLASSES)}")
        where = f"patterns.{name}"
        if not isinstance(entry, dict):
            raise FabsightError(path, f"{where} must be a mapping")
        unknown = set(entry) - _PATTERN_KEYS
        if unknown:
            raise FabsightError(path, f"{where}: unknown keys {sorted(unknown)}")
        loc = entry.get("expected_location", "any")
        if loc not in LOCATIONS:
            raise FabsightError(path, f"{where}.expected_location {loc!r} is not one of {', '.join(LOCATIONS)}")
        causes = entry.get("causes") or []
        if not isinstance(causes, list):
            raise FabsightError(path, f"{where}.causes must be a list")
        patterns[canonical] = PatternKnowledge(
            name=canonical,
            description=_str(entry.get("description"), f"{where}.description", path),
            expected_location=loc,
            causes=tuple(_cause(c, f"{where}.causes[{i}]", path) for i, c in enumerate(causes)),
        )
    return KnowledgeBase(patterns, path)


def load_kb(path: str | os.PathLike[str] | None = None) -> KnowledgeBase:
    """Load the shipped knowledge base, or the user's file when ``path`` is given."""
    import yaml

    if path is None:
        text = resources.files("fabsight.assist").joinpath("knowledge_base.yaml").read_text(encoding="utf-8")
        where = "fabsight/assist/knowledge_base.yaml"
    else:
        p = Path(path)
        if not p.is_file():
            raise FabsightError(p, "knowledge base file does not exist")
        text, where = p.read_text(encoding="utf-8", errors="replace"), str(p)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise FabsightError(where, f"not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_kb(raw, where)
