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
from functools import lru_cache

import numpy as np
import scipy.fft

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


#: Grid cells per chunk of :func:`_periodic_power` (about 0.5 MB per float64 working array):
#: chunks whose FFT, power and neighbourhood sums stay in cache beat whole-stack passes,
#: which for a lot of 1,000 maps are tens of MB per temporary (the same reason as
#: :data:`fabsight.wafer.preprocess._CHUNK_CELLS`).
_CHUNK_CELLS = 1 << 16
#: The 3×3 neighbourhood of a frequency bin, row offsets then column offsets.
_DY, _DX = (a.ravel() for a in np.mgrid[-1:2, -1:2])


@lru_cache(maxsize=512)
def _spectrum_layout(h: int, w: int) -> tuple[np.ndarray, ...]:
    """What :func:`_periodic_power` needs of an ``h×w`` grid's half spectrum, computed once
    per grid shape (a real data set has hundreds, most of them in every lot, and building
    these cost more than the FFT of a small map): the frequencies of its rows and columns,
    which bins repeat at least :data:`MIN_REPEATS` times, and where each bin of the
    mirror-padded spectrum is found.

    The padded spectrum has rows ``-1 … h`` and columns ``-1 … w//2 + 1`` (one bin of
    wrap-around on every side of the half that ``rfft2`` returns); the power of a real
    signal is point-symmetric, ``P[-r, -c] = P[r, c]``, so a column past ``w // 2`` is read
    from the mirrored bin."""
    ky, kx = np.fft.fftfreq(h), np.fft.fftfreq(w)
    half = w // 2 + 1
    far = np.hypot(ky[:, None] * h, kx[None, :half] * w) >= MIN_REPEATS
    rows = (np.arange(-1, h + 1) % h)[:, None]
    cols = (np.arange(-1, w // 2 + 2) % w)[None, :]
    mirrored = cols > w // 2
    layout = (ky, kx, far, np.where(mirrored, (-rows) % h, rows), np.where(mirrored, w - cols, cols))
    for a in layout:
        a.setflags(write=False)
    return layout


def _periodic_power(grids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per map of an ``(n, H, W)`` stack of die grids: the largest share of power in one
    frequency and its mirror image (a real pattern's power is symmetric), each summed over
    its 3×3 neighbourhood of bins, which holds the leakage of the round wafer edge, among
    frequencies repeating ≥ :data:`MIN_REPEATS` times; and its period in dies (from the
    power-weighted frequency of that neighbourhood, finer than one bin). For narrow
    stripes the second harmonic can be the strongest frequency: the period is then half
    the pattern's.

    Because of that symmetry only half the spectrum is computed (``rfft2``) and searched:
    a frequency's neighbourhood sum equals its mirror's. Maps go through in chunks that
    fit in cache; only the winning bin's nine neighbours leave the loop.
    """
    n, h, w = grids.shape
    ky, kx, far, pad_rows, pad_cols = _spectrum_layout(h, w)
    half = w // 2 + 1
    r, c = np.empty(n, dtype=np.intp), np.empty(n, dtype=np.intp)
    near_best, total, cells = np.empty(n), np.empty(n), np.empty((n, _DY.size))
    step = max(1, _CHUNK_CELLS // (h * w))
    for s in range(0, n, step):
        g = grids[s : s + step]
        m = len(g)
        wafer = g > 0
        fail = (g == 2).astype(np.float64)
        mean = fail.sum(axis=(1, 2)) / np.maximum(wafer.sum(axis=(1, 2)), 1)
        centred = np.where(wafer, fail - mean[:, None, None], 0.0)
        total[s : s + m] = h * w * np.square(centred).sum(axis=(1, 2))  # Parseval: Σ|F|² = HW·Σx²
        power = np.abs(scipy.fft.rfft2(centred)) ** 2  # numpy's own rfft2: the same bins, 2-6x slower
        padded = power[:, pad_rows, pad_cols]  # (m, h + 2, half + 2)
        # near[r, c] = Σ P[r+dy, c+dx], as a sum over columns, then over rows
        across = padded[:, :, :half] + padded[:, :, 1 : half + 1] + padded[:, :, 2:]
        near = across[:, :h] + across[:, 1 : h + 1] + across[:, 2:]
        best = np.where(far, near, 0.0).reshape(m, -1).argmax(axis=1)
        rr, cc = np.unravel_index(best, (h, half))
        idx = np.arange(m)
        near_best[s : s + m] = near[idx, rr, cc]
        cells[s : s + m] = padded[idx[:, None], rr[:, None] + 1 + _DY, cc[:, None] + 1 + _DX]
        r[s : s + m], c[s : s + m] = rr, cc
    # Bin r+dy of the neighbourhood is also in the mirror's (-r+ey) when 2r+dy-ey ≡ 0: counted once.
    shared = (
        ((2 * r[:, None, None] + _DY[:, None] - _DY[None, :]) % h == 0)
        & ((2 * c[:, None, None] + _DX[:, None] - _DX[None, :]) % w == 0)
    ).any(axis=2)
    both = 2 * near_best - (cells * shared).sum(axis=1)
    weights = cells / np.maximum(cells.sum(axis=1, keepdims=True), 1e-12)
    fy, fx = ky[r] + weights @ _DY / h, kx[c] + weights @ _DX / w
    return both / np.maximum(total, 1e-12), 1.0 / np.maximum(np.hypot(fy, fx), 1e-12)


def grid_checks(grids: Sequence[np.ndarray]) -> list[str | None]:
    """For each checked die grid (0 off / 1 good / 2 fail): why it needs review, or ``None``.

    Grids sharing a shape are checked together (batched, cache-sized FFTs), and a reason is
    written only for the maps that get one, so the checks cost little next to the network
    on a large lot.
    """
    out: list[str | None] = [None] * len(grids)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, g in enumerate(grids):
        by_shape.setdefault(np.shape(g), []).append(i)
    for idx in by_shape.values():
        stack = np.stack([grids[i] for i in idx])
        n_dies = np.count_nonzero(stack > 0, axis=(1, 2))
        n_fail = np.count_nonzero(stack == 2, axis=(1, 2))
        all_fail = n_fail >= ALL_FAIL_FRACTION * n_dies
        share, period = np.zeros(len(idx)), np.zeros(len(idx))
        # only maps that could be called periodic pay for the FFT (most real wafers fail few dies)
        sel = np.flatnonzero((n_fail >= MIN_FAILING_FOR_PERIODICITY) & ~all_fail)
        if sel.size:
            share[sel], period[sel] = _periodic_power(stack if sel.size == len(idx) else stack[sel])
        for j in np.flatnonzero(all_fail | (share >= PERIODIC_POWER)).tolist():
            if n_dies[j] == 0:
                out[idx[j]] = "no dies on the wafer: every cell is off-wafer"
            elif all_fail[j]:
                out[idx[j]] = (
                    f"whole-wafer failure: {n_fail[j] / n_dies[j]:.0%} of the dies fail (test or probe problem?)"
                )
            else:
                out[idx[j]] = (
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
