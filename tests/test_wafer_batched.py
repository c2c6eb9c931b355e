"""The batched decision path gives each map the answer it gets alone, and the answer the
session-2 per-map code gave.

``predict_details`` and ``grid_checks`` decide on whole arrays (maps grouped by grid shape,
FFTs in cache-sized chunks over half the spectrum, reason texts only for flagged maps).
Here a lot mixing grid sizes, ordinary patterns, whole-wafer failures, periodic failures,
empty wafers, out-of-distribution and low-confidence maps goes through in one call, one
map per call, and through the previous implementation kept below as the oracle.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest

from fabsight.synth import generate_dataset
from fabsight.wafer import WaferClassifier
from fabsight.wafer.review import (
    ALL_FAIL_FRACTION,
    MIN_FAILING_FOR_PERIODICITY,
    MIN_REPEATS,
    PERIODIC_POWER,
    _periodic_power,
    grid_checks,
)

SHAPES = ((26, 26), (31, 27), (45, 60), (52, 52), (64, 64), (100, 80))


def disk(shape: tuple[int, int], fail: np.ndarray | bool) -> np.ndarray:
    """A round wafer on ``shape`` failing where ``fail`` is true."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    inside = np.hypot((yy - (h - 1) / 2) / (h / 2), (xx - (w - 1) / 2) / (w / 2)) <= 1
    return np.where(inside, np.where(fail, 2, 1), 0).astype(np.uint8)


def odd_grids(shape: tuple[int, int]) -> list[np.ndarray]:
    """Maps the grid rules exist for (and a few they must leave alone) on one grid shape."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    grids = [disk(shape, True), np.zeros(shape, np.uint8), disk(shape, (yy + xx) % 2 == 0)]
    for p in (2, 3, 5, 7):
        grids += [disk(shape, yy % p == 0), disk(shape, xx % p < p // 2), disk(shape, (yy // p + xx // p) % 2 == 0)]
    few = disk(shape, False)
    few[shape[0] // 2, 2 : shape[1] - 2 : 6] = 2  # a few failing dies on a lattice: too few to be periodic
    return [*grids, few]


@pytest.fixture(scope="module")
def lot() -> list[np.ndarray]:
    """A shuffled lot: every class and some mixed maps on six grids, plus the odd maps."""
    grids = [m.grid for m in generate_dataset(4, shapes=SHAPES, noise=(0.0, 0.06), seed=71)]
    grids += [m.grid for m in generate_dataset(1, mixed=True, shapes=SHAPES, seed=72)]
    grids += [g for shape in SHAPES for g in odd_grids(shape)]
    order = np.random.default_rng(73).permutation(len(grids))
    return [grids[i] for i in order]


# --- the session-2 implementation, verbatim but for names: the oracle ---------------------
def reference_periodic_power(fail: np.ndarray, wafer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, h, w = fail.shape
    counts = wafer.sum(axis=(1, 2))
    mean = fail.sum(axis=(1, 2)) / np.maximum(counts, 1)
    centred = np.where(wafer, fail - mean[:, None, None], 0.0)
    power = np.abs(np.fft.fft2(centred)) ** 2
    total = np.maximum(power.sum(axis=(1, 2)), 1e-12)
    offsets = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    near = sum(np.roll(power, (-dy, -dx), axis=(1, 2)) for dy, dx in offsets)
    ky, kx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    candidates = np.where(np.hypot(ky * h, kx * w) >= MIN_REPEATS, near, 0.0)
    best = candidates.reshape(n, -1).argmax(axis=1)
    maps = np.arange(n)
    r, c = np.unravel_index(best, (h, w))
    cells = np.stack([power[maps, (r + dy) % h, (c + dx) % w] for dy, dx in offsets], axis=1)
    shared = np.zeros((n, len(offsets)), dtype=bool)
    for j, (dy, dx) in enumerate(offsets):
        for ey, ex in offsets:
            shared[:, j] |= ((2 * r + dy - ey) % h == 0) & ((2 * c + dx - ex) % w == 0)
    both = near[maps, r, c] + near[maps, (-r) % h, (-c) % w] - (cells * shared).sum(axis=1)
    weights = cells / np.maximum(cells.sum(axis=1, keepdims=True), 1e-12)
    dy, dx = (np.array(d, dtype=np.float64) for d in zip(*offsets, strict=True))
    fy, fx = ky[r, 0] + weights @ dy / h, kx[0, c] + weights @ dx / w
    return both / total, 1.0 / np.maximum(np.hypot(fy, fx), 1e-12)


def reference_grid_checks(grids: list[np.ndarray]) -> list[str | None]:
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
        sel = np.flatnonzero((n_fail >= MIN_FAILING_FOR_PERIODICITY) & (n_fail < ALL_FAIL_FRACTION * n_dies))
        if sel.size:
            share[sel], period[sel] = reference_periodic_power(fail[sel], wafer[sel])
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


def reference_details(clf: WaferClassifier, maps: list[np.ndarray]) -> list[dict[str, Any]]:
    """The session-2 per-map loop of ``predict_details``, on the model's own outputs."""
    probs, emb, _ = clf._outputs(maps)
    rules = reference_grid_checks(maps)
    ood = clf.ood_.score(emb)
    out = []
    for p, label, conf, d, rule in zip(probs, clf.decode(probs), clf._confidence(probs), ood, rules, strict=True):
        reason = rule
        if reason is None and d > clf.ood_.threshold:
            reason = f"out of distribution: embedding distance {d:.1f} > {clf.ood_.threshold:.1f}"
        elif reason is None and conf < clf.review_threshold_:
            reason = f"low confidence: {conf:.2f} < {clf.review_threshold_:.2f} ({clf._doubt(p)})"
        out.append(
            {
                "label": label if isinstance(label, str) else "+".join(label),
                "probability": float(conf),
                "top3": [[clf.classes_[j], float(p[j])] for j in np.argsort(-p)[:3]],
                "needs_review": reason is not None,
                "review_reason": reason,
                "ood_score": float(d),
            }
        )
    return out


