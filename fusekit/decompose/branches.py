"""Parallel branches: cut a model's deep path while the paths beside it are carried along.

Dominator cuts (``align.cut_points``) need a tensor that every input-to-output path passes
through. Wide&Deep (a wide linear on the raw inputs added to the MLP's logit), DeepFM (an FM
term computed from the MLP's own embeddings), DCN-parallel (a cross network beside the MLP,
concatenated before the head) and two-tower models have none inside their deep part. Here the
model is cut along one path, and every other tensor that is still needed after a cut is
*carried*: the component before the cut outputs it beside ``y``, the next one passes it on.

The rules, precisely (positions are along the deep path):

- **Deep path**: the input-to-output path of the data graph through the most parametric
  (``primary``) ops, ties broken by the number of ops. Its last parametric op starts the
  head; so does a Concat of two or more data tensors reached from there through reshapes and
  Concats only (DCN's ``Linear(concat(cross, deep))``: the concatenation is the head's input).
- **Candidates**: each op on the deep path before the head with one live output. A cut at
  candidate ``t`` puts exactly the ancestors of ``t`` before it (so the components hold deep
  ops only; the other branches run in the head), and its carried set is every data tensor
  produced by those ancestors, or a model input, that an op after the cut (or a model output)
  still reads, ``t`` excepted.
- **Valid cut**: a candidate whose carried tensors are read by no op before the *last*
  candidate ``T``: carried tensors are consumed in the head only. Model inputs are exempt (an
  ``attention_mask`` read by every layer is carried from level 1 on), and so are tensors off the
  deep path computed from those inputs alone (the mask reshaped once), except the input the deep
  path starts at: a residual block on the model's input still has no cut inside. A skip
  connection rejoins the deep path before ``T`` by definition (an Add is not a head-opening
  Concat), so a layer inside a residual block is never cut.
- The valid cuts are used only when they add a cut the dominator analysis has not (otherwise
  ``align.analyse`` keeps today's cuts unchanged), and ``align.analyse`` keeps this analysis
  only when it gives more cuttable layers. Dominator cuts after the head's start stay (they
  end the head layer); those between ``T`` and the head would consume side branches, and go.

Design choice, measured on the test models: putting only the cut tensor's ancestors before a
cut (side branches in the head) against running each side op as early as its inputs allow.
The early placement carries less (Wide&Deep: the wide logit, one float per row, instead of
every raw input the wide part reads), but puts the other branches' parametric ops into the
aligned components, where they would change the layers' signatures and take part in the
fused model's mixing; the late one keeps components to the aligned deep layers and leaves a
model's own side branch with its own head, where fuse's head fine-tuning reaches it. Carried
model inputs are a few ``[B]`` columns, so the late placement was kept.
"""
from __future__ import annotations

from bisect import bisect_left

from fusekit.decompose.graph import SINK, SOURCE, ModelGraph
from fusekit.decompose.layers import is_primary
from fusekit.onnxio import optable

CARRY = "carry"
# Level 1 outputs its carried tensors as carry0..; a later component takes carry0.. and, since
# one ONNX graph cannot reuse a name, outputs next_carry0.. (components are called positionally).
NEXT = "next_carry"


def carry_names(count: int, level: int | None = None) -> list[str]:
    """Names of ``count`` carried tensors: component inputs (``level`` None) ``carry0``, ...; the
    outputs of the component of ``level`` (1-based): ``carry0``, ... at level 1, else ``next_carry0``, ..."""
    prefix = NEXT if level is not None and level > 1 else CARRY
    return [f"{prefix}{k}" for k in range(count)]


def deep_path(graph: ModelGraph, order: list[int]) -> tuple[str | None, list[int]]:
    """(model input the path starts at or None, ops of the path in order): the input-to-output
    path through the most parametric ops (ties: the most ops; then the first data input)."""
    data = graph.data_graph
    best: dict = {SOURCE: (0, 0)}
    parent: dict = {}
    for name in graph.inputs:
        best[("tensor", name)] = (0, 0)
        parent[("tensor", name)] = SOURCE
    for i in order:
        node = ("op", i)
        top, via = None, None
        for pred in data.predecessors(node):
            score = best.get(pred)
            if score is not None and (top is None or score > top):
                top, via = score, pred
        if top is None:
            continue
        best[node] = (top[0] + int(is_primary(graph, i)), top[1] + 1)
        parent[node] = via
    top, node = None, None
    for pred in data.predecessors(SINK):
        if pred in best and (top is None or best[pred] > top):
            top, node = best[pred], pred
    ops: list[int] = []
    start = None
    while node is not None and node != SOURCE:
        if node[0] == "op":
            ops.append(node[1])
        else:
            start = node[1]
        node = parent.get(node)
    ops.reverse()
    return start, ops


def _live_outputs(graph: ModelGraph, i: int, live: set[int], outputs: set[str]) -> list[str]:
    return [o for o in graph.nodes[i].output if o and graph.tensors[o].kind == "data"
            and (o in outputs or any(c in live for c, _ in graph.tensors[o].consumers))]


