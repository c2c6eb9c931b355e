"""One BLAS thread for small matrix products.

OpenBLAS splits every product over its threads. For the small products of resampling
(a wafer map to the model grid, an image to the backbone's input) two threads made them
2–10× slower in CPU time than one, and on a loaded 2-core machine up to 50× slower in wall
time (a 64×373 by 373×248 product: 0.8 ms on one thread, 39 ms on two). Right after a
network runs, its runtime's threads are still spinning, and a second OpenBLAS thread
fighting them slows a batch's distance products the same way.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any


@lru_cache(maxsize=1)
def _blas_controller() -> Any:
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def single_blas_thread() -> Any:
    """A context running BLAS on one thread (about 50 µs to enter)."""
    return _blas_controller().limit(limits=1, user_api="blas")
