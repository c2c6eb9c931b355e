"""Measure a fitted anomaly model on an MVTec-layout test split: accuracy, speed, memory."""

from __future__ import annotations

import resource
import sys
import time
import tracemalloc
from collections.abc import Sequence
from typing import Any

import numpy as np

from fabsight.anomaly.base import AnomalyModel
from fabsight.anomaly.datasets import AnomalyRecord, read_mask
from fabsight.anomaly.metrics import aupro, f1_at, image_auroc, pixel_auroc, region_recall
from fabsight.anomaly.thresholds import threshold_best_f1
from fabsight.die.data import read_image
from fabsight.utils.progress import track


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def evaluate(
    model: AnomalyModel,
    records: Sequence[AnomalyRecord],
    *,
    threshold: float | None = None,
    fpr_limit: float = 0.3,
) -> dict[str, Any]:
    """Image AUROC, pixel AUROC, AUPRO, and F1 and region recall at the model's (or the given) threshold.

    Pixel metrics use every image with a known mask (good images count as all-normal);
    they are None when no defect image has a mask. ``ms_per_image`` times the model only
    (reading files excluded); memory is the Python-heap peak during scoring (tracemalloc,
    numpy included), the process's peak RSS and, on a GPU, torch's peak allocation.
    """
    t_value = None
    if threshold is not None or getattr(model, "threshold_", None) is not None:
        t_value = model.resolve_threshold(threshold)
    scores: list[float] = []
    maps: list[np.ndarray] = []
    masks: list[np.ndarray] = []
    read_s = 0.0

    def images() -> Any:
        nonlocal read_s
        for r in track(records, "anomaly: scoring"):
            t0 = time.perf_counter()
            img = read_image(r.path)
            read_s += time.perf_counter() - t0
            yield img

    torch = sys.modules.get("torch")  # None for an ONNX model in a torch-free deployment
    cuda = torch is not None and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    tracemalloc.start()
    start = time.perf_counter()
    try:
        for r, (score, amap) in zip(records, model.iter_maps(images()), strict=True):
            scores.append(score)
            if r.mask_path is not None or not r.is_anomalous:
                t0 = time.perf_counter()
                mask = np.zeros(amap.shape, bool) if r.mask_path is None else read_mask(r.mask_path, amap.shape)
                read_s += time.perf_counter() - t0
                maps.append(amap)
                masks.append(mask)
        elapsed = time.perf_counter() - start - read_s
        _, py_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    labels = np.array([r.is_anomalous for r in records])
    s = np.array(scores)
    has_pixels = any(m.any() for m in masks)
    types = np.array([r.defect_type for r in records])
    per_type = {}  # each defect type against all good images
    for t in sorted(set(types[labels])):
        pick = ~labels | (types == t)
        per_type[t] = image_auroc(labels[pick], s[pick])
    result: dict[str, Any] = {
        "n_images": len(records),
        "n_anomalous": int(labels.sum()),
        "n_with_masks": sum(1 for r in records if r.mask_path is not None),
        "image_auroc": image_auroc(labels, s),
        "pixel_auroc": pixel_auroc(maps, masks) if has_pixels else None,
        "aupro": aupro(maps, masks, fpr_limit=fpr_limit) if has_pixels else None,
        "aupro_fpr_limit": fpr_limit,
        "threshold": t_value,
        "f1": None if t_value is None else f1_at(labels, s, t_value),
        # The best F1 any threshold could reach on this test set (anomalib's F1Max): an upper
        # bound for context, not a number a threshold chosen without these labels can promise.
        "f1_max": None if labels.all() or not labels.any() else threshold_best_f1(labels, s).details["f1"],
        "false_alarm_rate": None if t_value is None or labels.all() else float(np.mean(s[~labels] >= t_value)),
        "recall": None if t_value is None or not labels.any() else float(np.mean(s[labels] >= t_value)),
        # defect regions (connected mask components) whose map maximum reaches the threshold
        "region_recall": None if t_value is None or not has_pixels else region_recall(maps, masks, t_value),
        "image_auroc_per_type": per_type,
        "ms_per_image": 1000.0 * elapsed / max(1, len(records)),
        "peak_python_heap_mib": py_peak / 2**20,
        "peak_rss_mib": peak_rss_mib(),
        "torch_threads": None if torch is None else torch.get_num_threads(),
    }
    if cuda:
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result
