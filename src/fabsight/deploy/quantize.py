"""INT8 recipes for ONNX Runtime: which quantization a graph gets, and the code that applies it.

One recipe does not fit every model. A wafer CNN decides by a softmax over a few logits,
so small int8 errors rarely change a decision; die and anomaly models use backbone
*features* (a probe standardises every embedding dimension, PatchCore / PaDiM measure
distances in feature space), so errors in low-variance channels are amplified.

The recipes here were measured on real data (``benchmarks/int8_recipes.py``,
docs/benchmarks.md "INT8 recipes"). On x86 CPUs without VNNI (AVX2 / AVX-512 only, like
the reference machine) ONNX Runtime's fast u8×s8 kernels add pairs of products in 16
bits, which saturates with full 8-bit weights; 7-bit weights (``reduce_range``, what the
onnxruntime ``quantize_static`` documentation advises there) halve the damage but still
cost the die probe 4–5 points. Only uint8 weights (u8u8, another kernel without that
shortcut) kept die accuracy and anomaly AUROC within a point, and that kernel is slower
than fp32 on such CPUs: INT8 there buys size, not speed. Every recipe is static QDQ with
activations calibrated on real images of the model's own data, except ``dynamic``
(weights only, activation ranges computed per batch at run time).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Node groups a recipe may keep in float (see :func:`sensitive_nodes`).
NODE_GROUPS = ("first_conv", "depthwise", "last")


@dataclass(frozen=True)
class Int8Recipe:
    """How a float graph becomes INT8.

    Parameters
    ----------
    name : short name written into the card.
    dynamic : ``quantize_dynamic`` (uint8 weights, activation ranges per batch at run time)
        instead of static QDQ with calibrated activations.
    activations, weights : ``"uint8"`` or ``"int8"``.
    per_channel : one weight scale per output channel (matters for depthwise convolutions).
    reduce_range : 7-bit weights: no u8×s8 saturation on CPUs without VNNI.
    calibration : ``"minmax"``, ``"percentile"`` (99.999th) or ``"entropy"``.
    keep_float : node groups of :data:`NODE_GROUPS` left in float.
    op_types : quantize only these operator types (None: every type onnxruntime can).
        ``("Conv",)`` keeps residual adds, pooling and the concatenated embedding in float:
        by default the embedding itself is rounded to 8 bits with one scale for all its
        dimensions, which a probe or a feature-space distance cannot afford.
    """

    name: str
    dynamic: bool = False
    activations: str = "uint8"
    weights: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    calibration: str = "minmax"
    keep_float: tuple[str, ...] = ()
    op_types: tuple[str, ...] | None = None

    def describe(self) -> str:
        """One line for the card: what a reader needs to reproduce the graph."""
        if self.dynamic:
            head = f"onnxruntime dynamic quantization: {self.weights} weights, activations quantized per batch"
        else:
            head = (f"onnxruntime static quantization: QDQ, {self.activations} activations calibrated "
                    f"({self.calibration}) on the export sample, {self.weights} weights")
        parts = [head, "per-channel" if self.per_channel else "per-tensor"]
        if self.reduce_range:
            parts.append("7-bit weights (reduce_range: no u8×s8 saturation on CPUs without VNNI)")
        if self.op_types is not None:
            parts.append("only " + ", ".join(self.op_types) + " quantized (adds, pooling, outputs stay float)")
        if self.keep_float:
            parts.append("kept in float: " + ", ".join(self.keep_float))
        return "; ".join(parts)


#: Every recipe the benchmark compares; ``export --int8`` uses :data:`WAFER_RECIPE` or :data:`FEATURE_RECIPE`.
RECIPES: dict[str, Int8Recipe] = {r.name: r for r in (
    Int8Recipe("u8s8"),
    Int8Recipe("u8s8-reduce", reduce_range=True),
    Int8Recipe("u8s8-reduce-percentile", reduce_range=True, calibration="percentile"),
    Int8Recipe("u8s8-reduce-keep-first-last", reduce_range=True, keep_float=("first_conv", "last")),
    Int8Recipe("u8s8-keep-depthwise", keep_float=("depthwise",)),
    Int8Recipe("u8s8-reduce-keep-depthwise", reduce_range=True, keep_float=("depthwise",)),
    Int8Recipe("u8s8-reduce-keep-sensitive", reduce_range=True, keep_float=("first_conv", "depthwise", "last")),
    Int8Recipe("s8s8", activations="int8"),
    Int8Recipe("u8u8", weights="uint8"),
    Int8Recipe("dynamic-u8", dynamic=True, weights="uint8"),
    Int8Recipe("conv-u8s8", op_types=("Conv",)),
    Int8Recipe("conv-u8s8-reduce", reduce_range=True, op_types=("Conv",)),
    Int8Recipe("conv-u8s8-reduce-keep-last", reduce_range=True, op_types=("Conv",), keep_float=("last",)),
    Int8Recipe("conv-u8s8-reduce-keep-first-last", reduce_range=True, op_types=("Conv",),
               keep_float=("first_conv", "last")),
)}
#: Wafer CNNs: every recipe measured kept their decisions (99.2–100 % agreement), u8s8 is the fastest of them.
WAFER_RECIPE = RECIPES["u8s8"]
#: Die and anomaly feature graphs: the only recipe within a point of fp32 on real data (DeepPCB
#: crops, magnetic tile); on CPUs without VNNI it is *slower* than fp32 and saves only size.
FEATURE_RECIPE = RECIPES["u8u8"]


def _group(node: Any) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)


def sensitive_nodes(graph: Any, groups: Iterable[str]) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes of ``graph`` (an ``onnx.GraphProto``) in ``groups``.

    ``first_conv``: the Conv(s) reading the graph input; ``depthwise``: Convs with one
    group per channel (group > 1); ``last``: the weighted nodes nearest each output,
    found by walking back from the outputs through weight-free nodes (pooling, adds,
    activations, concatenation). Found from the topology because exported node names
    (``node_Conv_863``) say nothing about where a node sits.
    """
    groups = set(groups)
    unknown = groups - set(NODE_GROUPS)
    if unknown:
        raise ValueError(f"unknown node groups {sorted(unknown)}; known: {', '.join(NODE_GROUPS)}")
    weighted = ("Conv", "Gemm", "MatMul")
    producer = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input}
    names: list[str] = []
    if "first_conv" in groups:
        names += [n.name for n in graph.node if n.op_type == "Conv" and n.input[0] in inputs]
    if "depthwise" in groups:
        names += [n.name for n in graph.node if n.op_type == "Conv" and _group(n) > 1]
    if "last" in groups:
        stack, seen = [o.name for o in graph.output], set()
        while stack:
            node = producer.get(stack.pop())
            if node is None or node.name in seen:
                continue
            seen.add(node.name)
            if node.op_type in weighted:
                names.append(node.name)
            else:
                stack.extend(node.input)
    return list(dict.fromkeys(names))


