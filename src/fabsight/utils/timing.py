"""One way to time a call for the benchmarks: median wall and median CPU seconds.

Both are kept because the reference machine is shared: wall time says what a user waits,
process CPU time (every thread of this process) is steadier under other people's load, and
``threads × n / cpu`` estimates what ``threads`` idle cores would do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from statistics import median


def median_times(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds of ``fn()`` over ``rounds`` calls, after
    one warm-up call (first-call costs such as graph optimisation are not what is measured)."""
    fn()
    wall, cpu = [], []
    for _ in range(rounds):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(median(wall)), float(median(cpu))
