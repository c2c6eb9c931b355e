"""One wrapper around any timm network: preprocessing, pooled embeddings, feature maps.

Every consumer (die classification, anomaly detection, inspection, curation) needs the
same three things from a pretrained network: turn raw inspection images into the tensor
the weights expect, a global embedding per image, and spatial feature maps for patch
methods. Keeping them here means the preprocessing that goes with the weights is written
once and travels with the model (``BackboneConfig``), as timm's ``PretrainedCfg`` does.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fabsight.errors import FabsightError
from fabsight.utils.imaging import as_float_image

HEAD = "head"
"""Layer name for the network's final feature output (``forward_features``)."""


@dataclass
class BackboneConfig:
    """What a user must reproduce to feed the network and what it gives back.

    ``layers`` maps a layer name to ``(channels, stride)``; ``default_layers`` are the
    layers whose pooled outputs make :meth:`Backbone.embed`.
    """

    name: str
    architecture: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    in_chans: int
    weights_source: str
    license: str
    embed_dim: int
    layers: dict[str, tuple[int, int]]
    default_layers: tuple[str, ...]
    weights_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BackboneConfig:
        raw = dict(raw)
        raw["input_size"] = tuple(raw["input_size"])
        raw["mean"] = tuple(raw["mean"])
        raw["std"] = tuple(raw["std"])
        raw["layers"] = {k: tuple(v) for k, v in raw["layers"].items()}
        raw["default_layers"] = tuple(raw["default_layers"])
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in raw.items() if k in known})


def file_sha256(path: str | os.PathLike[str], length: int = 16) -> str:
    """Short content hash of a weights file: part of every embedding-cache key."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def state_dict_sha256(state: dict[str, torch.Tensor], length: int = 16) -> str:
    """Content hash of in-memory weights (for backbones that never existed as one file)."""
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:length]


def _as_float_rgb(image: np.ndarray, index: int) -> torch.Tensor:
    """One image (grey, grey+alpha, RGB, RGBA; uint8/uint16/bool/float in [0, 1]) → 3×H×W in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(as_float_image(image, index)))
    return t[None].expand(3, -1, -1) if t.ndim == 2 else t.permute(2, 0, 1)


class _Stop(Exception):
    """Raised by a forward hook to end a pass once every requested layer has been captured."""


