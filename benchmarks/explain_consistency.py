"""Explanations that state both sides of a fact, counted (prints JSON).

The maps and the check are those of ``tests/test_assist_consistency.py`` (every WM-811K class
from the generator at 4 noise levels × 3 seeds × 4 predictions, 10 hand-drawn kinds × 4 seeds ×
3 noise levels × 3 predictions, and the real KLARF, STDF and G85 fixtures with and without a
"none" prediction); the test asserts the count is 0, this prints it, so the same count can be
taken on an older fabsight (put its ``src`` first on ``PYTHONPATH``).

    python benchmarks/explain_consistency.py [--shared ../shared]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from fabsight.assist.explain import explain_facts  # noqa: E402
from fabsight.assist.facts import wafer_facts  # noqa: E402
from fabsight.assist.knowledge import load_kb  # noqa: E402
from fabsight.types import WM811K_CLASSES  # noqa: E402
from test_assist_consistency import DRAWN, check, drawn_cases, generated_cases, real_cases  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared")
    args = ap.parse_args()
    kb = load_kb()
    result: dict[str, dict[str, int]] = {}
    groups = {
        "generated": [c for pattern in WM811K_CLASSES for c in generated_cases(pattern)],
        "drawn": [c for kind in DRAWN for c in drawn_cases(kind)],
        "real": list(real_cases(args.shared)),
    }
    for group, wmap, pred in ((g, m, p) for g, cs in groups.items() for m, p in cs):
        row = result.setdefault(group, {"explanations": 0, "both_sides": 0})
        row["explanations"] += 1
        try:
            check(explain_facts(wafer_facts(wmap, pred), kb))
        except AssertionError:
            row["both_sides"] += 1
    print(json.dumps({"benchmark": "explain_consistency", "groups": result}, indent=2))


if __name__ == "__main__":
    main()
