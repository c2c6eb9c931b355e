"""Defect regions from anomaly maps: counts, areas, boxes and peaks with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from fabsight.anomaly.regions import AREA_BIN_EDGES_PX, area_histogram, defect_regions, folder_summary
from fabsight.anomaly.render import regions_image


def _map() -> np.ndarray:
    """Three blobs: a 4×5 block (peak 3), a diagonal pair of pixels (peak 2), one pixel at 1.5."""
    a = np.zeros((40, 60), np.float32)
    a[10:14, 20:25] = 1.0
    a[11, 22] = 3.0
    a[30, 5] = a[31, 6] = 2.0  # touching at a corner: one region under 8-connectivity
    a[0, 59] = 1.5
    return a


def test_regions_count_area_box_peak() -> None:
    regions = defect_regions(_map(), 1.0, pixel_size_um=2.0)
    assert [r["peak_score"] for r in regions] == [3.0, 2.0, 1.5]  # strongest first
    block, pair, dot = regions
    assert block["area_px"] == 20 and block["bbox"] == [20, 10, 25, 14] and block["area_um2"] == 80.0
    assert block["centroid"] == [22.0, 11.5]
    assert pair["area_px"] == 2 and pair["bbox"] == [5, 30, 7, 32]
    assert dot["bbox"] == [59, 0, 60, 1]
    # a higher threshold keeps only the cores; min_area drops the small ones
    assert [r["area_px"] for r in defect_regions(_map(), 1.6)] == [1, 2]
    assert [r["area_px"] for r in defect_regions(_map(), 1.0, min_area=3)] == [20]
    assert defect_regions(_map(), 5.0) == []
    assert "area_um2" not in defect_regions(_map(), 1.0)[0]
    with pytest.raises(ValueError, match="positive"):
        defect_regions(_map(), 1.0, pixel_size_um=0.0)


def test_histogram_and_folder_summary() -> None:
    hist = area_histogram([1, 16, 17, 300, 10**6], pixel_size_um=0.5)
    assert [b["count"] for b in hist] == [2, 1, 0, 1, 0, 0, 1]
    assert len(hist) == len(AREA_BIN_EDGES_PX) + 1 and hist[-1]["area_px"] == [16384, None]
    assert hist[1]["area_um2"] == [4.0, 16.0]
    per_image = [defect_regions(_map(), 1.0), [], defect_regions(_map(), 2.0)]
    s = folder_summary(["a", "a", "b"], per_image)
    assert s["a"]["n_images"] == 2 and s["a"]["n_images_with_defects"] == 1 and s["a"]["n_defects"] == 3
    assert s["a"]["defect_area_px"] == 23 and s["a"]["median_defect_area_px"] == 2.0
    assert s["b"]["n_defects"] == 2 and sum(b["count"] for b in s["b"]["area_histogram"]) == 2


def test_regions_are_drawn_where_they_are() -> None:
    img = np.full((40, 60), 128, np.uint8)
    pic = regions_image(img, defect_regions(_map(), 1.0))
    red = (pic[:, :, 2] == 255) & (pic[:, :, 0] == 0)
    assert pic.shape == (40, 60, 3) and red[10, 20:25].all() and red[13, 20:25].all()  # the block's box edges
    assert not red[20:28, 30:50].any()  # nothing drawn where there is no region
