"""Dynamic int8 quantisation of a model's weights with onnxruntime's own tool.

``onnxruntime.quantization.quantize_dynamic`` stores the weights of MatMul and Gather (embedding
tables) as int8 and quantises activations at run time. fusekit's exporters write Linear layers
as Gemm, which that tool leaves in float, so a Gemm with a constant weight is first rewritten as
the MatMul + Add it computes (same result up to float rounding).
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fusekit.errors import FusekitError

METHODS = ("dynamic",)
QUANTIZED_OPS = ["MatMul", "Gather"]


def gemm_as_matmul(model: onnx.ModelProto) -> int:
    """Rewrite, in place, every ``Gemm(A, W, C)`` of the main graph whose ``W`` is an initializer and
    whose alpha, beta and transA are the defaults, as ``MatMul(A, W') + C``; returns how many."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    nodes, rewritten = [], 0
    for node in graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        plain = attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0 and not attrs.get("transA", 0)
        if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or not plain or node.input[1] not in inits:
            nodes.append(node)
            continue
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            weight = weight.T
        name = f"{node.output[0]}.fusekit_matmul_weight"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight), name))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}.fusekit_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=f"{node.name}_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    # Weights no node reads any more (the Gemm layouts) would only make the file larger.
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return rewritten


def quantize_model(model: onnx.ModelProto, method: str = "dynamic") -> onnx.ModelProto:
    """A copy of ``model`` with int8 weights (``method``: ``dynamic``); metadata kept."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if method not in METHODS:
        raise FusekitError(f"unknown quantisation {method!r}; use one of {', '.join(METHODS)}")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    gemm_as_matmul(work)
    with tempfile.TemporaryDirectory(prefix="fusekit-quantize-") as tmp:
        out = Path(tmp) / "quantized.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the tool's advice to pre-process, on the root logger
        try:
            quantize_dynamic(work, out, op_types_to_quantize=QUANTIZED_OPS, weight_type=QuantType.QInt8)
        except Exception as exc:  # the tool raises plain exceptions for graphs it cannot handle
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise FusekitError(f"onnxruntime's quantize_dynamic failed on this model ({first[:200]}); "
                               "export it without quantisation") from exc
        finally:
            root.setLevel(level)
        quantized = onnx.load(str(out))
    del quantized.metadata_props[:]
    quantized.metadata_props.extend(model.metadata_props)
    return quantized
