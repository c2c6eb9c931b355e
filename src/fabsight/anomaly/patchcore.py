"""PatchCore: a memory bank of good patch features; anomaly = distance to the nearest one.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection", CVPR 2022. Training
is a single pass (no gradient steps): extract locally aware patch features from every
good image, keep a greedy k-center coreset of them, and at test time score each patch by
the distance to its nearest neighbour in the bank (faiss exact L2 search). The bank is a
bounded tensor saved with the model, so memory and speed do not grow with the data.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fabsight.anomaly.coreset import bank_size, greedy_coreset
from fabsight.anomaly.features import FeatureModel


class PatchCore(FeatureModel):
    """PatchCore anomaly detector (see module docstring).

    Parameters
    ----------
    coreset_ratio : fraction of training patches kept in the memory bank.
    max_bank : hard cap on the memory-bank size (patches), whatever the data size.
    max_candidates : training patches considered for the coreset; a larger set is
        randomly subsampled first (greedy k-center costs one pass per pick).
    projection_dim : random-projection width used only to pick the coreset.
    reweight : apply PatchCore's score reweighting (eq. 7): the image score is damped
        when the test patch's nearest good patch sits in a dense region of the bank.
    reweight_neighbors : bank neighbours used by the reweighting.
    Other parameters: see :class:`FeatureModel` and :class:`AnomalyModel`.

    Attributes
    ----------
    memory_bank_ : M×D float32 tensor of good patch features.
    """

    method = "patchcore"

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        backbone_weights: str | None = None,
        layers: Sequence[str] | None = None,
        coreset_ratio: float = 0.01,
        max_bank: int = 10_000,
        max_candidates: int = 200_000,
        projection_dim: int = 128,
        reweight: bool = False,
        reweight_neighbors: int = 9,
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
        self.coreset_ratio = coreset_ratio
        self.max_bank = max_bank
        self.max_candidates = max_candidates
        self.projection_dim = projection_dim
        self.reweight = reweight
        self.reweight_neighbors = reweight_neighbors

    def _fit_crops(self, crops: list[np.ndarray], n_images: int) -> None:
        self._make_backbone()
        rng = np.random.default_rng(self.seed)
        kept: list[torch.Tensor] = []
        keep_p = 1.0
        for feats in self._iter_features(crops, "PatchCore: features"):
            flat = feats.permute(0, 2, 3, 1).reshape(-1, feats.shape[1])
            if keep_p == 1.0:
                # Now the patches per input are known: sample so about max_candidates remain.
                keep_p = min(1.0, self.max_candidates / (flat.shape[0] / len(feats) * len(crops)))
            if keep_p < 1.0:
                flat = flat[torch.from_numpy(rng.random(flat.shape[0]) < keep_p)]
            kept.append(flat)
        candidates = torch.cat(kept)
        n_bank = bank_size(candidates.shape[0], self.coreset_ratio, self.max_bank)
        t0 = time.perf_counter()
        idx = greedy_coreset(candidates, n_bank, projection_dim=self.projection_dim, seed=self.seed)
        self.coreset_seconds_ = time.perf_counter() - t0
        self.memory_bank_ = candidates[idx].contiguous()
        self.n_candidates_ = int(candidates.shape[0])
        self._index_ = None

    def _index(self) -> Any:
        import faiss

        if getattr(self, "_index_", None) is None:
            index = faiss.IndexFlatL2(self.memory_bank_.shape[1])
            index.add(self.memory_bank_.numpy())
            self._index_ = index
        return self._index_

    def _map_batch(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        feats = self._patch_features(crops)
        b, d, h, w = feats.shape
        q = np.ascontiguousarray(feats.permute(0, 2, 3, 1).reshape(-1, d).numpy())
        dist2, nn = self._index().search(q, 1)
        patch = torch.from_numpy(np.sqrt(np.maximum(dist2[:, 0], 0.0)).reshape(b, h, w))
        maps = self._upsample(patch)
        if not self.reweight:
            return maps, None
        return maps, self._reweight_factors(q.reshape(b, h * w, d), patch.reshape(b, -1), nn[:, 0].reshape(b, -1))

    def _reweight_factors(self, q: np.ndarray, patch: torch.Tensor, nn: np.ndarray) -> np.ndarray:
        """PatchCore eq. 7 for each input's most anomalous patch: 1 − softmax weight of its nearest neighbour."""
        k = max(1, min(int(self.reweight_neighbors), self.memory_bank_.shape[0]))
        worst = patch.argmax(dim=1).numpy()
        m_test = q[np.arange(len(q)), worst]  # B×D
        m_star = self.memory_bank_.numpy()[nn[np.arange(len(q)), worst]]
        _, neigh = self._index().search(np.ascontiguousarray(m_star), k)  # neighbours of m* in the bank
        bank = self.memory_bank_.numpy()
        d = np.linalg.norm(bank[neigh] - m_test[:, None, :], axis=2)  # B×k, d[:, 0] is to m* itself
        w = 1.0 - torch.softmax(torch.from_numpy(d), dim=1)[:, 0].numpy()
        return w.astype(np.float32)

    def _state(self) -> dict[str, torch.Tensor]:
        return {"memory_bank": self.memory_bank_}

    def _restore(self, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        self._restore_backbone(info)
        self.memory_bank_ = state["memory_bank"].float().contiguous()
        self.n_candidates_ = int(info.get("n_candidates", 0))
        self._index_ = None

    def _fitted_info(self) -> dict[str, Any]:
        return {**self._backbone_info(), "bank_size": int(self.memory_bank_.shape[0]),
                "feature_dim": int(self.memory_bank_.shape[1]), "n_candidates": self.n_candidates_,
                "coreset_seconds": round(getattr(self, "coreset_seconds_", 0.0), 1),
                "bank_mib": round(self.memory_bank_.numel() * 4 / 2**20, 2)}

