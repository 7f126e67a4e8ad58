"""Graph passes on the exported fused model that make it cheaper to serve, with the same outputs.

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


def optimize_for_serving(model: onnx.ModelProto) -> dict[str, int]:
    """Apply every pass of this module in place; return how often each one fired."""
    return {"merged_gathers": merge_shared_gathers(model)}
