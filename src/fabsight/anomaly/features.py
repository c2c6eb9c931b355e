"""Patch features from a pretrained backbone, shared by PatchCore and PaDiM.

Mid-level layers describe local texture and structure; the deepest ones are biased to
ImageNet classes. Like PatchCore (Roth et al. 2022, §3.1), each layer's map is averaged
over a 3×3 neighbourhood ("locally aware" features: a patch knows its surroundings; zero
padding counted, as in the paper's code and anomalib), deeper maps are upsampled
(bilinear) to the finest chosen layer's grid, and all are concatenated. With the same
weights and layers these features equal anomalib's PatchCore embedding exactly
(tests/test_anomaly_methods.py checks it when anomalib is installed).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fabsight.anomaly.base import AnomalyModel, NotFittedError
from fabsight.errors import FabsightError, ModelError
from fabsight.utils.progress import track

#: Layers per (method, backbone). PatchCore takes stride 8 + 16 as in the paper; PaDiM
#: keeps to strides 4 + 8: with deep, wide-receptive-field layers a defect raised the
#: Mahalanobis distance at the image border (where good images barely vary) more than
#: on the defect itself (tests/test_anomaly_methods.py shows it). The teacher–student
#: student (receptive field 43 px) imitates ``blocks.2`` alone: with ``blocks.4`` added it
#: could not learn the wide-context features and ranked tire images worse than chance
#: (image AUROC 0.45 vs 0.73, docs/benchmarks.md).
DEFAULT_LAYERS: dict[tuple[str, str], tuple[str, ...]] = {
    ("patchcore", "efficientnet_lite0"): ("blocks.2", "blocks.4"),
    ("padim", "efficientnet_lite0"): ("blocks.1", "blocks.2"),
    ("student", "efficientnet_lite0"): ("blocks.2",),
    ("patchcore", "dinov2_vits14"): ("blocks.6", "blocks.9"),
    ("padim", "dinov2_vits14"): ("blocks.6", "blocks.9"),
}


def default_layers(method: str, name: str, layers: dict[str, tuple[int, int]]) -> tuple[str, ...]:
    """Layers for a method and backbone: the measured choice, else the last layers at strides 8 and 16."""
    if (method, name) in DEFAULT_LAYERS:
        return DEFAULT_LAYERS[(method, name)]
    body = [k for k in layers if k != "head"]
    chosen = []
    for stride in (8, 16):
        at_stride = [k for k in body if layers[k][1] == stride]
        if at_stride:
            chosen.append(at_stride[-1])
    return tuple(chosen) or tuple(body[-2:])


#: Names the local aggregation written into cards: a bank built with another one (models
#: fitted before session 2 averaged border patches over valid pixels only) would be
#: compared with differently computed test features, so loading refuses it.
LOCAL_AGGREGATION = "avg3x3, zero padding counted"


@functools.lru_cache(maxsize=4)
def _shared_backbone(name: str, weights: str | None, size: int, device: str) -> Any:
    """Backbones are frozen and stateless, so models in one process share them: building
    one (timm model + weight loading) costs seconds, far more than using it."""
    from fabsight.backbones import create_backbone

    return create_backbone(name, device=device, weights=weights, input_size=(size, size))


class FeatureModel(AnomalyModel):
    """Base of the memory-bank/distribution methods: a frozen backbone plus chosen layers.

    The backbone is named (``backbone``, optional local ``backbone_weights``), never pickled:
    the card records its name, weights source and hash, and loading checks the hash.
    """

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        backbone_weights: str | None = None,
        layers: Sequence[str] | None = None,
        smoothing_sigma: float = 4.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.backbone = backbone
        self.backbone_weights = backbone_weights
        self.layers = layers
        self.smoothing_sigma = smoothing_sigma

    def _make_backbone(self) -> None:
        weights = None if self.backbone_weights is None else str(self.backbone_weights)
        self.backbone_ = _shared_backbone(str(self.backbone), weights, int(self.input_size), str(self._torch_device()))
        cfg = self.backbone_.cfg
        self.layers_ = tuple(self.layers) if self.layers else default_layers(self.method, cfg.name, cfg.layers)
        unknown = [name for name in self.layers_ if name not in cfg.layers]
        if unknown:
            raise FabsightError(self.backbone, f"unknown layer(s) {unknown}; this backbone has {', '.join(cfg.layers)}")

    def _patch_features(self, crops: list[np.ndarray]) -> torch.Tensor:
        """B×D×h×w locally aware features (float32, on CPU) of B network inputs."""
        if not hasattr(self, "backbone_"):
            raise NotFittedError(None, "backbone not loaded: call fit or load the model")
        return self._locally_aware(self.backbone_.preprocess(crops)).cpu()

    def _locally_aware(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed B×3×S×S inputs → B×D×h×w features: the part ``fabsight export`` turns into a graph."""
        maps = self.backbone_.features(x, self.layers_)
        size = max((m.shape[-2:] for m in maps.values()), key=lambda hw: hw[0] * hw[1])
        parts = []
        for name in self.layers_:
            m = maps[name].float()
            # Zero padding counted in the average, as the paper's AvgPool2d(3, 1, 1) and
            # anomalib: border patches shrink toward 0, so they match only border patches
            # of the bank. Averaging over valid pixels only made border patches look like
            # interior ones and cost 0.11 image AUROC on magnetic tile (docs/benchmarks.md).
            m = F.avg_pool2d(m, kernel_size=3, stride=1, padding=1, count_include_pad=True)
            if m.shape[-2:] != size:
                m = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            parts.append(m)
        return torch.cat(parts, dim=1)

    def _iter_features(self, crops: list[np.ndarray], description: str) -> Iterator[torch.Tensor]:
        bs = max(1, int(self.batch_size))
        batches = [crops[k : k + bs] for k in range(0, len(crops), bs)]
        for batch in track(batches, description):
            yield self._patch_features(batch)

    def _upsample(self, patch_scores: torch.Tensor) -> np.ndarray:
        """B×h×w patch scores → B×S×S smoothed maps at network-input resolution."""
        from fabsight.anomaly.base import gaussian_smooth

        s = int(self.input_size)
        up = F.interpolate(patch_scores[:, None], size=(s, s), mode="bilinear", align_corners=False)[:, 0]
        return gaussian_smooth(up.numpy().astype(np.float32), float(self.smoothing_sigma))

    def describe_backbone(self) -> dict[str, Any]:
        cfg = self.backbone_.cfg
        return {
            "name": cfg.name,
            "architecture": cfg.architecture,
            "weights_source": cfg.weights_source,
            "weights_hash": cfg.weights_hash,
            "license": cfg.license,
            "layers": {name: list(cfg.layers[name]) for name in self.layers_},
            "mean": list(cfg.mean),
            "std": list(cfg.std),
            "interpolation": cfg.interpolation,
        }

    def _restore_backbone(self, info: dict[str, Any]) -> None:
        self._make_backbone()
        want = info.get("backbone_weights_hash")
        have = self.backbone_.cfg.weights_hash
        if want and have and want != have:
            raise ModelError(None, f"backbone '{self.backbone}' weights differ from the ones this model was trained "
                                   f"with (hash {have}, card says {want})")
        if info.get("local_aggregation") != LOCAL_AGGREGATION:
            raise ModelError(None, "model written by an older fabsight with another patch-feature aggregation "
                                   f"({info.get('local_aggregation', 'avg3x3 over valid pixels')!r}): fit it again")
        self.layers_ = tuple(info["layers"])

    def _backbone_info(self) -> dict[str, Any]:
        return {"backbone_weights_hash": self.backbone_.cfg.weights_hash, "layers": list(self.layers_),
                "local_aggregation": LOCAL_AGGREGATION}
