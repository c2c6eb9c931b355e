"""Backbone registry: one entry point, ``create_backbone``, for names, timm models and directories.

Like timm's ``@register_model``, each named backbone is a small factory registered under
its name; all factories live in :mod:`fabsight.backbones.zoo`, imported from one place
(``fabsight.backbones.__init__``) so registration never depends on scattered imports.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import torch

from fabsight.artifacts import ModelCard, load_card, save_card
from fabsight.backbones.base import Backbone, BackboneConfig, describe_layers, file_sha256
from fabsight.errors import FabsightError, ModelError

BACKBONE_TASK = "backbone"
WEIGHTS_FILE = "backbone.safetensors"
TIMM_PREFIX = "timm:"


class BackboneFactory(Protocol):
    def __call__(self, *, device: str, weights: str | None, input_size: tuple[int, int] | None) -> Backbone: ...


_REGISTRY: dict[str, BackboneFactory] = {}


def register_backbone(name: str) -> Callable[[BackboneFactory], BackboneFactory]:
    """Decorator: register ``factory(*, device, weights, input_size) -> Backbone`` under ``name``."""

    def wrap(factory: BackboneFactory) -> BackboneFactory:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return wrap


def list_backbones() -> list[str]:
    """Registered names; ``timm:<model>`` with ``weights=`` and backbone directories work too."""
    return sorted(_REGISTRY)


def _size(input_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if input_size is None:
        return None
    if isinstance(input_size, int):
        return (input_size, input_size)
    return (int(input_size[0]), int(input_size[1]))


def create_backbone(
    name_or_dir: str | os.PathLike[str],
    *,
    device: str = "cpu",
    weights: str | os.PathLike[str] | None = None,
    input_size: int | tuple[int, int] | None = None,
) -> Backbone:
    """Build a frozen backbone by registered name, ``timm:<model>`` (+ ``weights``) or directory.

    ``input_size`` overrides the default square/rectangular input (e.g. small inputs in
    tests); ``weights`` points a named backbone at a local checkpoint instead of its default.
    """
    size = _size(input_size)
    w = None if weights is None else str(weights)
    if w is not None and not Path(w).is_file():
        raise FabsightError(w, "weights file does not exist")
    key = str(name_or_dir)
    if key in _REGISTRY:
        return _REGISTRY[key](device=device, weights=w, input_size=size)
    if key.startswith(TIMM_PREFIX):
        return _timm_backbone(key[len(TIMM_PREFIX):], device=device, weights=w, input_size=size)
    if Path(key).is_dir():
        return load_backbone_dir(key, device=device, input_size=size)
    raise FabsightError(
        key,
        f"unknown backbone; known: {', '.join(list_backbones())}, 'timm:<model>' with weights=FILE, "
        "or a directory written by 'fabsight die adapt'",
    )


def _timm_backbone(
    arch: str, *, device: str, weights: str | None, input_size: tuple[int, int] | None
) -> Backbone:
    """Any timm architecture with local weights (timm's own loader: head dropped, pos-embed resampled)."""
    import timm

    if not timm.is_model(arch):
        raise FabsightError(f"{TIMM_PREFIX}{arch}", "timm has no such model")
    if weights is None:
        raise FabsightError(f"{TIMM_PREFIX}{arch}", "needs weights=<local file> (nothing is downloaded)")
    kwargs: dict[str, Any] = {}
    if input_size is not None and "vit" in arch:
        kwargs["img_size"] = input_size
    try:
        model = timm.create_model(arch, pretrained=True, num_classes=0,
                                  pretrained_cfg_overlay={"file": weights}, **kwargs)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise FabsightError(weights, f"does not load into timm '{arch}': {str(exc).splitlines()[0]}") from None
    pcfg = model.pretrained_cfg
    size = input_size or tuple(pcfg["input_size"][1:])
    layers = describe_layers(model, size)
    cfg = BackboneConfig(
        name=f"{TIMM_PREFIX}{arch}", architecture=arch, input_size=size,
        mean=tuple(pcfg["mean"]), std=tuple(pcfg["std"]), interpolation=pcfg.get("interpolation", "bicubic"),
        in_chans=3, weights_source=str(Path(weights).resolve()), license=pcfg.get("license", "unknown"),
        embed_dim=layers["head"][0], layers=layers, default_layers=("head",), weights_hash=file_sha256(weights),
    )
    return Backbone(model, cfg, device=device)


def save_backbone_dir(out_dir: str | os.PathLike[str], backbone: Backbone, *, training: dict[str, Any]) -> None:
    """Write ``backbone`` into ``out_dir`` (weights + card) so ``create_backbone(out_dir)`` loads it.

    ``out_dir`` is expected to be a temporary directory from ``atomic_dir``.
    """
    from fabsight.utils.tensors import save_tensors

    out = Path(out_dir)
    save_tensors(backbone.model.state_dict(), out / WEIGHTS_FILE)
    cfg = BackboneConfig.from_dict(backbone.cfg.to_dict())
    cfg.weights_hash = file_sha256(out / WEIGHTS_FILE)
    card = ModelCard(
        task=BACKBONE_TASK,
        input={"size": list(cfg.input_size), "mean": list(cfg.mean), "std": list(cfg.std),
               "interpolation": cfg.interpolation, "channels": "RGB (grey replicated)", "scale": "pixel/255"},
        backbone=cfg.to_dict(),
        training=training,
        files={"weights": WEIGHTS_FILE},
    )
    save_card(out, card)


def load_backbone_dir(
    path: str | os.PathLike[str], *, device: str = "cpu", input_size: tuple[int, int] | None = None
) -> Backbone:
    """Load a directory written by :func:`save_backbone_dir` (e.g. by ``fabsight die adapt``)."""
    import timm
    from safetensors.torch import load_file

    card = load_card(path, task=BACKBONE_TASK)
    if not card.backbone:
        raise ModelError(path, "backbone card has no 'backbone' section")
    cfg = BackboneConfig.from_dict(card.backbone)
    kwargs: dict[str, Any] = {"img_size": cfg.input_size, "dynamic_img_size": True} if "vit" in cfg.architecture else {}
    model = timm.create_model(cfg.architecture, pretrained=False, num_classes=0, **kwargs)
    state = load_file(str(Path(path) / card.files["weights"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelError(path, f"weights do not fit '{cfg.architecture}': {str(exc).splitlines()[0]}") from None
    if input_size is not None and input_size != cfg.input_size:
        if "vit" in cfg.architecture:
            raise ModelError(path, "a ViT backbone directory runs at the input size it was adapted at")
        cfg.input_size = input_size
    return Backbone(model, cfg, device=device)


def resample_vit_pos_embed(state: dict[str, torch.Tensor], grid: tuple[int, int]) -> dict[str, torch.Tensor]:
    """Bicubic, non-antialiased resampling of a 1-prefix-token pos-embed to ``grid``.

    Non-antialiased because that is what Hugging Face's Dinov2 export (and so the saliency
    fine-tune of the recovered weights) used at 224 px; matching it keeps the weights exact.
    """
    from timm.layers import resample_abs_pos_embed

    pos = state["pos_embed"]
    if pos.shape[1] - 1 == grid[0] * grid[1]:
        return state
    state = dict(state)
    state["pos_embed"] = resample_abs_pos_embed(pos, list(grid), num_prefix_tokens=1,
                                                interpolation="bicubic", antialias=False)
    return state
