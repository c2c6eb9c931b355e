"""PaDiM: one Gaussian per patch position; anomaly = Mahalanobis distance to it.

Defard et al., "PaDiM: a Patch Distribution Modeling Framework", ICPR 2021. Where
PatchCore remembers examples, PaDiM summarises them: for every position of the feature
grid a mean and a covariance of the (randomly channel-subsampled) patch features. Its
size is fixed by the grid and the channel count, not by the data, and scoring is one
batched matrix product, with no nearest-neighbour search. It suits aligned images (dies,
tiles at a fixed pose) better than free texture, because it models each position apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fabsight.anomaly.features import FeatureModel
from fabsight.errors import FabsightError


class PaDiM(FeatureModel):
    """PaDiM anomaly detector (see module docstring).

    Parameters
    ----------
    n_features : channels kept (a random subset, as in the paper; less memory, more stable
        covariances).
    covariance_eps : ridge added to each covariance so it is invertible with few images.
    Other parameters: see :class:`FeatureModel` and :class:`AnomalyModel`.

    Attributes
    ----------
    channels_ : indices of the kept channels.
    mean_ : P×d per-position means; ``inv_covariance_`` : P×d×d inverses (P = grid positions).
    """

    method = "padim"

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        backbone_weights: str | None = None,
        layers: Sequence[str] | None = None,
        n_features: int = 64,
        covariance_eps: float = 0.01,
        smoothing_sigma: float = 4.0,
        input_size: int = 256,
        tile: int | None = None,
        tile_overlap: float = 0.25,
        max_aspect: float | None = None,
        batch_size: int = 8,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__(backbone=backbone, backbone_weights=backbone_weights, layers=layers,
                         smoothing_sigma=smoothing_sigma, input_size=input_size, tile=tile, tile_overlap=tile_overlap,
                         max_aspect=max_aspect, batch_size=batch_size, device=device, seed=seed)
        self.n_features = n_features
        self.covariance_eps = covariance_eps

    def _fit_crops(self, crops: list[np.ndarray], n_images: int) -> None:
        self._make_backbone()
        total: torch.Tensor | None = None
        outer: torch.Tensor | None = None
        n = 0
        for feats in self._iter_features(crops, "PaDiM: features"):
            if total is None:
                d_all = feats.shape[1]
                gen = torch.Generator().manual_seed(self.seed)
                k = min(int(self.n_features), d_all)
                self.channels_ = torch.randperm(d_all, generator=gen)[:k].sort().values
                self.grid_ = (int(feats.shape[2]), int(feats.shape[3]))
            f = feats[:, self.channels_].flatten(2).permute(2, 0, 1).double()  # P×B×d
            # Sums in float64: the covariance is a difference of large sums.
            total = f.sum(dim=1) if total is None else total + f.sum(dim=1)
            o = torch.einsum("pbi,pbj->pij", f, f)
            outer = o if outer is None else outer + o
            n += f.shape[1]
        if total is None or outer is None:
            raise FabsightError(None, "PaDiM got no training inputs")
        mean = total / n
        cov = (outer - n * torch.einsum("pi,pj->pij", mean, mean)) / max(1, n - 1)
        cov += float(self.covariance_eps) * torch.eye(cov.shape[-1], dtype=cov.dtype)
        self.mean_ = mean.float()
        self.inv_covariance_ = torch.linalg.inv(cov).float()

    def _map_batch(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        feats = self._patch_features(crops)
        b, _, h, w = feats.shape
        diff = feats[:, self.channels_].flatten(2).permute(0, 2, 1) - self.mean_  # B×P×d
        m2 = torch.einsum("bpi,pij,bpj->bp", diff, self.inv_covariance_, diff)
        return self._upsample(m2.clamp_min(0).sqrt().reshape(b, h, w)), None

    def _state(self) -> dict[str, torch.Tensor]:
        return {"channels": self.channels_, "mean": self.mean_, "inv_covariance": self.inv_covariance_}

    def _restore(self, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        self._restore_backbone(info)
        self.channels_ = state["channels"].long()
        self.mean_ = state["mean"].float()
        self.inv_covariance_ = state["inv_covariance"].float()
        self.grid_ = tuple(info["grid"])

    def _fitted_info(self) -> dict[str, Any]:
        return {**self._backbone_info(), "grid": list(self.grid_), "n_features": int(self.channels_.numel())}
