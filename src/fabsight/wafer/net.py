"""The compact CNN and the geometry-respecting augmentation it is trained with.

Published MixedWM38 / WM-811K classifiers reach 97–98.7 % with 0.5–1 M parameters; a
wafer map at 64×64 carries little texture, so four 3×3 conv stages (a stride-2 stem, each
stage followed by 2×2 max-pooling, so the full-resolution work is one 3-channel conv) with
average *and* max global pooling are enough: average pooling sees extent (Near-full vs
Loc), max pooling keeps small sharp features (Scratch) that the stem found before any
downsampling. The network has ~0.13 M parameters and about 4 M multiply-adds at 64×64, which
is what makes >1,300 maps/s possible on two CPU cores.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

#: Sizes of the one network family: ``(widths, embed_dim)``. ``compact`` is the default
#: classifier; ``medium`` (0.46 M parameters) the mixed-type model of docs/benchmarks.md;
#: ``wide`` is the distillation teacher (~9x the parameters, ~8x the multiply-adds of
#: ``compact``); ``small`` and ``tiny`` are students at least 10x smaller than ``wide`` in
#: both, ``micro`` (11,021 parameters, ~0.34 M multiply-adds) a student at least 10x
#: smaller than ``compact``, the shipped model (see :func:`n_flops` and docs/benchmarks.md).
ARCHITECTURES: dict[str, tuple[tuple[int, ...], int]] = {
    "micro": ((4, 8, 16, 32), 64),
    "tiny": ((8, 16, 32, 64), 64),
    "small": ((12, 24, 48, 96), 96),
    "compact": ((16, 32, 64, 128), 128),
    "medium": ((32, 64, 128, 256), 128),
    "wide": ((48, 96, 192, 384), 384),
}


class WaferNet(nn.Module):
    """Conv feature extractor → embedding (the penultimate layer) → linear head.

    ``cosine_head`` makes the head act on L2-normalised embeddings: that is how a
    prototype (nearest class mean) head is expressed as ordinary weights, so every head
    saves, loads and exports the same way.
    """

    def __init__(
        self,
        n_outputs: int,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        embed_dim: int = 128,
        cosine_head: bool = False,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, c in enumerate(widths):
            layers += [
                nn.Conv2d(c_in, c, 3, stride=2 if i == 0 else 1, padding=1, bias=False),
                nn.BatchNorm2d(c),
                nn.ReLU(inplace=True),
            ]
            layers.append(nn.MaxPool2d(2))
            c_in = c
        self.features = nn.Sequential(*layers)
        self.embedding = nn.Sequential(nn.Linear(2 * c_in, embed_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(embed_dim, n_outputs)
        self.cosine_head = cosine_head
        self.config: dict[str, Any] = {
            "n_outputs": n_outputs,
            "widths": list(widths),
            "embed_dim": embed_dim,
            "cosine_head": cosine_head,
        }

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3)), f.amax(dim=(2, 3))], dim=1)
        return self.embedding(pooled)

    def classify(self, z: torch.Tensor) -> torch.Tensor:
        if self.cosine_head:
            z = F.normalize(z, dim=1)
        return self.head(self.dropout(z))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.embed(x))


def inference_copy(net: WaferNet) -> WaferNet:
    """An eval-mode copy of ``net`` for prediction: each batch norm folded into the
    convolution before it, weights in channels-last memory (feed it channels-last input).

    On the CPU the plain network spends a fifth of its time in batch norm and runs its
    convolutions in the slower NCHW layout; this copy runs about twice as fast
    (docs/benchmarks.md) and gives the same outputs up to float32 rounding. It cannot be
    trained: its batch norms are gone, so it is rebuilt from ``net`` whenever that changes.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fast = copy.deepcopy(net).eval()
    layers: list[nn.Module] = []
    for layer in fast.features:
        if isinstance(layer, nn.BatchNorm2d) and layers and isinstance(layers[-1], nn.Conv2d):
            layers[-1] = fuse_conv_bn_eval(layers[-1], layer)
        else:
            layers.append(layer)
    fast.features = nn.Sequential(*layers)
    for p in fast.parameters():
        p.requires_grad_(False)
    return fast.to(memory_format=torch.channels_last)


