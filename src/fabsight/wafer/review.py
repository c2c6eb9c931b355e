"""What decides ``needs_review`` besides the network: rules on the raw die grid, and the
harder synthetic maps the review threshold is learnt on.

**Raw-grid checks.** Some wafers no class describes look, once area-resampled to the
model's input, exactly like a class: a die-level checkerboard or rows failing in stripes
average into a uniform half-failing field (a dense Random map), and a wafer whose every
die fails is the extreme of Near-full. The network and its embedding cannot tell them
apart, so they are caught on the die grid itself, before any resampling:

- *whole-wafer failure*: at least :data:`ALL_FAIL_FRACTION` of the dies fail (the
  generator's Near-full tops out at 97.5 %); on a real line that is a probe-card or
  test-program problem, not a process signature;
- *periodic failures*: a single spatial frequency that repeats at least
  :data:`MIN_REPEATS` times across the wafer carries at least :data:`PERIODIC_POWER` of the
  variance of the fail pattern. Process signatures (blobs, rings, scratches, random
  failures) spread their power over many frequencies; a failure that follows the reticle
  or the prober stepping concentrates it in one (docs/benchmarks.md measures both).

**Harder validation maps.** A review threshold learnt on maps like the training maps sits
at its floor (every confidence level is right there), which is too lenient for real
wafers. :func:`shifted_maps` draws the same classes with parameters at or past the edge of
the generator's ranges, on grids the model does not train on, with heavier background
noise, so the threshold is chosen where the model starts to be wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fabsight.synth import generate_dataset, parse_pattern
from fabsight.types import WaferMap

#: Fail fraction of the on-wafer dies from which a map is a whole-wafer failure.
ALL_FAIL_FRACTION = 0.99
#: Share of the fail pattern's variance in one frequency and its mirror (± one bin) that makes it
#: periodic. Ordinary synthetic maps reach 0.28 at most (a straight scratch on a 26×26 grid);
#: rows failing one in five reach 0.46, a die-level checkerboard 0.92.
PERIODIC_POWER = 0.4
#: A periodic failure must repeat at least this many times across the grid.
MIN_REPEATS = 4
#: Fewer failing dies than this carry no periodic structure worth reporting.
MIN_FAILING_FOR_PERIODICITY = 16

#: Pattern parameters of the harder maps: each at or past the edge of
#: :data:`fabsight.synth.patterns.PARAMS` (small faint blobs, thin rings, sparse Random,
#: one-die scratches).
SHIFTED_PARAMS: dict[str, dict[str, tuple[float, float]]] = {
    "Center": {"size": (0.3, 0.45), "density": (0.45, 0.65)},
    "Donut": {"width": (0.1, 0.16), "density": (0.45, 0.65)},
    "Edge-Loc": {"span_deg": (20.0, 45.0), "density": (0.45, 0.65)},
    "Edge-Ring": {"width": (0.04, 0.07), "density": (0.45, 0.65)},
    "Loc": {"size": (0.08, 0.13), "density": (0.5, 0.7)},
    "Near-full": {"density": (0.65, 0.8)},
    "Random": {"density": (0.12, 0.25)},
    "Scratch": {"width_dies": (1.0, 1.0), "density": (0.6, 0.8)},
    "none": {},
}
#: Grids of the harder maps: smaller and larger than any training grid.
SHIFTED_SHAPES: tuple[tuple[int, int], ...] = ((26, 26), (200, 200))
#: Background fail rate of the harder maps (the generator's default is 0.2–3 %).
SHIFTED_NOISE: tuple[float, float] = (0.03, 0.06)


def _periodic_power(fail: np.ndarray, wafer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per map of an ``(n, H, W)`` stack: the largest share of power in one frequency and
    its mirror image (a real pattern's power is symmetric), each summed over its 3×3
    neighbourhood of bins, which holds the leakage of the round wafer edge, among
    frequencies repeating ≥ :data:`MIN_REPEATS` times; and its period in dies (from the
    power-weighted frequency of that neighbourhood, finer than one bin). For narrow
    stripes the second harmonic can be the strongest frequency: the period is then half
    the pattern's."""
    n, h, w = fail.shape
    counts = wafer.sum(axis=(1, 2))
    mean = fail.sum(axis=(1, 2)) / np.maximum(counts, 1)
    centred = np.where(wafer, fail - mean[:, None, None], 0.0)
    power = np.abs(np.fft.fft2(centred)) ** 2
    total = np.maximum(power.sum(axis=(1, 2)), 1e-12)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    near = sum(np.roll(power, (-dy, -dx), axis=(1, 2)) for dy, dx in offsets)  # near[r, c] = Σ P[r+dy, c+dx]
    ky, kx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    candidates = np.where(np.hypot(ky * h, kx * w) >= MIN_REPEATS, near, 0.0)
    best = candidates.reshape(n, -1).argmax(axis=1)
    maps = np.arange(n)
    r, c = np.unravel_index(best, (h, w))
    cells = np.stack([power[maps, (r + dy) % h, (c + dx) % w] for dy, dx in offsets], axis=1)  # (n, 9)
    # Bin r+dy of the neighbourhood is also in the mirror's (-r+ey) when 2r+dy-ey ≡ 0: counted once.
    shared = np.zeros((n, len(offsets)), dtype=bool)
    for j, (dy, dx) in enumerate(offsets):
        for ey, ex in offsets:
            shared[:, j] |= ((2 * r + dy - ey) % h == 0) & ((2 * c + dx - ex) % w == 0)
    both = near[maps, r, c] + near[maps, (-r) % h, (-c) % w] - (cells * shared).sum(axis=1)
    weights = cells / np.maximum(cells.sum(axis=1, keepdims=True), 1e-12)
    dy, dx = (np.array(d, dtype=np.float64) for d in zip(*offsets, strict=True))
    fy, fx = ky[r, 0] + weights @ dy / h, kx[0, c] + weights @ dx / w
    return both / total, 1.0 / np.maximum(np.hypot(fy, fx), 1e-12)