class Backbone:
    """A frozen pretrained network with its preprocessing (see module docstring).

    ``model`` is a timm network (``forward_features`` + named modules); layer outputs are
    captured with forward hooks so any timm model works without per-architecture code.
    """

    def __init__(self, model: nn.Module, cfg: BackboneConfig, *, device: str = "cpu") -> None:
        self.model = model.eval().to(device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cfg = cfg
        self.device = torch.device(device)
        self._is_vit = hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")

    def __repr__(self) -> str:
        return f"Backbone({self.cfg.name!r}, input={self.cfg.input_size}, embed_dim={self.cfg.embed_dim})"

    # preprocessing ---------------------------------------------------------------
    def preprocess(self, images: Sequence[np.ndarray]) -> torch.Tensor:
        """uint8 H×W grey or H×W×3 RGB images of any size → normalised B×3×H×W on the device."""
        if len(images) == 0:
            raise FabsightError(None, "no images to preprocess")
        mean = torch.tensor(self.cfg.mean).view(3, 1, 1)
        std = torch.tensor(self.cfg.std).view(3, 1, 1)
        out = []
        for i, img in enumerate(images):
            t = _as_float_rgb(img, i)[None]
            if tuple(t.shape[-2:]) != tuple(self.cfg.input_size):
                # antialias so that down-scaling a 640 px crop does not alias thin PCB traces
                t = F.interpolate(t, size=self.cfg.input_size, mode=self.cfg.interpolation,
                                  align_corners=False, antialias=True).clamp_(0.0, 1.0)
            out.append((t[0] - mean) / std)
        return torch.stack(out).to(self.device)

    # features ----------------------------------------------------------------------
    def check_layers(self, layers: Sequence[str]) -> None:
        unknown = [name for name in layers if name not in self.cfg.layers]
        if unknown or not layers:
            raise FabsightError(
                self.cfg.name,
                f"unknown layer(s) {unknown or '(none given)'}; this backbone has {', '.join(self.cfg.layers)}",
            )

    @torch.no_grad()
    def _raw(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Layer outputs as the network produces them (ViT: B×N×C tokens incl. prefix).

        Without ``head`` among ``layers`` the forward pass stops once the last requested
        layer has run: PatchCore on ``blocks.2`` / ``blocks.4`` skips most of the network.
        """
        self.check_layers(layers)
        captured: dict[str, torch.Tensor] = {}
        modules = dict(self.model.named_modules())
        wanted = {name for name in layers if name != HEAD}
        stop_early = HEAD not in layers and not torch.compiler.is_exporting()  # torch.export cannot trace the raise

        def hook(name: str, out: torch.Tensor) -> None:
            captured[name] = out
            if stop_early and wanted <= captured.keys():
                raise _Stop

        handles = [modules[name].register_forward_hook(lambda _m, _i, out, name=name: hook(name, out))
                   for name in wanted]
        final = None
        try:
            final = self.model.forward_features(x.to(self.device))
        except _Stop:
            pass
        finally:
            for h in handles:
                h.remove()
        if HEAD in layers:
            captured[HEAD] = final
        if self._is_vit:
            # intermediate ViT blocks get the final norm, as DINOv2's get_intermediate_layers does
            norm = self.model.norm
            captured = {k: (v if k == HEAD else norm(v)) for k, v in captured.items()}
        return captured

    def _grid(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """ViT patch tokens B×N×C → B×C×h×w on the patch grid."""
        n_prefix = self.model.num_prefix_tokens
        patch = self.model.patch_embed.patch_size
        h, w = x.shape[-2] // patch[0], x.shape[-1] // patch[1]
        return tokens[:, n_prefix:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)

    @torch.no_grad()
    def features(self, x: torch.Tensor, layers: Sequence[str]) -> dict[str, torch.Tensor]:
        """Spatial feature maps B×C×h×w per layer (for PatchCore / PaDiM style methods)."""
        raw = self._raw(x, layers)
        if self._is_vit:
            return {k: self._grid(v, x) for k, v in raw.items()}
        return raw

    @torch.no_grad()
    def embed(self, x: torch.Tensor, layers: Sequence[str] | None = None) -> torch.Tensor:
        """Global B×D embedding: per layer, mean-pooled map (ViT: CLS token ⊕ mean patch token), concatenated."""
        layers = tuple(layers or self.cfg.default_layers)
        raw = self._raw(x, layers)
        parts = []
        for name in layers:
            v = raw[name]
            if self._is_vit:
                n_prefix = self.model.num_prefix_tokens
                parts += [v[:, 0], v[:, n_prefix:].mean(dim=1)]
            else:
                parts.append(v.mean(dim=(2, 3)))
        return torch.cat(parts, dim=1).float().cpu()

    def embed_dim_for(self, layers: Sequence[str] | None = None) -> int:
        """Length of :meth:`embed`'s output for ``layers``."""
        layers = tuple(layers or self.cfg.default_layers)
        self.check_layers(layers)
        per = 2 if self._is_vit else 1
        return sum(per * self.cfg.layers[name][0] for name in layers)

    def fingerprint(self) -> str:
        """Stable string naming weights + preprocessing: what an embedding cache is keyed by."""
        c = self.cfg
        return f"{c.name}|{c.architecture}|{c.weights_hash}|{c.input_size}|{c.mean}|{c.std}|{c.interpolation}"


def describe_layers(model: nn.Module, input_size: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Layer name → (channels, stride) for a timm model, from ``feature_info`` or ViT blocks."""
    layers: dict[str, tuple[int, int]] = {}
    if hasattr(model, "patch_embed") and hasattr(model, "blocks"):
        stride = int(model.patch_embed.patch_size[0])
        for i in range(len(model.blocks)):
            layers[f"blocks.{i}"] = (int(model.embed_dim), stride)
        layers[HEAD] = (int(model.embed_dim), stride)
        return layers
    for info in getattr(model, "feature_info", []):
        layers[info["module"]] = (int(info["num_chs"]), int(info["reduction"]))
    model.eval()  # a probe pass in train mode would overwrite BatchNorm running statistics
    with torch.no_grad():
        out = model.forward_features(torch.zeros(1, 3, *input_size))
    if out.ndim != 4:
        raise FabsightError(None, f"{type(model).__name__}: forward_features is not a B×C×H×W map")
    layers[HEAD] = (int(out.shape[1]), round(input_size[0] / out.shape[2]))
    return layers
