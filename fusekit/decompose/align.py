"""Cut points, the layers all models share in the same order, and the choice of levels.

Cut points come from networkx dominators on the model's data graph (``ModelGraph.data_graph``:
a virtual source feeds every input, every output feeds a virtual sink): a cut tensor is a tensor
that dominates the sink, i.e. one that every input-to-output data path passes through. Measured
on one core against the live-interval sweep this replaced (same cut points): graph, ancestors
and dominators take 0.10 s against 0.06 s at 10,000 nodes and 1.4 s against 0.8 s at 100,000,
linear in size; the rest of decompose was made faster to stay within its budget.

Layers are aligned across models by an order-preserving common subsequence in which two layers
count as equal only when their signature hashes are equal and networkx's graph matcher confirms
that their structures are isomorphic (``layers.same_structure``).

The longest common subsequence of two layer sequences (n and m layers) is the bit-parallel DP:
row i of the table is one m-bit Python int, and a row costs a few big-int operations. Its
traceback used to hold all n rows (n * m bits: 242 MB at 43,000 layers a side, as two
100,000-node models have). It now holds checkpoints instead: recomputation rather than
Hirschberg's divide and conquer, because it gives the very pairs the full table gave.
Hirschberg's split finds *some* longest subsequence through the middle row, while the
traceback's choice among equal-length ones (from the end; a match, then up) depends on the
forward rows below it, which a block can recompute from its checkpoint.

A block of more than ``_LEAF`` rows keeps at most ``_FANOUT`` evenly spaced rows and is traced
sub-block by sub-block from the bottom; a block of at most ``_LEAF`` rows is traced from its
rows held whole. At most ``_LEAF + _FANOUT * depth`` rows are held, with depth
``ceil(log(n / _LEAF) / log(_FANOUT))``: 1 up to 65,536 layers, 2 up to 8 million, so memory is
linear in m for any real model (9 MB at 43,000 layers a side). Each row is computed about
``depth + 1`` times, but the path never moves right and a row's low bits do not depend on its
high ones, so a block is recomputed only up to the column where the path enters it; the whole
takes 0.6-0.85x the old CPU time. Lengths are Python ints, so nothing overflows past 65,535
layers. The per-symbol bit masks would take (distinct symbols) * m bits, so only the
``_CACHED`` symbols most frequent in x keep theirs.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np

from fusekit.decompose.branches import branch_cuts
from fusekit.decompose.graph import SINK, SOURCE, ModelGraph
from fusekit.decompose.layers import Layer, group_layers, same_structure
from fusekit.onnxio import optable


@dataclass
class Analysis:
    """One model's data-path order, cut points and layers."""

    graph: ModelGraph
    order: list[int]  # live data nodes, topological
    cuts: list[tuple[int, str]]  # (gap, tensor), sorted by gap
    layers: list[Layer]
    candidates: list[Layer] = field(default_factory=list)  # the layers a model can be cut after

    def __post_init__(self) -> None:
        if not self.candidates:
            self.candidates = [layer for layer in self.layers if layer.cuttable]


def live_data_nodes(graph: ModelGraph) -> list[int]:
    """Data ops that contribute to a data output (ancestors of the sink), in topological order."""
    # ONNX files list their nodes in topological order (onnx.checker enforces it).
    return sorted(node[1] for node in nx.ancestors(graph.data_graph, SINK) if node[0] == "op")


def cut_points(graph: ModelGraph, order: list[int]) -> list[tuple[int, str]]:
    """(gap, tensor) for every cut tensor, sorted by gap.

    A cut tensor is a data tensor that every path from ``SOURCE`` to ``SINK`` in the data
    graph passes through: every way from a model input (or a random generator) to a model
    output reads it. It is found as a dominator of ``SINK``: a model input on the dominator
    chain, or the only live output of an op on it (an op whose other outputs are read later
    too is no cut: a path through those avoids each single tensor). Its gap is the position in
    ``order`` of the op producing it (-1 for a model input). Every live op is an ancestor or a
    descendant of a cut tensor, so after that op the cut tensor is the only data value later
    ops still read: the model can be cut there.
    """
    idom = nx.immediate_dominators(graph.data_graph, SOURCE)
    if SINK not in idom:
        return []
    pos = {node: p for p, node in enumerate(order)}
    outputs = set(graph.outputs)
    cuts: list[tuple[int, str]] = []
    node = idom[SINK]
    while node != SOURCE:
        kind, key = node
        if kind == "tensor":
            cuts.append((-1, key))
        else:
            live = [o for o in graph.nodes[key].output if o]
            if len(live) > 1:  # an op on the chain is live, and so is its only output
                live = [o for o in live if o in outputs or any(c in pos for c, _ in graph.tensors[o].consumers)]
            if len(live) == 1:
                cuts.append((pos[key], live[0]))
        node = idom[node]
    cuts.reverse()
    return cuts