# --- tests ----------------------------------------------------------------------------------
def assert_same_details(got: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    """Equal decisions and texts; numbers equal up to float32 rounding (the network's sums
    depend on the batch it runs in)."""

    def numbers(d: dict[str, Any]) -> list[float]:
        return [d["probability"], d["ood_score"], *(p for _, p in d["top3"])]

    def rest(d: dict[str, Any]) -> dict[str, Any]:
        return {**d, "probability": None, "ood_score": None, "top3": [name for name, _ in d["top3"]]}

    assert [rest(d) for d in got] == [rest(d) for d in expected]
    np.testing.assert_allclose([numbers(d) for d in got], [numbers(d) for d in expected], rtol=1e-5, atol=1e-6)


def reason_kinds(reasons: list[str | None]) -> Counter:
    return Counter((r or "none").split(":")[0] for r in reasons)


def test_grid_rules_batched_equal_one_by_one_and_the_previous_code(lot) -> None:
    batched = grid_checks(lot)
    kinds = reason_kinds(batched)
    # The lot exercises every rule, and most maps pass: otherwise the comparison proves little.
    assert kinds["whole-wafer failure"] == kinds["no dies on the wafer"] == len(SHAPES)
    assert kinds["periodic failures"] >= 8 * len(SHAPES)
    assert kinds["none"] >= 50
    assert [grid_checks([g])[0] for g in lot] == batched
    assert reference_grid_checks(lot) == batched


@pytest.mark.parametrize("shape", [(26, 26), (31, 27), (45, 60), (9, 11), (4, 40), (120, 97)])
def test_periodic_share_and_period_match_the_full_spectrum(shape) -> None:
    # Half the spectrum and chunking change only the rounding: the share and the period of
    # every map (flagged or not) agree with the full-spectrum code to ~1e-12. On grids of
    # 3 rows or fewer the 3×3 neighbourhood wraps onto itself and ties are broken by
    # rounding, so those are not compared.
    rng = np.random.default_rng(sum(shape))
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    grids = [disk(shape, s % p == 0) for p in (2, 3, 4, 6) for s in (yy, xx)] + [disk(shape, (yy + xx) % 3 == 0)]
    grids += [disk(shape, rng.random(shape) < q) for q in (0.1, 0.3, 0.6)]
    if min(shape) >= 8:  # the generator's smallest grid
        grids += [m.grid for m in generate_dataset(3, shapes=(shape,), seed=7)]
    stack = np.stack([g for g in grids if MIN_FAILING_FOR_PERIODICITY <= np.sum(g == 2) < 0.9 * np.sum(g > 0)])
    share, period = _periodic_power(stack)
    ref_share, ref_period = reference_periodic_power((stack == 2).astype(np.float64), stack > 0)
    np.testing.assert_allclose(share, ref_share, rtol=1e-12, atol=1e-12)
    strong = ref_share >= 0.1  # a clear winning frequency; noise maps may tie between mirror bins
    assert strong.sum() >= 3
    np.testing.assert_allclose(period[strong], ref_period[strong], rtol=1e-12)


@pytest.fixture(scope="module", params=[False, True], ids=["single-label", "multi-label"])
def model(request) -> WaferClassifier:
    multilabel = request.param
    train = generate_dataset(
        10, classes=("Center", "Edge-Ring", "Scratch", "none"), mixed=multilabel, shapes=((30, 30), (52, 52)), seed=74
    )
    return WaferClassifier(input_size=32, multilabel=multilabel, epochs=2, batch_size=32, n_threads=1).fit(train)


def test_predict_details_batched_equals_one_by_one_and_the_previous_loop(model, lot) -> None:
    # Thresholds set from this lot so every reason occurs: grid rule, OOD, low confidence, none.
    probs, emb, _ = model._outputs(lot)
    model.ood_.threshold = float(np.quantile(model.ood_.score(emb), 0.8))
    model.review_threshold_ = float(np.quantile(model._confidence(probs), 0.3))
    batched = model.predict_details(lot)
    kinds = reason_kinds([d["review_reason"] for d in batched])
    assert all(kinds[k] >= 5 for k in ("periodic failures", "out of distribution", "low confidence", "none"))
    assert_same_details([model.predict_details([g])[0] for g in lot], batched)
    assert reference_details(model, lot) == batched  # same batches: bit for bit
    assert all(type(d["probability"]) is float and type(d["top3"][0][1]) is float for d in batched)


def test_inference_network_matches_the_trained_one_and_follows_its_weights(model, lot) -> None:
    # Prediction runs a copy with batch norms folded in, in channels-last memory: same
    # outputs as the trained network up to float32 rounding, and never stale.
    import torch

    from fabsight.wafer.preprocess import maps_to_array

    x = maps_to_array(lot, model.input_size_)
    with torch.inference_mode():
        z = model.net_.eval().embed(torch.from_numpy(x))
        plain = (model.net_.classify(z).numpy(), z.numpy())
    fast = model.forward(x)
    for got, expected in zip(fast, plain, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    assert model._inference_net() is model._inference_net()  # built once
    with torch.no_grad():
        model.net_.head.bias += 1.0  # every logit moves by one
    np.testing.assert_allclose(model.forward(x)[0], fast[0] + 1.0, rtol=1e-5, atol=1e-4)
    with torch.no_grad():
        model.net_.head.bias -= 1.0
