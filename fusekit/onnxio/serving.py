"""Graph passes on the exported fused model that make it cheaper to serve, with the same outputs.

``drop_index_wraparound`` removes the negative-id handling the exporter writes in front of
embedding lookups, which ONNX Gather does by itself.

The source models of one pool look up the same ids in their own tables. One lookup in the
tables laid side by side, then a Split, was measured and dropped: at batch 4096 onnxruntime's
Split into blocks of a few floats cost twice what the separate lookups it saved cost
(benchmarks/bench_serving.py --profile), and at batch 1 it saved a few ops of 180.
"""
from __future__ import annotations

from collections import defaultdict

import onnx
from onnx import numpy_helper


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in graph.initializer}


def _axis(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "axis":
            return attr.i
    return 0


def _drop_unused_initializers(graph: onnx.GraphProto) -> None:
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    keep = [init for init in graph.initializer if init.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _scalar(inits: dict[str, onnx.TensorProto], name: str) -> float | None:
    if name not in inits:
        return None
    value = numpy_helper.to_array(inits[name])
    return value.item() if value.size == 1 else None


def _index_consumers_ok(name: str, rows: int, consumers: dict, inits: dict) -> bool:
    """Every use of ``name`` is, possibly through Reshapes, the indices of an axis-0 Gather of a
    constant table with ``rows`` rows."""
    uses = consumers.get(name, [])
    if not uses:
        return False
    for node in uses:
        if node.op_type == "Reshape" and node.input[0] == name:
            if not _index_consumers_ok(node.output[0], rows, consumers, inits):
                return False
        elif node.op_type == "Gather" and node.input[1] == name and node.input[0] != name and _axis(node) == 0:
            table = inits.get(node.input[0])
            if table is None or not table.dims or table.dims[0] != rows:
                return False
        else:
            return False
    return True


def drop_index_wraparound(model: onnx.ModelProto) -> int:
    """Remove ``Where(x < 0, x + n, x)`` in front of Gathers from n-row tables; return how many.

    torch's index_select needs non-negative ids, so the exporter writes this wrap-around before
    each lookup; ONNX Gather accepts ids in [-n, n) itself and rejects the rest exactly as
    before, so the three ops compute nothing the Gather does not.
    """
    graph = model.graph
    inits = _initializers(graph)
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    outputs = {o.name for o in graph.output}
    rewired: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "Where" or node.output[0] in outputs:
            continue
        cond, shifted, ids = node.input
        less, add = producer.get(cond), producer.get(shifted)
        if less is None or add is None or less.op_type != "Less" or add.op_type != "Add":
            continue
        if list(less.input) != [ids, less.input[1]] or _scalar(inits, less.input[1]) != 0:
            continue
        if ids not in add.input:
            continue
        rows = _scalar(inits, add.input[1] if add.input[0] == ids else add.input[0])
        if rows is None or not _index_consumers_ok(node.output[0], int(rows), consumers, inits):
            continue
        rewired[node.output[0]] = ids
    if not rewired:
        return 0
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rewired:
                node.input[i] = rewired[name]
    _drop_dead_nodes(graph)
    _drop_unused_initializers(graph)
    return len(rewired)


def _drop_dead_nodes(graph: onnx.GraphProto) -> None:
    """Remove nodes none of whose outputs is used (repeatedly, so chains go too)."""
    while True:
        used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
        live = [node for node in graph.node if any(out in used for out in node.output)]
        if len(live) == len(graph.node):
            return
        del graph.node[:]
        graph.node.extend(live)


def optimize_for_serving(model: onnx.ModelProto) -> dict[str, int]:
    """Apply every pass of this module in place; return how often each one fired."""
    return {"dropped_index_wraparounds": drop_index_wraparound(model)}
