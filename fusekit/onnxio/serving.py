"""Graph passes on the exported fused model that make it cheaper to serve, with the same outputs.

``drop_index_wraparound`` removes the negative-id handling the exporter writes in front of
embedding lookups, which ONNX Gather does by itself.

The fused graph holds every source model side by side, and the source models of one pool look
up the same categorical ids in their own embedding tables. ``merge_shared_gathers`` turns
those parallel lookups into one lookup in the tables laid side by side, followed by a Split:
onnxruntime's Gather costs mostly per index, so one wide lookup is much cheaper than several
narrow ones. The values are the same bits; only the work to get them changes.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _initializers(graph: onnx.GraphProto) -> dict[str, onnx.TensorProto]:
    return {init.name: init for init in graph.initializer}


def _axis(node: onnx.NodeProto) -> int:
    for attr in node.attribute:
        if attr.name == "axis":
            return attr.i
    return 0


def _fresh_name(base: str, taken: set[str]) -> str:
    name, k = base, 0
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def merge_shared_gathers(model: onnx.ModelProto) -> int:
    """Merge axis-0 Gathers that read the same indices from 2-D constant tables; return how many groups.

    Tables in a group must share their row count and dtype. The merged lookup is placed where
    the first Gather of the group was, which precedes every consumer of the group's outputs
    because each Gather's only inputs (a constant and the shared indices) are available there.
    """
    graph = model.graph
    inits = _initializers(graph)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for pos, node in enumerate(graph.node):
        if node.op_type != "Gather" or node.domain not in ("", "ai.onnx") or _axis(node) != 0:
            continue
        table = inits.get(node.input[0])
        if table is None or len(table.dims) != 2:
            continue
        groups[(node.input[1], table.dims[0], table.data_type)].append(pos)
    groups = {key: positions for key, positions in groups.items() if len(positions) > 1}
    if not groups:
        return 0

    taken = {v for n in graph.node for v in list(n.input) + list(n.output)} | set(inits)
    replacement: dict[int, list[onnx.NodeProto]] = {}
    drop: set[int] = set()
    new_inits = []
    for (indices, _, _), positions in groups.items():
        nodes = [graph.node[p] for p in positions]
        tables = [numpy_helper.to_array(inits[n.input[0]]) for n in nodes]
        merged = _fresh_name("fusekit_merged_table", taken)
        new_inits.append(numpy_helper.from_array(np.concatenate(tables, axis=1), merged))
        wide = _fresh_name("fusekit_merged_lookup", taken)
        widths = _fresh_name("fusekit_merged_widths", taken)
        new_inits.append(numpy_helper.from_array(np.array([t.shape[1] for t in tables], dtype=np.int64), widths))
        replacement[positions[0]] = [
            helper.make_node("Gather", [merged, indices], [wide], name=_fresh_name("fusekit_merged_gather", taken),
                             axis=0),
            helper.make_node("Split", [wide, widths], [n.output[0] for n in nodes],
                             name=_fresh_name("fusekit_merged_split", taken), axis=-1),
        ]
        drop.update(positions)

    rebuilt = []
    for pos, node in enumerate(graph.node):
        if pos in replacement:
            rebuilt.extend(replacement[pos])
        elif pos not in drop:
            rebuilt.append(node)
    del graph.node[:]
    graph.node.extend(rebuilt)
    graph.initializer.extend(new_inits)
    _drop_unused_initializers(graph)
    return len(groups)


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
    return {"dropped_index_wraparounds": drop_index_wraparound(model), "merged_gathers": merge_shared_gathers(model)}
