"""INT8 recipes (fabsight.deploy.quantize) on a small hand-built graph with a known topology.

The graph is a miniature of the EfficientNet-Lite feature graphs that die and anomaly
models export: a stem conv reading the input, a depthwise conv, a pointwise conv, ReLU6
(Clip) activations, global pooling of two stages and a concatenation. Where each node
sits is known, so node selection has exact answers; every recipe must give a graph that
ONNX Runtime runs and that stays close to the float one on the calibration data's kind.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fabsight.deploy.quantize import RECIPES, Int8Recipe, quantize, sensitive_nodes
from fabsight.runtimes import session


def _graph(path: Path) -> Path:
    rng = np.random.default_rng(0)

    def init(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.normal(0, scale, shape)).astype(np.float32), name)

    inits = [init("w_stem", (8, 3, 3, 3), 0.3), init("b_stem", (8,), 0.1),
             init("w_dw", (8, 1, 3, 3), 0.4), init("b_dw", (8,), 0.1),
             init("w_pw", (16, 8, 1, 1), 0.3), init("b_pw", (16,), 0.1),
             numpy_helper.from_array(np.array(0, np.float32), "zero"),
             numpy_helper.from_array(np.array(6, np.float32), "six"),
             numpy_helper.from_array(np.array([2, 3], np.int64), "axes")]
    nodes = [
        helper.make_node("Conv", ["x", "w_stem", "b_stem"], ["s"], name="stem", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["s", "zero", "six"], ["s6"], name="act0"),
        helper.make_node("Conv", ["s6", "w_dw", "b_dw"], ["d"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["d", "zero", "six"], ["d6"], name="act1"),
        helper.make_node("Conv", ["d6", "w_pw", "b_pw"], ["p"], name="pw"),
        helper.make_node("ReduceMean", ["d6", "axes"], ["m1"], name="pool1", keepdims=0),
        helper.make_node("ReduceMean", ["p", "axes"], ["m2"], name="pool2", keepdims=0),
        helper.make_node("Concat", ["m1", "m2"], ["emb"], name="cat", axis=1),
    ]
    g = helper.make_graph(nodes, "mini", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 16, 16])],
                          [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["batch", 24])], inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def fp32(tmp_path_factory) -> Path:
    return _graph(tmp_path_factory.mktemp("quant") / "mini.onnx")


def _images(seed: int, n: int) -> np.ndarray:
    """Smooth, image-like inputs (blurred noise) in the normalised range [-1, 1]."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 3, 16, 16)).astype(np.float32)
    x = (x + np.roll(x, 1, 2) + np.roll(x, 1, 3) + np.roll(x, (1, 1), (2, 3))) / 4
    return np.clip(x, -1, 1).astype(np.float32)


def test_sensitive_nodes_found_from_the_topology(fp32) -> None:
    graph = onnx.load(str(fp32)).graph
    assert sensitive_nodes(graph, ["first_conv"]) == ["stem"]
    assert sensitive_nodes(graph, ["depthwise"]) == ["dw"]
    # both pooled stages feed the output: the pointwise conv and, through ReLU6, the depthwise one
    assert sorted(sensitive_nodes(graph, ["last"])) == ["dw", "pw"]
    assert sorted(sensitive_nodes(graph, ["first_conv", "depthwise", "last"])) == ["dw", "pw", "stem"]
    assert sensitive_nodes(graph, []) == []
    with pytest.raises(ValueError, match="unknown node groups"):
        sensitive_nodes(graph, ["stem"])


