"""Dynamic int8 quantisation of a model's weights with onnxruntime's own tool.

``onnxruntime.quantization.quantize_dynamic`` stores the weights of MatMul and Gather (embedding
tables) as int8 and quantises activations at run time. fusekit's exporters write Linear layers
as Gemm, which that tool leaves in float, so a Gemm with a constant weight is first rewritten as
the MatMul + Add it computes (same result up to float rounding).

The first layers (MatMuls with no MatMul before them: those that read the embeddings and the
standardised dense columns) keep float weights. Dynamic quantisation takes one range per
activation tensor for the whole batch, and standardised dense columns have outliers (Census:
up to 50 standard deviations), so quantising those layers cost 0.013 to 0.028 test AUC at batch
4096 on the bundled models; without them the loss is below 0.0002 (benchmarks/bench_quantize.py).
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
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [product], name=f"{node.name or node.output[0]}_matmul"))
        if has_bias:
            nodes.append(helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name or node.output[0]}_bias"))
        rewritten += 1
    del graph.node[:]
    graph.node.extend(nodes)
    # Weights no node reads any more (the Gemm layouts) would only make the file larger.
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return rewritten


def first_layers(graph: onnx.GraphProto) -> list[str]:
    """Names of the MatMul nodes that no MatMul or Gemm precedes (they read the model's inputs)."""
    producer = {out: node for node in graph.node for out in node.output}
    firsts = []
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        stack, seen, deep = [node.input[0]], set(), False
        while stack and not deep:
            tensor = stack.pop()
            if tensor in seen or tensor not in producer:
                continue
            seen.add(tensor)
            deep = producer[tensor].op_type in ("MatMul", "Gemm")
            stack.extend(producer[tensor].input)
        if not deep:
            firsts.append(node.name)
    return firsts


def quantize_model(model: onnx.ModelProto, method: str = "dynamic", *, first_layers_float: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` with int8 weights (``method``: ``dynamic``); metadata kept.
    ``first_layers_float``: keep the layers fed by the inputs in float (see the module docstring)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if method not in METHODS:
        raise FusekitError(f"unknown quantisation {method!r}; use one of {', '.join(METHODS)}")
    work = onnx.ModelProto()
    work.CopyFrom(model)
    gemm_as_matmul(work)
    for k, node in enumerate(work.graph.node):
        node.name = node.name or f"fusekit_node_{k}"  # nodes are excluded by name
    exclude = first_layers(work.graph) if first_layers_float else []
    with tempfile.TemporaryDirectory(prefix="fusekit-quantize-") as tmp:
        out = Path(tmp) / "quantized.onnx"
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # the tool's advice to pre-process, on the root logger
        try:
            quantize_dynamic(work, out, op_types_to_quantize=QUANTIZED_OPS, nodes_to_exclude=exclude,
                             weight_type=QuantType.QInt8)
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