def _shape_crossings(graph: ModelGraph, order: list[int]) -> list[tuple[int, int, str]]:
    """(p, q, tensor) for each Shape/Size read of a data tensor produced at position p whose
    result is used by data ops up to position q: cuts in between must rebuild that shape."""
    pos = {node: p for p, node in enumerate(order)}
    n = len(order)
    last_use: dict[int, int] = {}
    outputs = set(graph.outputs)
    for i in range(len(graph.nodes) - 1, -1, -1):
        if graph.node_kind[i] != "shape":
            continue
        q = -1
        for o in graph.nodes[i].output:
            if not o:
                continue
            if o in outputs:
                q = n
            for c, _ in graph.tensors[o].consumers:
                if c in pos:
                    q = max(q, pos[c])
                elif graph.node_kind[c] == "shape":
                    q = max(q, last_use.get(c, -1))
        last_use[i] = q
    crossings = []
    for i, q in last_use.items():
        node = graph.nodes[i]
        if not optable.is_shape_only(node.op_type, node.domain) or q < 0:
            continue
        src = node.input[0]
        producer = graph.tensors[src].producer
        p = pos.get(producer, -1) if producer is not None else -1
        crossings.append((p, q, src))
    return crossings


def analyse(graph: ModelGraph) -> Analysis:
    """Cut points and layers of one model, with the layers it cannot be cut after marked.

    A model whose deep path runs beside other branches is cut along that path with the other
    branches' tensors carried (``branches.branch_cuts``), when that gives more cuttable layers.
    """
    order = live_data_nodes(graph)
    cuts = cut_points(graph, order)
    plain = _layered(graph, order, cuts)
    branched = branch_cuts(graph, order, cuts)
    if branched is not None:
        alternative = _layered(graph, *branched)
        if len(alternative.candidates) > len(plain.candidates):
            return alternative
    return plain


def _layered(graph: ModelGraph, order: list[int], cuts: list[tuple[int, str]]) -> Analysis:
    """The layers of ``order`` cut at ``cuts``, with the layers it cannot be cut after marked."""
    layers = group_layers(graph, order, cuts)
    for p, q, src in _shape_crossings(graph, order):
        src_shape = graph.tensors[src].shape
        for layer in layers:
            g = layer.end_gap
            if not layer.cuttable or not (p <= g < q) or src == layer.end:
                continue
            cut_dims = {d for d in graph.tensors[layer.end].shape or () if isinstance(d, str)}
            if src_shape is None or any(d is None or (isinstance(d, str) and d not in cut_dims) for d in src_shape):
                layer.cuttable = False
                layer.why_not = f"a shape read from {src!r} is used after it and cannot be rebuilt from the cut"
    return Analysis(graph=graph, order=order, cuts=cuts, layers=layers)


