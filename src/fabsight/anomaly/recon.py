"""Reconstruction + segmentation network trained on good images with synthetic defects.

The fast model of the ChipDiffusion slides (a diffusion model distilled into a small
UNet, 3 s → 0.2 s per image) and of DRAEM (Zavrtanik et al., ICCV 2021): a small UNet
sees good images with pseudo-defects pasted in (:mod:`fabsight.anomaly.synth`) and
learns two things at once: to reconstruct the clean image (the "defect removed" view a
person can compare with) and to output the defect mask directly. No backbone and no
memory bank: one forward pass of a ~0.5 M-parameter network, fully convolutional, so it
runs at native resolution, on CPU or GPU, and exports to ONNX as a plain graph.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fabsight.anomaly.base import AnomalyModel, gaussian_smooth, match_channels
from fabsight.anomaly.synth import add_synthetic_defect
from fabsight.utils.device import reproducible_cudnn
from fabsight.utils.progress import track


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class ReconUNet(nn.Module):
    """A small UNet with two heads: clean-image reconstruction and defect-mask logits."""

    def __init__(self, channels: int = 1, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        widths = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList([_block(channels, widths[0])])
        self.down.extend(_block(widths[i], widths[i + 1]) for i in range(depth))
        self.up = nn.ModuleList(_block(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(depth)))
        self.recon_head = nn.Conv2d(widths[0], channels, 1)
        self.mask_head = nn.Conv2d(widths[0] + channels, 1, 3, padding=1)
        self.pad_to = 2**depth

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x`` B×C×H×W in [0, 1] → (reconstruction B×C×H×W in [0, 1], mask logits B×1×H×W)."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.pad_to, (-w) % self.pad_to
        xp = F.pad(x, (0, pw, 0, ph), mode="reflect") if ph or pw else x
        skips = []
        y = xp
        for i, block in enumerate(self.down):
            y = block(y if i == 0 else F.max_pool2d(y, 2))
            skips.append(y)
        for block, skip in zip(self.up, reversed(skips[:-1]), strict=True):
            y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            y = block(torch.cat([y, skip], dim=1))
        recon = torch.sigmoid(self.recon_head(y))
        # The mask head also sees |input − reconstruction|: where the net could not
        # reproduce the input is where a defect most likely is.
        logits = self.mask_head(torch.cat([y, (xp - recon).abs()], dim=1))
        return recon[..., :h, :w], logits[..., :h, :w]


def lr_factor(step: int, steps: int, warmup: float = 0.1, div: float = 25.0, final_div: float = 1e4) -> float:
    """Learning-rate multiplier at ``step`` (0-based) of ``steps``: a one-cycle schedule.

    Cosine warm-up from ``1/div`` to 1 until step ``warmup × steps − 1``, then cosine
    decay to ``1/(div·final_div)`` at the last step: exactly the curve of torch's
    ``OneCycleLR`` (without its momentum cycling), written out because that class divides
    by zero when ``warmup × steps`` is 1 (``steps=10`` crashed) and runs past the end of
    its curve for fewer steps. Here the warm-up lasts at least one step.
    """
    up = max(1.0, warmup * steps - 1.0)
    lo, end = 1.0 / div, 1.0 / (div * final_div)
    if step <= up:
        return lo + (1.0 - lo) * (1.0 - math.cos(math.pi * step / up)) / 2.0
    t = min(1.0, (step - up) / max(1.0, steps - 1.0 - up))
    return end + (1.0 - end) * (1.0 + math.cos(math.pi * t)) / 2.0


def _dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum(dim=(1, 2, 3))
    denom = p.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3))
    return (1 - (2 * inter + 1) / (denom + 1)).mean()


class ReconDetector(AnomalyModel):
    """Synthetic-defect-trained UNet anomaly detector (see module docstring).

    Parameters
    ----------
    width : channels of the first UNet level (doubling per level); 16 ≈ 0.5 M parameters.
    depth : down-sampling levels.
    steps : optimiser steps (any number ≥ 1); lr : peak Adam learning rate (one-cycle schedule, :func:`lr_factor`).
    train_crop : train on random square crops of this size cut from the network inputs
        (None: whole inputs). The network is fully convolutional, so it still runs on whole
        inputs at test time; crops make a CPU step several times cheaper and add variety.
    defect_probability : fraction of training inputs that get a synthetic defect.
    smoothing_sigma : Gaussian smoothing of the mask probability map, in input pixels.
    Other parameters: see :class:`AnomalyModel` (the network runs on ``input_size`` crops
    or resized images like the other methods; it trains on the GPU when there is one).

    Attributes
    ----------
    net_ : the trained :class:`ReconUNet`; channels_ : 1 (grey) or 3 (RGB) input channels.
    loss_history_ : mean training loss per tenth of training.
    """

    method = "recon"

    def __init__(
        self,
        *,
        width: int = 16,
        depth: int = 3,
        steps: int = 1500,
        lr: float = 2e-3,
        train_crop: int | None = 96,
        defect_probability: float = 0.7,
        smoothing_sigma: float = 2.0,
        input_size: int = 256,
        tile: int | None = None,
        tile_overlap: float = 0.25,
        max_aspect: float | None = None,
        batch_size: int = 8,
        device: str = "auto",
        seed: int = 0,
    ) -> None:
        super().__init__(input_size=input_size, tile=tile, tile_overlap=tile_overlap, max_aspect=max_aspect,
                         batch_size=batch_size, device=device, seed=seed)
        self.width = width
        self.depth = depth
        self.steps = steps
        self.lr = lr
        self.train_crop = train_crop
        self.defect_probability = defect_probability
        self.smoothing_sigma = smoothing_sigma

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        return match_channels(image, self.channels_)

    @staticmethod
    def _as_float(crops: list[np.ndarray]) -> np.ndarray:
        a = np.stack(crops).astype(np.float32) / 255.0
        return a[..., None] if a.ndim == 3 else a  # N×H×W×C

    @reproducible_cudnn()
    def _fit_crops(self, crops: list[np.ndarray], n_images: int) -> None:
        self.channels_ = 3 if any(c.ndim == 3 for c in crops) else 1
        crops = [self._prepare(c) for c in crops]
        data = self._as_float(crops)
        dev = self._torch_device()
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        net = ReconUNet(self.channels_, int(self.width), int(self.depth)).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=float(self.lr))
        steps = max(1, int(self.steps))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, steps))
        bs = max(2, int(self.batch_size))
        losses: list[float] = []
        history: list[float] = []
        net.train()
        start = time.perf_counter()
        for step in track(range(steps), "recon: training"):
            clean = self._sample(data, bs, rng)
            flip = rng.random(bs) < 0.5
            clean[flip] = clean[flip][:, :, ::-1]
            noisy = clean.copy()
            masks = np.zeros(clean.shape[:3], np.float32)
            for b in range(bs):
                if rng.random() < self.defect_probability:
                    noisy[b], m = add_synthetic_defect(clean[b], rng, data)
                    masks[b] = m
            x = torch.from_numpy(noisy).permute(0, 3, 1, 2).to(dev)
            target = torch.from_numpy(clean).permute(0, 3, 1, 2).to(dev)
            mask = torch.from_numpy(masks)[:, None].to(dev)
            recon, logits = net(x)
            loss = (F.l1_loss(recon, target) + F.binary_cross_entropy_with_logits(logits, mask)
                    + _dice_loss(logits, mask))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if len(losses) >= max(1, steps // 10) or step == steps - 1:
                history.append(round(float(np.mean(losses)), 4))
                losses = []
        net.eval()
        self.net_ = net
        self.trained_on_ = str(dev)
        self.loss_history_ = history
        self.train_seconds_ = time.perf_counter() - start

    def _sample(self, data: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` training inputs (N×H×W×C copies), randomly cropped to ``train_crop`` if set."""
        idx = rng.integers(0, len(data), size=n)
        size = data.shape[1]
        c = size if self.train_crop is None else min(int(self.train_crop), size)
        if c == size:
            return data[idx].copy()
        ys = rng.integers(0, size - c + 1, size=n)
        xs = rng.integers(0, size - c + 1, size=n)
        return np.stack([data[i, y : y + c, x : x + c] for i, y, x in zip(idx, ys, xs, strict=True)])

    @torch.no_grad()
    def _forward(self, crops: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        dev = next(self.net_.parameters()).device
        x = torch.from_numpy(self._as_float(crops)).permute(0, 3, 1, 2).to(dev)
        recon, logits = self.net_(x)
        return recon.cpu(), torch.sigmoid(logits)[:, 0].cpu()

    def _map_batch(self, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        _, prob = self._forward(crops)
        return gaussian_smooth(prob.numpy().astype(np.float32), float(self.smoothing_sigma)), None

    def reconstruct(self, image: np.ndarray) -> np.ndarray:
        """The defect-removed view of one image (uint8, the network's input size): what it
        thinks the surface should look like there."""
        self._check_fitted()
        crop = self._tiler().split(self._prepare(image))[0][0]
        recon, _ = self._forward([crop])
        out = (recon[0].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
        return out[:, :, 0] if out.shape[2] == 1 else out

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu() for k, v in self.net_.state_dict().items()}

    def _restore(self, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        self.channels_ = int(info["channels"])
        net = ReconUNet(self.channels_, int(self.width), int(self.depth))
        net.load_state_dict(state)
        self.net_ = net.to(self._torch_device()).eval()
        self.loss_history_ = list(info.get("loss_history", []))
        self.train_seconds_ = float(info.get("train_seconds", 0.0))
        self.trained_on_ = str(info.get("trained_on", "unknown"))

    def _fitted_info(self) -> dict[str, Any]:
        n_params = sum(p.numel() for p in self.net_.parameters())
        return {"channels": self.channels_, "parameters": n_params, "loss_history": self.loss_history_,
                "train_seconds": round(self.train_seconds_, 1), "trained_on": self.trained_on_}
