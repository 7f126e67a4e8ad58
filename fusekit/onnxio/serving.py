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
import numpy as np
from onnx import numpy_helper

from fusekit.onnxio.optable import default_opset


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


# Ops that act on each channel alone and read nothing but their data input: a chain of them after
# merged Convs computes each source's channels exactly as it did apart.
_PER_CHANNEL = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Elu", "Selu", "HardSigmoid", "Softplus", "Softsign",
                "MaxPool", "AveragePool", "LpPool")


def _attrs_key(node: onnx.NodeProto) -> tuple:
    return tuple(sorted(a.SerializeToString() for a in node.attribute))


def merge_sibling_convs(model: onnx.ModelProto) -> int:
    """Merge Convs that read the same tensor with the same attributes into one Conv over all their
    output channels, with the per-channel ops that follow each of them alike (ReLU, pooling), then
    one Split back into the separate tensors; return how many Convs were merged away.

    The source models of an image pool often start with stems of one shape over the same image:
    one Conv computes its im2col of the image once instead of once per model. Measured on the
    digits CNN pool's fused.onnx (four stems, one thread, the two files timed in alternation,
    15 blocks): batch 1 0.95x (interquartile range 0.93-0.99), batch 256 0.88x (0.87-0.92), outputs
    bit-identical. Gemms are not merged: a wide Gemm and a Split measured slower (see above).
    """
    graph = model.graph
    if default_opset(model) < 13:  # Split takes its sizes as an input from opset 13 on
        return 0
    inits = _initializers(graph)
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)
    outputs = {o.name for o in graph.output}
    groups: dict[tuple, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        if node.op_type != "Conv" or node.domain or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if any(a.name == "group" and a.i != 1 for a in node.attribute):
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is not None and bias not in inits:
            continue
        weight = inits[node.input[1]]
        groups[(node.input[0], _attrs_key(node), tuple(weight.dims[1:]), weight.data_type, bias is None)].append(node)
    merged = 0
    taken = {n for node in graph.node for n in node.output} | set(inits)
    for convs in groups.values():
        if len(convs) < 2:
            continue
        chains = [[c] for c in convs]
        while True:
            nexts = []
            for chain in chains:
                out = chain[-1].output[0]
                uses = consumers.get(out, [])
                if out in outputs or len(uses) != 1 or uses[0].op_type not in _PER_CHANNEL or uses[0].domain \
                        or len(uses[0].input) != 1 or len([o for o in uses[0].output if o]) != 1:
                    break
                nexts.append(uses[0])
            if len(nexts) != len(chains) or len({(n.op_type, _attrs_key(n)) for n in nexts}) != 1:
                break
            for chain, node in zip(chains, nexts):
                chain.append(node)
        merged += len(convs) - 1
        _merge_chains(graph, chains, inits, taken)
    if merged:
        _drop_unused_initializers(graph)
    return merged


def _merge_chains(graph: onnx.GraphProto, chains: list[list[onnx.NodeProto]], inits: dict, taken: set[str]) -> None:
    """Replace parallel chains (Conv, then the same per-channel ops) by one chain and a Split."""
    def fresh(base: str) -> str:
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    first = chains[0][0]
    weights = [numpy_helper.to_array(inits[c[0].input[1]]) for c in chains]
    names = [fresh(f"{first.output[0]}/merged_weight")]
    graph.initializer.append(numpy_helper.from_array(np.concatenate(weights), names[0]))
    if len(first.input) > 2 and first.input[2]:
        names.append(fresh(f"{first.output[0]}/merged_bias"))
        graph.initializer.append(numpy_helper.from_array(
            np.concatenate([numpy_helper.to_array(inits[c[0].input[2]]) for c in chains]), names[-1]))
    sizes = fresh(f"{first.output[0]}/merged_split")
    graph.initializer.append(numpy_helper.from_array(np.array([w.shape[0] for w in weights], np.int64), sizes))
    new: list[onnx.NodeProto] = []
    data = first.input[0]
    for step, node in enumerate(chains[0]):
        merged = onnx.NodeProto()
        merged.CopyFrom(node)
        merged.name = fresh(f"{node.name or node.output[0]}/merged")
        del merged.input[:]
        merged.input.extend([data] + (names if step == 0 else []))
        data = fresh(f"{node.output[0]}/merged")
        del merged.output[:]
        merged.output.append(data)
        new.append(merged)
    new.append(onnx.helper.make_node("Split", [data, sizes], [c[-1].output[0] for c in chains], axis=1,
                                     name=fresh(f"{first.output[0]}/merged_split")))
    dropped = {n.output[0] for chain in chains for n in chain}  # by output name: protobuf copies nodes
    nodes = list(graph.node)
    at = next(i for i, n in enumerate(nodes) if n.output and n.output[0] == first.output[0])
    kept = [n for n in nodes[:at] if n.output[0] not in dropped] + new + [n for n in nodes[at:] if n.output[0] not in dropped]
    del graph.node[:]
    graph.node.extend(kept)


def optimize_for_serving(model: onnx.ModelProto) -> dict[str, int]:
    """Apply every pass of this module in place; return how often each one fired."""
    return {"dropped_index_wraparounds": drop_index_wraparound(model), "merged_convs": merge_sibling_convs(model)}
