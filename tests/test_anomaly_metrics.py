"""Anomaly metrics, thresholds, coreset and tiling against hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from fabsight.anomaly.coreset import bank_size, greedy_coreset
from fabsight.anomaly.metrics import aupro, f1_at, image_auroc, pixel_auroc, region_recall
from fabsight.anomaly.thresholds import Threshold, threshold_best_f1, threshold_from_good
from fabsight.anomaly.tiling import Tiler
from fabsight.errors import FabsightError


def test_image_auroc_and_f1_by_hand() -> None:
    labels = [0, 0, 1, 1]
    scores = [0.1, 0.4, 0.35, 0.8]
    # Pairs (anomalous > good): 0.35>0.1, 0.8>0.1, 0.8>0.4 → 3 of 4.
    assert image_auroc(labels, scores) == pytest.approx(0.75)
    # At 0.3: predicted {0.4, 0.35, 0.8}, TP 2 → F1 = 2·2 / (3 + 2).
    assert f1_at(labels, scores, 0.3) == pytest.approx(0.8)
    assert np.isnan(image_auroc([1, 1], [0.2, 0.3]))


def test_region_recall_counts_regions_not_pixels() -> None:
    mask = np.zeros((20, 20), bool)
    mask[1:3, 1:3] = True  # a 4-pixel region
    mask[8:18, 8:18] = True  # a 100-pixel region
    amap = np.zeros((20, 20))
    amap[2, 2] = 0.9  # one pixel of the small region reaches the threshold
    amap[8:18, 8:18] = 0.4  # the whole big region stays below it
    assert region_recall([amap], [mask], 0.5) == pytest.approx(0.5)
    assert region_recall([amap, amap], [mask, np.zeros_like(mask)], 0.3) == pytest.approx(1.0)
    assert np.isnan(region_recall([amap], [np.zeros_like(mask)], 0.5))


def test_pixel_auroc_matches_sklearn_exact_and_binned() -> None:
    rng = np.random.default_rng(1)
    masks = [rng.random((12, 15)) < 0.2 for _ in range(3)]
    maps = [np.round(m * 0.3 + rng.random(m.shape), 2) for m in masks]  # ties included
    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps])
    assert pixel_auroc(maps, masks) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    # Large enough to use quantile thresholds: still within 1e-3 of the exact value.
    big_masks = [rng.random((200, 200)) < 0.1 for _ in range(3)]
    big_maps = [m * 0.4 + rng.random(m.shape) for m in big_masks]
    exact = roc_auc_score(np.concatenate([m.ravel() for m in big_masks]),
                          np.concatenate([a.ravel() for a in big_maps]))
    assert pixel_auroc(big_maps, big_masks, max_thresholds=2000) == pytest.approx(exact, abs=1e-3)


def test_aupro_on_a_toy_mask() -> None:
    # Image A: region R1 of two pixels scored 0.9 and 0.6; image B: region R2 (one pixel) at 0.7.
    # Ten normal pixels, one of them at 0.8, the rest 0. PRO/FPR points (descending threshold):
    # 0.9 → (0, 0.25), 0.8 → (0.1, 0.25), 0.7 → (0.1, 0.75), 0.6 → (0.1, 1), 0 → (1, 1).
    # Area up to FPR 0.3: 0.1·0.25 + 0.2·1 = 0.225, normalised by 0.3 → 0.75.
    mask_a = np.array([[1, 1, 0, 0, 0, 0]], bool)
    map_a = np.array([[0.9, 0.6, 0.8, 0, 0, 0]])
    mask_b = np.array([[1, 0, 0, 0, 0, 0, 0]], bool)
    map_b = np.array([[0.7, 0, 0, 0, 0, 0, 0]])
    assert aupro([map_a, map_b], [mask_a, mask_b]) == pytest.approx(0.75)
    # A perfect map scores 1; a map that ranks every normal pixel first scores 0.
    assert aupro([mask_a.astype(float)], [mask_a]) == pytest.approx(1.0)
    assert aupro([1.0 - mask_a.astype(float)], [mask_a]) == pytest.approx(0.0)


def test_aupro_weights_small_regions_like_large_ones() -> None:
    # One big region found, one single-pixel region missed: PRO is 0.5 (not the 100/101 a
    # pixel recall gives) until the last threshold, where FPR and PRO jump to 1 together.
    # Area to FPR 0.3 under (0, 0.5) → (1, 1): 0.3·0.5 + ½·0.3·0.15 = 0.1725 → 0.575.
    mask = np.zeros((20, 20), bool)
    mask[0:10, 0:10] = True
    mask[15, 15] = True
    amap = np.zeros((20, 20))
    amap[0:10, 0:10] = 1.0
    assert aupro([amap], [mask]) == pytest.approx(0.575)


def test_threshold_from_good_hits_the_false_alarm_rate() -> None:
    scores = np.arange(1, 101, dtype=float)
    t = threshold_from_good(scores, false_alarm_rate=0.05)
    assert t.method == "good-quantile"
    assert np.mean(scores >= t.value) == pytest.approx(0.05)
    assert 95 < t.value <= 96
    assert "5.00% of 100 held-out good images" in t.describe()
    zero = threshold_from_good(scores, false_alarm_rate=0.0)
    assert np.mean(scores >= zero.value) == 0.0
    assert Threshold.from_dict(t.to_dict()) == t
    with pytest.raises(FabsightError):
        threshold_from_good(np.array([]), 0.01)


def test_best_f1_threshold() -> None:
    labels = np.array([0, 0, 0, 1, 1, 0, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.5, 0.6, 0.55, 0.9])
    t = threshold_best_f1(labels, scores)
    # At 0.5: predicted {0.5, 0.55, 0.6, 0.9}: TP 3, F1 = 6/7; no other cut does better.
    assert t.value == pytest.approx(0.5)
    assert t.details["f1"] == pytest.approx(6 / 7)
    with pytest.raises(FabsightError):
        threshold_best_f1(np.zeros(3), np.ones(3))


def test_coreset_spreads_over_clusters_and_respects_the_cap() -> None:
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(6, 32, generator=gen) * 20
    points = torch.cat([c + 0.1 * torch.randn(300, 32, generator=gen) for c in centers])
    idx = greedy_coreset(points, 6, projection_dim=16)
    assert len(set(idx.tolist())) == 6
    assert sorted({int(i) // 300 for i in idx}) == list(range(6))  # one pick per cluster
    # Covering radius beats a random subset of the same size.
    k = 40
    def radius(sel: torch.Tensor) -> float:
        return float(torch.cdist(points, points[sel]).min(dim=1).values.max())
    rand = torch.randperm(len(points), generator=gen)[:k]
    assert radius(greedy_coreset(points, k)) < radius(rand)
    assert bank_size(1_000_000, 0.1, 5000) == 5000
    assert bank_size(1000, 0.01, 5000) == 10
    assert bank_size(3, 0.01, 5000) == 1


@pytest.mark.parametrize("shape", [(100, 130), (40, 50), (64, 64)])
def test_tiler_covers_and_stitches(shape: tuple[int, int]) -> None:
    tiler = Tiler(input_size=32, tile=64, overlap=0.25)
    img = np.random.default_rng(0).integers(0, 255, size=shape, dtype=np.uint8)
    crops, pl = tiler.split(img)
    assert all(c.shape == (32, 32) for c in crops)
    covered = np.zeros((max(shape[0], 64), max(shape[1], 64)), bool)
    for y, x in pl.boxes:
        covered[y : y + 64, x : x + 64] = True
    assert covered.all()
    # Each tile's map holds the image x coordinate of its pixels (at half resolution, as a
    # network would return it): stitched back, every pixel must hold its own x.
    half = (np.arange(32, dtype=np.float32) * 2 + 0.5)[None, :].repeat(32, axis=0)
    stitched = tiler.stitch([half + x for _, x in pl.boxes], pl)
    assert stitched.shape == shape
    truth = np.arange(shape[1], dtype=np.float32)[None, :].repeat(shape[0], axis=0)
    np.testing.assert_allclose(stitched, truth, atol=1.0)
    whole = Tiler(input_size=32)
    crops, pl = whole.split(img)
    assert len(crops) == 1 and whole.stitch([np.ones((32, 32), np.float32)], pl).shape == shape


def test_tiler_keeps_aspect_of_long_images() -> None:
    """A 50×125 strip with max_aspect 1.5: short side scaled to 32, squares along the long side, map back in place."""
    tiler = Tiler(input_size=32, max_aspect=1.5, overlap=0.25)
    strip = np.zeros((50, 125), np.uint8)
    strip[:, 100:] = 255  # the right fifth is bright
    crops, pl = tiler.split(strip)
    assert pl.scaled and pl.padded == (32, 80) and len(crops) == 3 and all(c.shape == (32, 32) for c in crops)
    assert crops[0].max() == 0 and crops[-1][:, -8:].min() == 255  # not squashed: the bright band stays at the end
    # maps holding each pixel's brightness come back at image size with the band where it was
    stitched = tiler.stitch([c.astype(np.float32) for c in crops], pl)
    assert stitched.shape == (50, 125)
    assert stitched[:, :95].max() < 10 and stitched[:, 105:].min() > 245
    # within max_aspect the image is still resized whole; tall images are tiled down their height
    assert len(tiler.split(np.zeros((50, 70), np.uint8))[0]) == 1
    assert tiler.placement((125, 50)).padded == (80, 32)
    with pytest.raises(ValueError, match="max aspect"):
        Tiler(input_size=32, max_aspect=0.5)
