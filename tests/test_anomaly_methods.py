"""Each method on a generated texture with planted defects: ranks them and finds them.

The texture is a periodic pattern (like repeated die structure) with noise; a defect is
a dark disc at a known place. A method that works must score every defective image above
the good ones and put its anomaly-map peak inside the disc.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import cv2
import numpy as np
import pytest
import torch

from fabsight.anomaly import PaDiM, PatchCore, ReconDetector, StudentTeacher, load_model, save_model
from fabsight.anomaly.base import NotFittedError
from fabsight.anomaly.metrics import image_auroc
from fabsight.errors import FabsightError, ModelError


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    py, px = rng.uniform(0, 0.5, 2)  # nearly aligned, like repeated die structure
    img = 128 + 35 * np.sin(2 * np.pi * xx / 8 + px) * np.sin(2 * np.pi * yy / 8 + py) + rng.normal(0, 4, (h, w))
    return np.clip(img, 0, 255).astype(np.uint8)


def plant(rng: np.random.Generator, img: np.ndarray, radius: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """A dark disc at least 18 px from the border (a CNN's border patches are atypical anyway)."""
    h, w = img.shape
    cy, cx = int(rng.integers(18, h - 18)), int(rng.integers(18, w - 18))
    mask = np.zeros((h, w), np.uint8)
    cv2.circle(mask, (cx, cy), radius, 1, -1)
    out = img.copy()
    out[mask > 0] = 20
    return out, mask > 0


@pytest.fixture(scope="module")
def data() -> dict[str, list]:
    rng = np.random.default_rng(7)
    train = [texture(rng, 96, 96 + int(rng.integers(0, 24))) for _ in range(10)]
    good = [texture(rng, 96, 96) for _ in range(5)]
    bad = [plant(rng, texture(rng, 96, 96)) for _ in range(5)]
    return {"train": train, "good": good, "bad": [b for b, _ in bad], "masks": [m for _, m in bad]}


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    # On a shared 2-core machine one thread was several times faster than two.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _check_detects_and_localises(model, data) -> None:
    s_good = model.score_samples(data["good"])
    maps = model.anomaly_maps(data["bad"])
    s_bad = np.array([m.max() for m in maps])
    assert image_auroc([0] * len(s_good) + [1] * len(s_bad), np.r_[s_good, s_bad]) == 1.0
    for amap, mask, img in zip(maps, data["masks"], data["bad"], strict=True):
        assert amap.shape == img.shape
        peak = np.unravel_index(np.argmax(amap), amap.shape)
        near = cv2.dilate(mask.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0  # 3 px slack
        assert near[peak], "anomaly-map peak is not on the planted defect"
        assert amap[mask].mean() > amap[~near].mean()


@pytest.fixture(scope="module")
def patchcore(data) -> PatchCore:
    return PatchCore(input_size=96, max_bank=200, coreset_ratio=0.5, device="cpu").fit(data["train"])


def test_patchcore_detects_and_localises(patchcore, data) -> None:
    assert patchcore.memory_bank_.shape[0] <= 200  # the cap holds
    _check_detects_and_localises(patchcore, data)


def test_patchcore_reweighting_keeps_the_ranking(patchcore, data) -> None:
    patchcore.reweight = True
    try:
        s_good = patchcore.score_samples(data["good"])
        s_bad = patchcore.score_samples(data["bad"])
        plain_good = np.array([m.max() for m in patchcore.anomaly_maps(data["good"][:1])])
    finally:
        patchcore.reweight = False
    assert s_bad.min() > s_good.max()
    assert s_good[0] < plain_good[0]  # the factor is in (0, 1)


@pytest.mark.slow  # importing anomalib alone takes 10-30 s
def test_patch_features_and_distances_equal_anomalibs(patchcore, data) -> None:
    """Same weights and layers → the same embedding and nearest-neighbour distances as
    anomalib 2.7's PatchcoreModel (3×3 average with zero padding, bilinear upsampling)."""
    pytest.importorskip("anomalib", reason="anomalib (bench extra) not installed")
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    theirs = PatchcoreModel(layers=list(patchcore.layers_), backbone="tf_efficientnet_lite0", pre_trained=False)
    missing, _ = theirs.feature_extractor.feature_extractor.load_state_dict(
        patchcore.backbone_.model.state_dict(), strict=False)
    assert not missing
    crops = [patchcore._tiler().split(img)[0][0] for img in data["bad"][:3]]
    theirs.train()  # in train mode forward returns the flat patch embedding
    emb = theirs(patchcore.backbone_.preprocess(crops))
    ours = patchcore._patch_features(crops)
    torch.testing.assert_close(ours.permute(0, 2, 3, 1).reshape(-1, ours.shape[1]), emb)
    theirs.memory_bank = patchcore.memory_bank_.clone()
    their_dist, _ = theirs.nearest_neighbors(emb, n_neighbors=1)
    dist2, _ = patchcore._index().search(np.ascontiguousarray(emb.numpy()), 1)
    np.testing.assert_allclose(np.sqrt(np.maximum(dist2[:, 0], 0)), their_dist.numpy(), rtol=1e-3, atol=1e-3)


def test_padim_detects_and_localises(data) -> None:
    model = PaDiM(input_size=96, n_features=40, device="cpu").fit(data["train"])
    assert model.mean_.shape == (24 * 24, 40)  # stride-4 grid of a 96-px input, 40 channels kept
    _check_detects_and_localises(model, data)


def test_recon_detects_and_localises(data) -> None:
    # Tiles of 48 px: also checks that tiled maps are stitched back in the right place.
    model = ReconDetector(input_size=48, tile=48, width=8, depth=2, steps=120, batch_size=6, device="cpu")
    model.fit(data["train"])
    assert model.loss_history_[-1] < model.loss_history_[0]
    _check_detects_and_localises(model, data)
    recon = model.reconstruct(data["bad"][0])
    assert recon.shape == (48, 48) and recon.dtype == np.uint8


def test_student_detects_localises_and_round_trips(data, tmp_path) -> None:
    model = StudentTeacher(input_size=96, width=16, steps=150, device="cpu").fit(data["train"])
    assert model.final_loss_ < 1.0  # below the variance of the normalised teacher features
    _check_detects_and_localises(model, data)
    model.calibrate_good(data["good"], false_alarm_rate=0.0)
    save_model(model, tmp_path / "s")
    loaded, card = load_model(tmp_path / "s", device="cpu")
    assert card.extra["method"] == "student" and card.extra["fitted"]["student_parameters"] < 100_000
    np.testing.assert_allclose(loaded.score_samples(data["bad"]), model.score_samples(data["bad"]), rtol=1e-5)
    assert loaded.threshold_ == model.threshold_


def test_tiling_keeps_a_small_defect_in_a_big_image(patchcore, data) -> None:
    rng = np.random.default_rng(3)
    big = texture(rng, 64, 200)
    bad, mask = plant(rng, big, radius=5)
    tiled = PatchCore(input_size=64, tile=64, max_bank=200, coreset_ratio=0.5, device="cpu").fit(data["train"])
    amap = tiled.anomaly_maps([bad])[0]
    assert amap.shape == bad.shape
    assert mask[np.unravel_index(np.argmax(amap), amap.shape)]
    assert tiled.score_samples([bad])[0] > tiled.score_samples([big])[0]


def test_threshold_calibration_predict_and_override(patchcore, data) -> None:
    patchcore.calibrate_good(data["good"], false_alarm_rate=0.0)
    t = patchcore.threshold_
    assert t.method == "good-quantile" and t.details["measured_false_alarm_rate"] == 0.0
    assert patchcore.predict(data["good"]).sum() == 0
    assert patchcore.predict(data["bad"]).sum() == len(data["bad"])
    # An explicit threshold wins over the calibrated one.
    assert patchcore.predict(data["good"], threshold=0.0).sum() == len(data["good"])
    labels = [0] * 5 + [1] * 5
    patchcore.calibrate_f1(data["good"] + data["bad"], labels)
    assert patchcore.threshold_.details["f1"] == 1.0


def test_save_load_round_trip(patchcore, data, tmp_path) -> None:
    patchcore.calibrate_good(data["good"], false_alarm_rate=0.2)
    save_model(patchcore, tmp_path / "m", training={"note": "test"})
    loaded, card = load_model(tmp_path / "m", device="cpu")
    assert card.extra["method"] == "patchcore"
    assert card.backbone["name"] == "efficientnet_lite0" and card.backbone["weights_hash"]
    assert card.extra["threshold"]["method"] == "good-quantile"
    np.testing.assert_allclose(loaded.score_samples(data["bad"]), patchcore.score_samples(data["bad"]), rtol=1e-5)
    assert loaded.threshold_ == patchcore.threshold_
    # A bank of features aggregated another way (cards written before zero padding counted)
    # would be compared with differently computed test features: loading refuses it.
    card_path = tmp_path / "m" / "card.json"
    doc = json.loads(card_path.read_text())
    del doc["extra"]["fitted"]["local_aggregation"]
    card_path.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="older fabsight"):
        load_model(tmp_path / "m", device="cpu")


def test_user_mistakes_are_clear_errors(data) -> None:
    with pytest.raises(NotFittedError):
        PaDiM().score_samples(data["good"])
    with pytest.raises(FabsightError, match="image #1"):
        ReconDetector(input_size=32, steps=1).fit([data["train"][0], np.zeros((4, 4), np.uint8)])
    with pytest.raises(FabsightError, match="no training images"):
        ReconDetector(input_size=32, steps=1).fit([])
    with pytest.raises(FabsightError, match="unknown layer"):
        PatchCore(input_size=64, layers=["nope"], device="cpu").fit(data["train"][:1])