def _head_start(graph: ModelGraph, path: list[int], last_primary: int) -> int:
    """Index on the path where the head starts: its last parametric op, or a multi-input Concat
    that reaches it through reshapes and Concats only."""
    start = last_primary
    k = last_primary - 1
    while k >= 0:
        node = graph.nodes[path[k]]
        info = optable.lookup(node.op_type, node.domain)
        if node.op_type == "Concat" and node.domain in optable.DEFAULT_DOMAINS:
            data_inputs = {n for n in node.input if n and graph.tensors[n].kind == "data"}
            if len(data_inputs) >= 2:
                start = k
        elif info is None or info.role not in ("reshape", "alias"):
            break
        k -= 1
    return start


def branch_cuts(graph: ModelGraph, order: list[int],
                dominator_cuts: list[tuple[int, str]]) -> tuple[list[int], list[tuple[int, str]]] | None:
    """(order, cuts) along the deep path with carried tensors (see the module docstring), or None
    when that gives no cut the dominator analysis lacks. The order puts each cut's ancestors
    first, so that everything up to a cut's position is what that cut needs."""
    start_input, path = deep_path(graph, order)
    primaries = [k for k, i in enumerate(path) if is_primary(graph, i)]
    if not primaries:
        return None
    head = _head_start(graph, path, primaries[-1])
    live = set(order)
    outputs = set(graph.outputs)
    candidates: list[tuple[int, str]] = []
    for i in path[:head]:
        outs = _live_outputs(graph, i, live, outputs)
        if len(outs) == 1:
            candidates.append((i, outs[0]))
    if not candidates:
        return None
    # joined[op]: the first candidate whose ancestors hold op (ops of no candidate: the head)
    data = graph.data_graph
    joined: dict[int, int] = {}
    for idx, (i, _) in enumerate(candidates):
        stack = [i]
        while stack:
            op = stack.pop()
            if op in joined:
                continue
            joined[op] = idx
            stack.extend(p[1] for p in data.predecessors(("op", op)) if p[0] == "op" and p[1] not in joined)
    n = len(candidates)
    head_mark = n  # later than every candidate
    # A tensor live at candidate i (produced at or before it, read after it) and read again by
    # an op that joins at or before the last candidate makes i invalid.
    cover = [0] * (n + 1)

    def mark(first: int, consumers: list[int], produced_as: str | None) -> None:
        finite = [joined.get(c, head_mark) for c in consumers]
        finite = [j for j in finite if j < head_mark]
        if not finite:
            return
        begin = first + 1 if produced_as is not None and first >= 0 and candidates[first][1] == produced_as else first
        end = max(finite)
        if begin < end:
            cover[max(begin, 0)] += 1
            cover[end] -= 1

    # Model inputs beside the deep path, and what is computed from them alone (an attention
    # mask reshaped once), may be read anywhere: they are carried from level 1 on.
    exempt = set(graph.inputs) - {start_input}
    on_path_ops = set(path)
    for i in order:
        reads = [n for n in graph.node_inputs[i] if n and graph.tensors[n].kind == "data"]
        if i not in on_path_ops and reads and all(n in exempt for n in reads):
            exempt.update(o for o in graph.nodes[i].output if o)
    for op, idx in joined.items():
        for o in graph.nodes[op].output:
            if o and graph.tensors[o].kind == "data" and o not in exempt:
                mark(idx, [c for c, _ in graph.tensors[o].consumers if c in live], o)
    if start_input is not None:
        mark(-1, [c for c, _ in graph.tensors[start_input].consumers if c in live], None)
    valid, running = [], 0
    for idx in range(n):
        running += cover[idx]
        if running == 0:
            valid.append(idx)
    dominator_ops = {order[g] for g, _ in dominator_cuts if g >= 0}
    if all(candidates[idx][0] in dominator_ops for idx in valid):
        return None
    pos = {op: p for p, op in enumerate(order)}
    new_order = sorted(order, key=lambda op: (joined.get(op, head_mark), pos[op]))
    new_pos = {op: p for p, op in enumerate(new_order)}
    on_path = {op: k for k, op in enumerate(path)}
    cuts = [(g, t) for g, t in dominator_cuts if g < 0]
    cuts += [(new_pos[candidates[idx][0]], candidates[idx][1]) for idx in valid]
    cuts += [(new_pos[order[g]], t) for g, t in dominator_cuts
             if g >= 0 and on_path.get(order[g], -1) >= primaries[-1]]
    return new_order, sorted(set(cuts))


def carried_tensors(graph: ModelGraph, order: list[int], cuts: list[tuple[int, str]]) -> list[list[str]]:
    """For each cut (gap, tensor) of ``order``, sorted by gap: the data tensors produced at or
    before the gap (model inputs included) that an op after it or a model output still reads,
    the cut tensor excepted, in order of production (inputs first, in input order)."""
    if not cuts:
        return []
    pos = {op: p for p, op in enumerate(order)}
    n = len(order)
    outputs = set(graph.outputs)
    gaps = [g for g, _ in cuts]
    carried: list[list[str]] = [[] for _ in cuts]

    def interval(name: str, first: int) -> None:
        last = n if name in outputs else max((pos[c] for c, _ in graph.tensors[name].consumers if c in pos),
                                            default=-1)
        lo, hi = bisect_left(gaps, first), bisect_left(gaps, last)
        for k in range(lo, hi):
            if cuts[k][1] != name:
                carried[k].append(name)

    for name in graph.inputs:
        interval(name, -1)
    last_gap = gaps[-1]
    for p, op in enumerate(order[: last_gap + 1]):
        for o in graph.nodes[op].output:
            if o and graph.tensors[o].kind == "data":
                interval(o, p)
    return carried

