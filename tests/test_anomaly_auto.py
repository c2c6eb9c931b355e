"""Input settings chosen from the training images: known answers on generated sizes and masks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fabsight.anomaly.auto import choose_input, defect_diameters, survey_images
from fabsight.errors import FabsightError


def _facts(h: int, w: int, n: int = 4, channels: int = 1) -> dict:
    shape = (h, w) if channels == 1 else (h, w, 3)
    return survey_images([np.zeros(shape, np.uint8)] * n, [f"{i}.png" for i in range(n)])


def test_long_strip_keeps_its_aspect_and_is_not_tiled_without_masks() -> None:
    facts = _facts(500, 1250)
    assert facts["aspect_median"] == 2.5 and facts["median_short_side"] == 500
    c = choose_input(facts)  # shrink 500/256 = 1.95 ≤ 2: resize, but keep the 2.5:1 aspect
    assert (c.input_size, c.tile, c.max_aspect) == (256, None, 1.5)
    assert any("no defect masks" in r for r in c.reasons)


def test_defect_scale_decides_tiling() -> None:
    facts = _facts(640, 640)
    blind = choose_input(facts)  # 640/256 = 2.5× > 2× without masks: tiles of 512
    assert blind.tile == 512
    big = choose_input(facts, np.full(10, 64.0))  # 64-px defects may shrink 4×: whole image
    assert big.tile is None
    small = choose_input(facts, np.array([8.0, 10.0, 30.0, 40.0]))  # a quarter under 9.5 px: native 256-px tiles
    assert small.tile == 256 and "tiles of 256" in small.reasons[-1] and "9.5 px" in small.reasons[-2]
    mid = choose_input(facts, np.full(8, 32.0))  # 32 px may shrink 2×: tiles of 512
    assert mid.tile == 512


def test_user_settings_are_kept() -> None:
    facts = _facts(640, 640)
    c = choose_input(facts, np.full(3, 8.0), input_size=224, tile=0, max_aspect=0)
    assert (c.input_size, c.tile, c.max_aspect) == (224, None, None)
    c = choose_input(facts, input_size=128, tile=300, max_aspect=3)
    assert (c.input_size, c.tile, c.max_aspect) == (128, 300, 3.0)
    c = choose_input(facts, input_size=400)  # bigger input: 640/400 = 1.6× is within 2×
    assert c.tile is None and c.input_size == 400


def test_mixed_inputs_warn_or_are_refused() -> None:
    imgs = [np.zeros((100, 100), np.uint8), np.zeros((120, 100, 3), np.uint8)]
    facts = survey_images(imgs, ["a.png", "b.png"])
    assert facts["n_sizes"] == 2 and facts["n_grey"] == 1 and facts["n_rgb"] == 1
    warnings = choose_input(facts).warnings
    assert any("2 sizes" in w for w in warnings) and any("grey" in w for w in warnings)
    with pytest.raises(FabsightError, match=r"tiny\.png.*cannot share one scale"):
        survey_images([np.zeros((900, 900), np.uint8), np.zeros((100, 100), np.uint8)], ["big.png", "tiny.png"])


def test_defect_diameters_from_masks(tmp_path: Path) -> None:
    m = np.zeros((80, 80), np.uint8)
    m[10:20, 10:20] = 255  # 100 px → diameter 11.28
    m[50, 50] = m[51, 51] = 255  # one 8-connected region of 2 px
    cv2.imwrite(str(tmp_path / "a_mask.png"), m)
    cv2.imwrite(str(tmp_path / "b_mask.png"), np.zeros((80, 80), np.uint8))
    d = np.sort(defect_diameters([tmp_path / "a_mask.png", tmp_path / "b_mask.png"]))
    np.testing.assert_allclose(d, [np.sqrt(8 / np.pi), np.sqrt(400 / np.pi)])