class _SampleReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over a preprocessed sample batch."""

    def __init__(self, x: np.ndarray, input_name: str, batch: int = 32) -> None:
        self._batches = iter([{input_name: x[s : s + batch]} for s in range(0, len(x), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def quantize(fp32: Path, out: Path, x: np.ndarray, work: Path, input_name: str,
             recipe: Int8Recipe = FEATURE_RECIPE) -> dict[str, Any]:
    """Write the INT8 graph of ``fp32`` to ``out`` following ``recipe``; activations calibrated on ``x``.

    ``x`` must be real preprocessed inputs of the model's own data: ranges calibrated on
    noise leave real activations clipped. Returns the card's description of what was done.
    """
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = work / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    keep = sensitive_nodes(onnx.load(str(prepared)).graph, recipe.keep_float)
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    common: dict[str, Any] = {"per_channel": recipe.per_channel, "reduce_range": recipe.reduce_range,
                              "weight_type": types[recipe.weights], "nodes_to_exclude": keep,
                              "op_types_to_quantize": None if recipe.op_types is None else list(recipe.op_types)}
    # onnxruntime's calibrators print progress to stdout, which belongs to `--json` output
    with contextlib.redirect_stdout(sys.stderr):
        if recipe.dynamic:
            quantize_dynamic(str(prepared), str(out), **common)
        else:
            methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                       "entropy": CalibrationMethod.Entropy}
            quantize_static(str(prepared), str(out), _SampleReader(x, input_name), quant_format=QuantFormat.QDQ,
                            activation_type=types[recipe.activations], calibrate_method=methods[recipe.calibration],
                            **common)
    return {"recipe": recipe.name, "method": recipe.describe(), "nodes_kept_float": len(keep),
            "calibration_inputs": 0 if recipe.dynamic else len(x)}


def speed_vs_fp32(fp32: Path, int8: Path, x: np.ndarray, input_name: str, n_threads: int, batch: int = 16) -> float:
    """Throughput of the INT8 graph ÷ that of the fp32 one on ``batch`` inputs of ``x``, on this machine.

    Measured in process CPU time (steadier than wall time on a shared machine): > 1 means
    the INT8 graph is faster.
    Recorded in the card because whether INT8 is faster depends on the CPU: without VNNI
    the accurate recipe for feature models is several times slower than fp32.
    """
    from fabsight.runtimes import session
    from fabsight.utils.timing import median_times

    xb = x[:batch]
    cpu = []
    for graph in (fp32, int8):
        sess = session(graph, n_threads)
        cpu.append(median_times(lambda s=sess: s.run(None, {input_name: xb}), 3)[1])
    return round(cpu[0] / max(cpu[1], 1e-9), 2)
