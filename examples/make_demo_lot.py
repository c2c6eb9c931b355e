"""Regenerate the example lots shipped in ``src/fabsight/examples/demo_lot``.

Three inspection lots on consecutive days as KLARF 1.2 (the third has an edge-ring
excursion, so monitoring has something to find), the wafer-sort result of that lot as
STDF V4 and one of its wafers as a SEMI G85 map — all written by fabsight's own writers
from synthetic maps with known patterns. Run: ``python examples/make_demo_lot.py``.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

from fabsight.io import write_g85, write_klarf, write_stdf
from fabsight.synth import generate_map
from fabsight.types import WaferMap

OUT = Path(__file__).resolve().parents[1] / "src" / "fabsight" / "examples" / "demo_lot"
SHAPE = (34, 34)
PITCH = (8800.0, 8800.0)  # µm: 34 dies across a 300 mm wafer

# Pattern of each wafer per lot; the third lot drifts towards edge-ring.
LOTS = {
    "A101": ["none", "none", "Random", "none", "Center", "none", "Scratch", "none"],
    "A102": ["none", "Loc", "none", "none", "Edge-Loc", "none", "none", "Donut"],
    "A103": ["Edge-Ring", "none", "Edge-Ring", "Edge-Ring", "none", "Edge-Ring", "Center", "Edge-Ring"],
}


def _lot(lot: str, patterns: list[str], day: int, rng: np.random.Generator) -> list[WaferMap]:
    start = datetime(2026, 11, 2, 6, 0) + timedelta(days=day)
    return [
        WaferMap(
            generate_map(p, SHAPE, rng, noise=0.01),
            lot_id=lot,
            wafer_id=f"{i:02d}",
            die_pitch=PITCH,
            timestamp=start + timedelta(minutes=7 * i),
            extras={"device_id": "FS-DEMO", "step_id": "M1-ETCH"},
        )
        for i, p in enumerate(patterns, start=1)
    ]


def main() -> None:
    rng = np.random.default_rng(20261102)
    OUT.mkdir(parents=True, exist_ok=True)
    lots = {lot: _lot(lot, pats, day, rng) for day, (lot, pats) in enumerate(LOTS.items())}
    for lot, maps in lots.items():
        write_klarf(maps, OUT / f"LOT-{lot}.klarf")
    sort = [m.with_grid(m.grid) for m in lots["A103"][:3]]
    write_stdf(sort, OUT / "LOT-A103_sort.stdf")
    write_g85(lots["A103"][:1], OUT / "LOT-A103_w01.xml")
    for f in sorted(OUT.iterdir()):
        print(f"{f.name}\t{f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
