"""Teacher–student: a small network learns to imitate a pretrained one on good images only.

STPM (Wang et al., BMVC 2021) and EfficientAD (Batzner et al., WACV 2024): the frozen
teacher's patch features of good images are predictable; a student that has only ever
seen good surfaces predicts them well there and badly wherever the surface is unlike
anything it learned from. The anomaly map is the per-position disagreement (mean squared
difference over channels of the channel-normalised teacher features).

Here the teacher is the backbone's locally aware patch features (the same embedding
PatchCore stores, :class:`fabsight.anomaly.features.FeatureModel`); the student is a
five-layer convolutional network in EfficientAD's "patch description network" spirit
(three stride-2 convolutions to the teacher's stride-8 grid), a few hundred kilobytes.
Scoring is one teacher pass plus a cheap student pass, with no nearest-neighbour search
and no memory bank, so it stays fast however many good images it was trained on; both
networks export to one ONNX graph whose output is the patch-disagreement map.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fabsight.anomaly.features import FeatureModel
from fabsight.errors import FabsightError
from fabsight.utils.progress import track


def student_net(out_dim: int, width: int) -> nn.Sequential:
    """Input-size/8 grid of ``out_dim`` features from a B×3×S×S normalised image (receptive field 43 px)."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(2 * width, out_dim, 1),
    )


class StudentTeacher(FeatureModel):
    """Teacher–student anomaly detector (see module docstring).

    Parameters
    ----------
    width : channels of the student's first layer (later layers use twice as many).
    steps : Adam steps of ``batch_size`` network inputs each.
    learning_rate : Adam learning rate.
    Other parameters: see :class:`FeatureModel` and :class:`AnomalyModel`.

    Attributes
    ----------
    student_ : the trained student network.
    feature_mean_, feature_std_ : per-channel statistics of the teacher features on the
        training inputs (the student predicts normalised features, so no channel dominates).
    """

    method = "student"

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        backbone_weights: str | None = None,
        layers: Sequence[str] | None = None,
        width: int = 32,
        steps: int = 600,
        learning_rate: float = 2e-3,
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
        self.width = width
        self.steps = steps
        self.learning_rate = learning_rate

    def _fit_crops(self, crops: list[np.ndarray], n_images: int) -> None:
        if int(self.steps) < 1:
            raise FabsightError(None, f"steps must be at least 1, got {self.steps}")
        self._make_backbone()
        # Teacher features once per input (float16 halves the memory; the targets are normalised next).
        teacher = torch.cat(list(self._iter_features(crops, "student: teacher features"))).half()
        mean = teacher.float().mean(dim=(0, 2, 3))
        std = teacher.float().std(dim=(0, 2, 3)).clamp_min(1e-6)
        self.feature_mean_, self.feature_std_ = mean, std
        torch.manual_seed(int(self.seed))
        device = self._torch_device()
        net = student_net(teacher.shape[1], int(self.width)).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=float(self.learning_rate))
        rng = np.random.default_rng(self.seed)
        bs = min(max(1, int(self.batch_size)), len(crops))
        t0 = time.perf_counter()
        losses = []
        for _ in track(range(int(self.steps)), "student: training"):
            pick = rng.choice(len(crops), size=bs, replace=False)
            x = self.backbone_.preprocess([crops[i] for i in pick])
            target = ((teacher[torch.from_numpy(pick)].float() - mean[:, None, None]) / std[:, None, None]).to(device)
            loss = F.mse_loss(self._student_out(net, x, target.shape[-2:]), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        self.student_ = net.eval().cpu() if device.type != "cpu" else net.eval()
        self.train_seconds_ = time.perf_counter() - t0
        self.final_loss_ = float(np.mean(losses[-max(1, len(losses) // 10):]))

    @staticmethod
    def _student_out(net: nn.Module, x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
        out = net(x)
        if tuple(out.shape[-2:]) != tuple(size):  # input sizes not divisible by 8
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
        return out

    def patch_disagreement(self, x: torch.Tensor) -> torch.Tensor:
        """Preprocessed B×3×S×S inputs → B×h×w mean squared teacher–student difference (the exported graph)."""
        t = self._locally_aware(x)
        t = (t - self.feature_mean_.to(t.device)[:, None, None]) / self.feature_std_.to(t.device)[:, None, None]
        s = self._student_out(self.student_, x, t.shape[-2:])
        return ((t - s) ** 2).mean(dim=1)

    def _map_batch(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        if not hasattr(self, "student_"):
            raise FabsightError(None, "student not trained: call fit or load the model")
        with torch.no_grad():
            patch = self.patch_disagreement(self.backbone_.preprocess(crops)).cpu()
        return self._upsample(patch), None

    def _state(self) -> dict[str, torch.Tensor]:
        state = {f"student.{k}": v.detach().cpu() for k, v in self.student_.state_dict().items()}
        return {**state, "feature_mean": self.feature_mean_, "feature_std": self.feature_std_}

    def _restore(self, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        self._restore_backbone(info)
        self.feature_mean_ = state["feature_mean"].float()
        self.feature_std_ = state["feature_std"].float()
        net = student_net(int(self.feature_mean_.shape[0]), int(self.width))
        net.load_state_dict({k[len("student."):]: v for k, v in state.items() if k.startswith("student.")})
        self.student_ = net.eval()
        self.train_seconds_ = float(info.get("train_seconds", 0.0))
        self.final_loss_ = float(info.get("final_loss", float("nan")))

    def _fitted_info(self) -> dict[str, Any]:
        n_params = sum(p.numel() for p in self.student_.parameters())
        return {**self._backbone_info(), "feature_dim": int(self.feature_mean_.shape[0]),
                "student_parameters": int(n_params), "train_seconds": round(self.train_seconds_, 1),
                "final_loss": round(self.final_loss_, 5)}