def n_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def n_flops(net: WaferNet, input_size: int) -> int:
    """Floating-point operations of one forward pass on one map (a multiply-add counts 2).

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix
    products; pooling, batch-norm and activations are memory-bound and not counted).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = net.training
    net.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(torch.zeros(1, 3, input_size, input_size))
    net.train(was_training)
    return int(counter.get_total_flops())


#: Share of each augmented batch turned by an exact symmetry of the square (a multiple of
#: 90° and a mirror) instead of an any-angle rotation. Bilinear rotation smooths the input,
#: so a network trained only on rotated maps never sees the sharp 0/1 pixels of a grid
#: whose side equals (or divides) the input side, and misread 30 % of 64×64 Random maps as
#: none (docs/benchmarks.md); exact turns keep that regime in training.
EXACT_TURN_FRACTION = 0.5


def _exact_turns(x: torch.Tensor, quarter: torch.Tensor, mirror: torch.Tensor) -> torch.Tensor:
    """Rotate map ``i`` by ``quarter[i]`` × 90° and mirror it where ``mirror[i]``: no interpolation."""
    out = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    for k in (1, 2, 3):
        sel = quarter == k
        if sel.any():
            out[sel] = torch.rot90(out[sel], k, dims=(2, 3))
    return out


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    rotate: bool = True,
    flip: bool = True,
    max_noise: float = 0.05,
) -> torch.Tensor:
    """Randomly rotate, mirror and sprinkle failing dies over a batch.

    Works on the fraction channels of :func:`to_model_input`. Half the maps
    (:data:`EXACT_TURN_FRACTION`) turn by an exact multiple of 90°, the others by any angle
    with bilinear interpolation: interpolation mixes fractions of the same state only, and
    whatever rotates in from outside the square is off-wafer, so the channels still sum to
    1. The noise turns a random ``d`` ∈ [0, ``max_noise``) of the good area of each map into
    failing area, as random background failures do on real wafers.
    """
    n = x.shape[0]
    if rotate or flip:
        mirror = torch.rand(n, generator=generator) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
        quarter = torch.randint(0, 4, (n,), generator=generator) if rotate else torch.zeros(n, dtype=torch.long)
        angle = torch.rand(n, generator=generator) * (2 * math.pi)
        # Without rotation, mirroring alone is exact for every map.
        exact = torch.rand(n, generator=generator) < EXACT_TURN_FRACTION if rotate else torch.ones(n, dtype=torch.bool)
        x = x.clone()
        x[exact] = _exact_turns(x[exact], quarter[exact], mirror[exact])
        smooth = ~exact
        if smooth.any():
            m = int(smooth.sum())
            cos, sin = torch.cos(angle[smooth]), torch.sin(angle[smooth])
            sign = 1.0 - 2.0 * mirror[smooth].float()
            zero = torch.zeros(m)
            theta = torch.stack([torch.stack([cos * sign, -sin, zero], 1), torch.stack([sin * sign, cos, zero], 1)], 1)
            grid = F.affine_grid(theta, [m, *x.shape[1:]], align_corners=False)
            turned = F.grid_sample(x[smooth], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
            turned[:, 0] += (1.0 - turned.sum(dim=1)).clamp_min(0.0)
            x[smooth] = turned
    if max_noise > 0:
        density = torch.rand(n, 1, 1, 1, generator=generator) * max_noise
        hit = (torch.rand(n, 1, *x.shape[2:], generator=generator) < density).float()
        moved = x[:, 1:2] * hit
        x = torch.cat([x[:, 0:1], x[:, 1:2] - moved, x[:, 2:3] + moved], dim=1)
    return x