def grid_checks(grids: Sequence[np.ndarray]) -> list[str | None]:
    """For each checked die grid (0 off / 1 good / 2 fail): why it needs review, or ``None``.

    Grids sharing a shape are checked together (one batched FFT), so the checks cost little
    next to the network on a large lot.
    """
    out: list[str | None] = [None] * len(grids)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, g in enumerate(grids):
        by_shape.setdefault(np.shape(g), []).append(i)
    for idx in by_shape.values():
        stack = np.stack([grids[i] for i in idx])
        wafer = stack > 0
        fail = (stack == 2).astype(np.float64)
        n_dies = wafer.sum(axis=(1, 2))
        n_fail = fail.sum(axis=(1, 2))
        share, period = np.zeros(len(idx)), np.zeros(len(idx))
        # only maps that could be called periodic pay for the FFT (most real wafers fail few dies)
        sel = np.flatnonzero((n_fail >= MIN_FAILING_FOR_PERIODICITY) & (n_fail < ALL_FAIL_FRACTION * n_dies))
        if sel.size:
            share[sel], period[sel] = _periodic_power(fail[sel], wafer[sel])
        for j, i in enumerate(idx):
            if n_dies[j] == 0:
                out[i] = "no dies on the wafer: every cell is off-wafer"
            elif n_fail[j] >= ALL_FAIL_FRACTION * n_dies[j]:
                out[i] = f"whole-wafer failure: {n_fail[j] / n_dies[j]:.0%} of the dies fail (test or probe problem?)"
            elif n_fail[j] >= MIN_FAILING_FOR_PERIODICITY and share[j] >= PERIODIC_POWER:
                out[i] = (
                    f"periodic failures: {share[j]:.0%} of the fail pattern repeats every "
                    f"{period[j]:.1f} dies (reticle or prober stepping?), not a process signature"
                )
    return out


def shifted_maps(
    per_class: int, classes: Sequence[str | Sequence[str]], *, mixed: bool = False, seed: int = 0
) -> list[WaferMap]:
    """``per_class`` harder maps of each class (see the module docstring).

    Single patterns use :data:`SHIFTED_PARAMS`; a combination of patterns is drawn with the
    default parameters (its patterns' shifted ranges would conflict, e.g. Center and Loc
    both have a ``size``), on the shifted grids and noise.
    """
    maps: list[WaferMap] = []
    for j, c in enumerate(classes):
        names = parse_pattern(c)
        params = SHIFTED_PARAMS[names[0]] if len(names) == 1 else {}  # none: names == ()
        maps += generate_dataset(
            per_class,
            classes=[c],
            mixed=mixed,
            shapes=SHIFTED_SHAPES,
            noise=SHIFTED_NOISE,
            seed=seed * 1000 + j,
            **params,
        )
    return maps