def lcs(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs of a longest common subsequence of two int arrays."""
    # Common prefix and suffix need no DP; most aligned models share long runs.
    n, m = len(a), len(b)
    pre = 0
    while pre < min(n, m) and a[pre] == b[pre]:
        pre += 1
    suf = 0
    while suf < min(n, m) - pre and a[n - 1 - suf] == b[m - 1 - suf]:
        suf += 1
    ia = list(range(pre))
    ib = list(range(pre))
    core_a, core_b = a[pre: n - suf], b[pre: m - suf]
    # Symbols missing from the other sequence can never match: drop them before the DP.
    keep_a = np.nonzero(np.isin(core_a, core_b))[0]
    keep_b = np.nonzero(np.isin(core_b, core_a))[0]
    if len(keep_a) and len(keep_b):
        pairs = _lcs_pairs(core_a[keep_a].tolist(), core_b[keep_b].tolist())
        ia += [pre + int(keep_a[p]) for p, _ in pairs]
        ib += [pre + int(keep_b[q]) for _, q in pairs]
    ia += list(range(n - suf, n))
    ib += list(range(m - suf, m))
    return np.asarray(ia, dtype=np.int64), np.asarray(ib, dtype=np.int64)


# Rows of the dynamic programme held at once: a block of at most _LEAF rows is traced from its
# rows held whole; a taller block holds at most _FANOUT checkpoint rows and traces its sub-blocks
# one by one, from the bottom up, recomputing each one's rows from its checkpoint.
_LEAF = 512
_FANOUT = 128
# Symbols whose masks are kept (see _Masks).
_CACHED = 256


def _lcs_pairs(x: list[int], y: list[int]) -> list[tuple[int, int]]:
    """LCS index pairs by the bit-parallel DP (Allison and Dix), in memory linear in the lengths.

    Bit j of row i is 0 exactly when ``L[i][j + 1] = L[i][j] + 1`` (``L[i][j]``: LCS length of
    ``x[:i]`` and ``y[:j]``), so ``L[i][j]`` is j minus the ones among the low j bits, and a row
    costs a few big-int operations instead of a pass over a table row. Lengths are Python ints:
    nothing overflows, however many layers there are.

    The pairs are those of the classic traceback over the whole table (from the end; on ties a
    match, then moving up), but the table is never held: its rows are recomputed from
    checkpoints, block by block, in the order the traceback reads them (:func:`_trace`).
    """
    masks = _Masks(x, y)
    pairs: list[tuple[int, int]] = []
    _trace(x, y, masks, 0, len(x), (1 << len(y)) - 1, len(y), pairs)  # row 0: L[0][j] = 0, all ones
    pairs.reverse()
    return pairs


class _Masks:
    """For a symbol, the int whose bit j is set where y[j] is that symbol.

    One mask takes up to len(y) bits, so masks of every symbol would grow with the number of
    distinct symbols times len(y): only the _CACHED symbols most frequent in x keep theirs,
    the others' masks are built when a row needs them.
    """

    def __init__(self, x: list[int], y: list[int]):
        self.positions: dict[int, list[int]] = {}
        for j, sym in enumerate(y):
            self.positions.setdefault(sym, []).append(j)
        counts = Counter(sym for sym in x if sym in self.positions)
        self.cache = {sym: self.build(sym) for sym, _ in counts.most_common(_CACHED)}

    def build(self, sym: int) -> int:
        where = self.positions.get(sym)
        if not where:
            return 0
        bits = bytearray(where[-1] // 8 + 1)
        for j in where:
            bits[j >> 3] |= 1 << (j & 7)
        return int.from_bytes(bits, "little")

    def get(self, sym: int) -> int:
        found = self.cache.get(sym)
        return self.build(sym) if found is None else found


def _step(v: int, match: int, width: int) -> int:
    """The next DP row after row ``v``, for a symbol whose positions in y are the bits of ``match``."""
    u = v & match
    return ((v + u) | (v - u)) & width


def _trace(x: list[int], y: list[int], masks: _Masks, lo: int, hi: int, top: int, j: int,
           pairs: list[tuple[int, int]]) -> int:
    """Follow the traceback from cell (hi, j) up to row ``lo``, given row ``lo`` (``top``).

    Appends the matches found, last first; returns the column where the path reaches row lo.
    The path never moves right, so only columns below j are read, and a row's low bits never
    depend on its high ones (carries run upwards): every row is computed at width j only.
    """
    if j == 0 or hi == lo:
        return j
    width = (1 << j) - 1
    top &= width
    if hi - lo <= _LEAF:
        rows = [top]
        for i in range(lo, hi):
            rows.append(_step(rows[-1], masks.get(x[i]), width))
        return _trace_rows(x, y, lo, hi, rows, j, pairs)
    blocks = min(_FANOUT, -(-(hi - lo) // _LEAF))
    size = -(-(hi - lo) // blocks)
    starts = range(lo, hi, size)
    checkpoints = [top]
    v = top
    for i in range(lo, starts[-1]):
        v = _step(v, masks.get(x[i]), width)
        if (i + 1 - lo) % size == 0:
            checkpoints.append(v)
    for start in reversed(starts):
        j = _trace(x, y, masks, start, min(start + size, hi), checkpoints.pop(), j, pairs)
        if j == 0:
            break
    return j


def _trace_rows(x: list[int], y: list[int], lo: int, hi: int, rows: list[int], j: int,
                pairs: list[tuple[int, int]]) -> int:
    """The traceback through rows lo..hi held in ``rows`` (``rows[k]`` is row ``lo + k``)."""
    nbytes = (j + 7) // 8
    bits = [row.to_bytes(nbytes, "little") for row in rows]  # a bit test without shifting a big int
    i = hi
    here = j - (rows[-1] & ((1 << j) - 1)).bit_count()  # L[hi][j]
    while i > lo and j > 0:
        if x[i - 1] == y[j - 1]:  # a match: L[i][j] = L[i-1][j-1] + 1
            pairs.append((i - 1, j - 1))
            i, j, here = i - 1, j - 1, here - 1
            continue
        if not (bits[i - lo][(j - 1) >> 3] >> ((j - 1) & 7)) & 1:
            # L[i][j-1] = here - 1, so L[i-1][j] = here: moving up keeps the length.
            i -= 1
            continue
        # L[i][j-1] = here: move up only when L[i-1][j] = here too (ties go up).
        if j - (rows[i - 1 - lo] & ((1 << j) - 1)).bit_count() >= here:
            i -= 1
        else:
            j -= 1
    return j


def layer_classes(sequences: Sequence[Sequence[Layer]]) -> list[list[int]]:
    """One int per layer, equal for two layers exactly when ``same_structure`` holds.

    Layers are bucketed by signature hash; inside a bucket each layer is compared with one
    representative of each class found so far (the matcher's answers are cached per pair of
    structures, and an identical structure needs no match), so the work grows with the number of
    distinct structures, not of layers.
    """
    buckets: dict[str, list[tuple[Layer, int]]] = {}
    classes: list[list[int]] = []
    n_classes = 0
    for layers in sequences:
        codes: list[int] = []
        for layer in layers:
            bucket = buckets.setdefault(layer.signature, [])
            code = next((c for rep, c in bucket if same_structure(rep, layer)), None)
            if code is None:
                code, n_classes = n_classes, n_classes + 1
                bucket.append((layer, code))
            codes.append(code)
        classes.append(codes)
    return classes


def common_layers(sequences: Sequence[Sequence[Hashable]]) -> np.ndarray:
    """Order-preserving common subsequence of N sequences, by progressive pairwise LCS.

    Elements are equal when they compare equal: pass ``layer_classes`` of the layers (plain
    signatures would trust the hash). Returns an int array [n_common, N]: for each common
    element, its index in each sequence.
    """
    codes: dict[Hashable, int] = {}
    arrays = [np.asarray([codes.setdefault(s, len(codes)) for s in seq], dtype=np.int64) for seq in sequences]
    current = arrays[0]
    index = np.arange(len(current), dtype=np.int64)[:, None]
    for arr in arrays[1:]:
        ia, ib = lcs(current, arr)
        current = current[ia]
        index = np.concatenate([index[ia], ib[:, None]], axis=1)
    return index.reshape(len(current), len(sequences))


def choose_levels(positions: np.ndarray, requested: int | None) -> tuple[list[int], str]:
    """Pick which common layers end the levels; the last common layer always ends the last level.

    ``positions`` [n_common, N]: each common layer's index among each model's layers. With
    ``requested`` None the default is ``min(3, n_common)`` (the EMM paper uses 3 components).
    Levels are balanced: the cuts sit nearest to equal fractions of the models' mean depth.
    """
    n = len(positions)
    k = min(3, n) if requested is None else requested
    depth = positions.mean(axis=1) + 1.0  # layers covered up to and including each common layer
    if k >= n:
        return list(range(n)), "every common layer"
    chosen = [n - 1]
    lo = 0
    total = depth[-1]
    picks: list[int] = []
    for level in range(1, k):
        target = total * level / k
        hi = n - 1 - (k - level)  # leave room for the remaining levels
        window = np.arange(lo, hi + 1)
        # Ties go to the later layer so early levels are not left nearly empty.
        best = window[np.argmin(np.abs(depth[window] - target) - 1e-9 * window)]
        picks.append(int(best))
        lo = int(best) + 1
    chosen = picks + chosen
    return chosen, "balanced: cuts nearest to equal shares of the models' mean depth"