def _weights_of(model: onnx.ModelProto, node: str) -> np.ndarray | None:
    """The int8/uint8 weight initializer a node's weights are dequantized from (None: still float)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name: i for i in model.graph.initializer}
    conv = next(n for n in model.graph.node if n.name == node)
    src = producers.get(conv.input[1])
    if src is None:
        assert inits[conv.input[1]].data_type == TensorProto.FLOAT
        return None
    assert src.op_type == "DequantizeLinear"
    return numpy_helper.to_array(inits[src.input[0]])


@pytest.mark.parametrize("name", [n for n, r in RECIPES.items() if not r.dynamic])
def test_every_static_recipe_runs_and_stays_close(fp32, tmp_path, name) -> None:
    recipe = RECIPES[name]
    calib, test = _images(1, 64), _images(2, 32)
    out = tmp_path / "q.onnx"
    info = quantize(fp32, out, calib, tmp_path, "x", recipe)
    assert info["recipe"] == name and info["method"] == recipe.describe() and info["calibration_inputs"] == 64
    want = session(fp32, 1).run(None, {"x": test})[0]
    got = session(out, 1).run(None, {"x": test})[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 0.1 * np.abs(want).max()
    model = onnx.load(str(out))
    producer = {o: n.op_type for n in model.graph.node for o in n.output}
    # by default the embedding itself is rounded to 8 bits; conv-only recipes leave it float
    assert producer["emb"] == ("Concat" if recipe.op_types == ("Conv",) else "DequantizeLinear")
    kept = set(sensitive_nodes(model.graph, recipe.keep_float))
    assert info["nodes_kept_float"] == len(kept)
    for node in ("stem", "dw", "pw"):
        w = _weights_of(model, node)
        assert (w is None) == (node in kept), node
        if w is not None and recipe.weights == "int8":
            top = np.abs(w.astype(int)).max()  # symmetric: ±64 with 7-bit weights (reduce_range), else ±127
            assert top == (64 if recipe.reduce_range else 127)


def test_dynamic_recipe_quantizes_weights_only(fp32, tmp_path) -> None:
    out = tmp_path / "dyn.onnx"
    info = quantize(fp32, out, _images(1, 8), tmp_path, "x", RECIPES["dynamic-u8"])
    assert info["calibration_inputs"] == 0
    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert "ConvInteger" in ops and "QuantizeLinear" not in ops
    x = _images(3, 4)
    want = session(fp32, 1).run(None, {"x": x})[0]
    assert np.abs(session(out, 1).run(None, {"x": x})[0] - want).max() <= 0.1 * np.abs(want).max()


def test_recipe_description_names_what_matters() -> None:
    text = Int8Recipe("r", reduce_range=True, keep_float=("first_conv",), calibration="percentile").describe()
    assert "7-bit weights" in text and "first_conv" in text and "percentile" in text and "QDQ" in text
    assert "dynamic" in Int8Recipe("d", dynamic=True, weights="uint8").describe()


def _deeppcb_windows(root: Path, list_name: str, n: int, seed: int) -> list[np.ndarray]:
    """160-px windows at random places of the first ``n`` test scans of a DeepPCB list."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for line in (root / list_name).read_text().split()[::2][:n]:
        img = cv2.imread(str(root / line.replace(".jpg", "_test.jpg")), cv2.IMREAD_GRAYSCALE)
        y, x = rng.integers(0, np.array(img.shape) - 160)
        out.append(img[y : y + 160, x : x + 160])
    return out


def _has_vnni() -> bool:
    try:
        return "vnni" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.slow  # exports the real EfficientNet-Lite0 (~35 s on 2 loaded cores)
def test_feature_recipe_keeps_real_efficientnet_features_on_deeppcb(shared, tmp_path) -> None:
    """The die/anomaly recipe on the real backbone and real PCB scans: calibrated on trainval
    windows, compared with fp32 on test windows. Without VNNI the fast u8s8 recipe of
    session 2 saturates and bends the features; the chosen recipe must not."""
    import torch

    from fabsight.backbones import create_backbone
    from fabsight.deploy.export import export_module
    from fabsight.deploy.quantize import FEATURE_RECIPE

    root = shared / "data" / "deeppcb"
    bb = create_backbone("efficientnet_lite0", device="cpu", input_size=64)
    calib = bb.preprocess(_deeppcb_windows(root, "trainval.txt", 32, 0)).numpy()
    test = bb.preprocess(_deeppcb_windows(root, "test.txt", 32, 1)).numpy()

    class Graph(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = bb.model

        def forward(self, images: torch.Tensor) -> torch.Tensor:
            return bb.embed(images, ("blocks.6", "head"))

    export_module(Graph().eval(), torch.from_numpy(calib[:2]), tmp_path / "f.onnx", 18, input_name="images",
                  output_names=["embedding"])
    want = session(tmp_path / "f.onnx", 2).run(None, {"images": test})[0]

    def cosine(recipe: Int8Recipe) -> float:
        (tmp_path / recipe.name).mkdir()
        quantize(tmp_path / "f.onnx", tmp_path / f"{recipe.name}.onnx", calib, tmp_path / recipe.name, "images",
                 recipe)
        got = session(tmp_path / f"{recipe.name}.onnx", 2).run(None, {"images": test})[0]
        return float(np.mean(np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)))

    kept = cosine(FEATURE_RECIPE)
    assert kept > 0.97  # measured 0.990 on the reference machine
    if not _has_vnni():
        assert cosine(RECIPES["u8s8"]) < kept - 0.2  # measured 0.65: 16-bit saturation of u8×s8
