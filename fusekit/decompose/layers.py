"""Grouping a model's data-path ops into layers and giving each a structural signature.

A layer runs from one cut point to a later one and holds at least one parametric op (a
``primary`` op of the op table, :mod:`fusekit.onnxio.optable`, with a constant weight: Gemm,
MatMul, Conv, an embedding Gather, ...) with the ops that only serve it (bias Add, activation,
normalisation, reshape). Ops between two cut points are never split, so a residual block is
one layer.

The signature is a hash of the layer's structure: op types, attributes (defaults filled in),
weight shapes and inferred output shapes, wired as in the graph. It never uses weight values,
node names or tensor names, and it normalises what exporters vary: Identity/Dropout are
skipped, Gemm and MatMul+Add of a Linear become one ``Linear`` op, chains of
Reshape/Flatten/Squeeze/Unsqueeze become one ``Reshape``.

A hash can collide, so the hash only proposes: each layer also keeps its exact normalised
structure, and two layers are the same layer only when networkx's graph matcher finds their
labelled graphs isomorphic (``same_structure``). The matcher is order-free, like the hash:
exporters list parallel branches in different orders.
"""
from __future__ import annotations

import hashlib
import operator
from dataclasses import dataclass, field
from functools import lru_cache

import networkx as nx
import onnx
from networkx.algorithms.isomorphism import DiGraphMatcher
from onnx import helper

from fusekit.decompose.graph import ModelGraph
from fusekit.onnxio import optable


@dataclass
class Layer:
    """A group of data-path ops between two cut points."""

    index: int
    nodes: list[int]  # node indices, topological order
    start_gap: int  # the layer holds the data ops at positions (start_gap, end_gap]
    end_gap: int
    end: str | None  # cut tensor the layer ends at; None when it ends at several outputs
    is_output: bool  # ends at the model's outputs: the head, never a cut
    signature: str  # hex hash of the structure
    summary: str  # readable, with shapes
    kind: str  # readable, without shapes
    shape: tuple | None  # canonical output shape
    dtype: str | None
    cuttable: bool = True
    why_not: str | None = None
    # Exact normalised structure (ops in topological order, wiring by local index): what
    # ``layer_graph`` turns into the labelled graph the matcher compares.
    structure: tuple = field(default=(), repr=False)

    def describe_output(self) -> str:
        """``[batch,64] float32``."""
        if self.shape is None:
            return "several outputs"
        return f"[{','.join(str(d) for d in self.shape)}] {self.dtype}"


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


@lru_cache(maxsize=4096)
def _defaults(op_type: str, domain: str, opset: int) -> tuple[tuple[str, object], ...]:
    """Default attribute values of an op (exporters differ in writing them out or not)."""
    try:
        schema = onnx.defs.get_schema(op_type, opset, domain)
    except Exception:  # noqa: BLE001 - custom domains have no schema
        return ()
    out = []
    for name, attr in schema.attributes.items():
        if attr.default_value is not None and attr.default_value.type != 0:
            out.append((name, _attr_value(attr.default_value)))
    return tuple(out)


def _attr_value(attr: onnx.AttributeProto) -> object:
    value = helper.get_attribute_value(attr)
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, list):
        return tuple(float(f"{v:.6g}") if isinstance(v, float) else
                     v.decode(errors="replace") if isinstance(v, bytes) else
                     _digest(v.SerializeToString()) if hasattr(v, "SerializeToString") else v for v in value)
    if hasattr(value, "SerializeToString"):
        if isinstance(value, onnx.GraphProto):
            return "graph:" + ",".join(n.op_type for n in value.node)
        if isinstance(value, onnx.TensorProto):
            return ("tensor", tuple(value.dims), value.data_type)
        return _digest(value.SerializeToString())
    return value


def _attrs(node: onnx.NodeProto, opset: int) -> tuple[tuple[str, object], ...]:
    """The node's attributes with defaults filled in, sorted by name."""
    attrs = node.attribute
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in attrs):
        return _attrs_of(node.op_type, node.domain, opset, attrs)  # big and rare: not worth a cache entry
    # Layers repeat, and so do their ops' attributes: parse each distinct set once.
    return _cached_attrs(node.op_type, node.domain, opset, tuple(a.SerializeToString() for a in attrs))


@lru_cache(maxsize=8192)
def _cached_attrs(op_type: str, domain: str, opset: int, raw: tuple[bytes, ...]) -> tuple[tuple[str, object], ...]:
    return _attrs_of(op_type, domain, opset, [onnx.AttributeProto.FromString(data) for data in raw])


def _attrs_of(op_type: str, domain: str, opset: int, attrs) -> tuple[tuple[str, object], ...]:
    values = dict(_defaults(op_type, domain, opset))
    for attr in attrs:
        values[attr.name] = _attr_value(attr)
    return tuple(sorted(values.items()))


def _role(node: onnx.NodeProto) -> str | None:
    info = optable.lookup(node.op_type, node.domain)
    return info.role if info is not None else None


def is_primary(graph: ModelGraph, i: int) -> bool:
    """A parametric op that starts a layer: data through an op whose weight input is a constant."""
    node = graph.nodes[i]
    info = optable.lookup(node.op_type, node.domain)
    if info is None or info.role != "primary":
        return False
    kinds = [graph.tensors[n].kind if n else None for n in node.input]
    if node.op_type == "Gather":  # an embedding table, not a lookup in a shape vector
        shape = graph.tensors[node.input[0]].shape
        if shape is None or len(shape) < 2:
            return False
    return "data" in kinds and any(kinds[p] == "const" for p in info.weight_inputs if p < len(kinds))


def is_norm(graph: ModelGraph, i: int) -> bool:
    """A normalisation op (joins the layer before it)."""
    return _role(graph.nodes[i]) == "norm"


class _Tokens:
    """Normalised ops of one layer, built in topological order."""

    def __init__(self, graph: ModelGraph, inputs: list[str]):
        self.graph = graph
        self.inputs = {name: k for k, name in enumerate(inputs)}
        self.tokens: dict[int, list] = {}  # node -> [name, attrs, weights, out shapes, in refs]
        self.source: dict[str, tuple[int, int]] = {}  # tensor -> (token node, output slot)
        self.alias: dict[str, str] = {}
        self.order: list[int] = []

    def resolve(self, name: str) -> str:
        while name in self.alias:
            name = self.alias[name]
        return name

    def ref(self, name: str) -> tuple:
        name = self.resolve(name)
        kind = self.graph.tensors[name].kind
        if name in self.source:
            return ("op",) + self.source[name]
        if kind == "const":
            t = self.graph.tensors[name]
            return ("w", t.shape, t.dtype)
        if kind == "shape":
            return ("s",)
        return ("in", self.inputs.get(name, -1))

    def single_use(self, name: str) -> bool:
        return len(self.graph.tensors[name].consumers) == 1

    def add(self, i: int) -> None:
        g = self.graph
        node = g.nodes[i]
        ins = g.node_inputs[i]
        data_ins = [n for n in ins if n and g.tensors[n].kind == "data"]
        op = node.op_type
        role = _role(node)
        if role == "alias" and data_ins and node.output:
            self.alias[node.output[0]] = data_ins[0]
            return
        out_shapes = tuple((g.canonical_shape(o), g.tensors[o].dtype) for o in node.output if o)
        if role == "reshape" and data_ins:
            prev = self.source.get(self.resolve(data_ins[0]))
            if prev and self.tokens[prev[0]][0] == "Reshape" and self.single_use(self.resolve(data_ins[0])):
                # A chain of reshapes is one reshape: exporters differ in how they spell it.
                token = self.tokens[prev[0]]
                token[3] = out_shapes
                self.alias[node.output[0]] = self.resolve(data_ins[0])
                return
            self._put(i, ["Reshape", (), (), out_shapes, [self.ref(data_ins[0])]])
            return
        if op == "Add" and len(ins) == 2:
            fused = self._fold_bias(i, ins)
            if fused:
                return
        if op == "Gemm" and is_primary(g, i):
            attrs = dict(_attrs(node, g.opset))
            w = g.tensors[ins[1]].shape
            if (attrs.get("transA", 0) == 0 and attrs.get("alpha", 1.0) == 1.0 and w is not None and len(w) == 2
                    and (len(ins) < 3 or not ins[2] or attrs.get("beta", 1.0) == 1.0)
                    and g.tensors[ins[1]].kind == "const"):
                n_in, n_out = (w[1], w[0]) if attrs.get("transB", 0) else (w[0], w[1])
                bias = None
                if len(ins) > 2 and ins[2]:
                    bias = ("w", g.tensors[ins[2]].shape) if g.tensors[ins[2]].kind == "const" else self.ref(ins[2])
                self._put(i, ["Linear", (("in", n_in), ("out", n_out), ("bias", bias)), (), out_shapes,
                              [self.ref(ins[0])]])
                return
        if op == "MatMul" and len(ins) == 2 and g.tensors[ins[1]].kind == "const" and g.tensors[ins[0]].kind == "data":
            w = g.tensors[ins[1]].shape
            if w is not None and len(w) == 2:
                self._put(i, ["Linear", (("in", w[0]), ("out", w[1]), ("bias", None)), (), out_shapes,
                              [self.ref(ins[0])]])
                return
        if op == "Gather" and is_primary(g, i):
            table = g.tensors[ins[0]].shape
            self._put(i, ["Embedding", (("table", table), ("axis", dict(_attrs(node, g.opset)).get("axis", 0))),
                          (), out_shapes, [self.ref(ins[1])]])
            return
        weights = tuple((slot, g.tensors[n].shape, g.tensors[n].dtype) for slot, n in enumerate(ins)
                        if n and g.tensors[n].kind == "const")
        refs = [self.ref(n) if n else ("none",) for n in ins]
        name = f"{node.domain}::{op}" if node.domain not in optable.DEFAULT_DOMAINS else op
        self._put(i, [name, _attrs(node, g.opset), weights, out_shapes, refs])

    def _fold_bias(self, i: int, ins: list[str]) -> bool:
        """MatMul + Add(bias) is a Linear with a bias, like Gemm."""
        g = self.graph
        for a, b in ((ins[0], ins[1]), (ins[1], ins[0])):
            src = self.source.get(self.resolve(a))
            if not src or g.tensors[b].kind != "const":
                continue
            token = self.tokens[src[0]]
            params = dict(token[1]) if token[0] == "Linear" else {}
            bshape = g.tensors[b].shape
            if (token[0] == "Linear" and params.get("bias") is None and self.single_use(self.resolve(a))
                    and bshape is not None and len(bshape) >= 1 and bshape[-1] == params["out"]
                    and all(d == 1 for d in bshape[:-1])):
                params["bias"] = ("w", (params["out"],))
                token[1] = tuple(params.items())
                self.alias[g.nodes[i].output[0]] = self.resolve(a)
                return True
        return False

    def _put(self, i: int, token: list) -> None:
        self.tokens[i] = token
        self.order.append(i)
        for slot, o in enumerate(self.graph.nodes[i].output):
            if o:
                self.source[o] = (i, slot)

    def signature(self, end: str | None, end_shape: object) -> tuple[str, str, str, tuple]:
        """(hash, summary, kind, structure) of the layer."""
        structure = self.structure(end, end_shape)
        return (*_describe(structure), structure)

    def structure(self, end: str | None, end_shape: object) -> tuple:
        """The tokens with op references by local index: exact, free of node indices and names."""
        local = {i: k for k, i in enumerate(self.order)}

        def loc(r: tuple) -> tuple:
            return ("op", local[r[1]], r[2]) if r[0] == "op" else r

        ops = tuple((name, attrs, weights, outs, tuple(loc(r) for r in refs))
                    for name, attrs, weights, outs, refs in (self.tokens[i] for i in self.order))
        return ops, (None if end is None else loc(self.ref(end))), end_shape


@lru_cache(maxsize=4096)
def _describe(structure: tuple) -> tuple[str, str, str]:
    """(hash, summary, kind) of a layer structure: each op's hash covers the ops it reads
    (Merkle style), the layer's hash the sorted op hashes and its end. Layers repeat, so each
    distinct structure is hashed once."""
    ops, end, end_shape = structure
    up: list[str] = []
    for name, attrs, weights, outs, refs in ops:
        parts = [f"op:{up[r[1]]}:{r[2]}" if r[0] == "op" else repr(r) for r in refs]
        up.append(_digest(repr((name, attrs, weights, outs, parts))))
    end_ref = "outputs"
    if end is not None:
        end_ref = f"op:{up[end[1]]}:{end[2]}" if end[0] == "op" else repr(end)
    digest = _digest(repr((sorted(up), end_ref, end_shape)))
    labels = [_label(op) for op in ops]
    kinds = [lab.split("(")[0] for lab in labels]
    return digest, _compact(labels), _compact(kinds)


@lru_cache(maxsize=1024)
def layer_graph(structure: tuple) -> nx.DiGraph:
    """A layer's structure as a small labelled DiGraph for the matcher.

    Op nodes ``k`` carry the op type, attributes, weight shapes, output shapes and the non-data
    operands by slot; ``("in", k)`` nodes are the layer's inputs, ``"end"`` is its cut tensor
    (with its shape). An edge carries its wires: (output slot of the producer, input slot of the
    consumer) pairs, so ``Sub(a, b)`` and ``Sub(b, a)`` differ. Cached and shared: read only.
    """
    ops, end, end_shape = structure
    graph = nx.DiGraph()
    wires: dict[tuple, list[tuple[int, int]]] = {}

    def wire(ref: tuple, dst: object, slot: int) -> bool:
        if ref[0] == "op":
            src, out = ref[1], ref[2]
        elif ref[0] == "in":
            src, out = ("in", ref[1]), 0
            graph.add_node(src, op="input", index=ref[1])
        else:
            return False
        wires.setdefault((src, dst), []).append((out, slot))
        return True

    for k, (name, attrs, weights, outs, refs) in enumerate(ops):
        consts = tuple((slot, r) for slot, r in enumerate(refs) if not wire(r, k, slot))
        graph.add_node(k, op=name, attrs=attrs, weights=weights, outs=outs, consts=consts)
    end_const = None if end is None or wire(end, "end", 0) else end
    graph.add_node("end", op="end", shape=end_shape, const=end_const)
    graph.add_edges_from((src, dst, {"wires": tuple(sorted(w))}) for (src, dst), w in wires.items())
    return graph


def same_structure(a: Layer, b: Layer) -> bool:
    """True when ``a`` and ``b`` are the same layer: equal signature hashes, confirmed by the
    graph matcher, so that a hash collision can never align two different layers."""
    if a.signature != b.signature:
        return False
    if a.structure == b.structure:
        return True  # the very same labelled graph, listed in the same order
    return _isomorphic(a.structure, b.structure)


@lru_cache(maxsize=4096)
def _isomorphic(first: tuple, second: tuple) -> bool:
    """networkx's VF2 matcher on two layer graphs, node and edge labels compared exactly."""
    matcher = DiGraphMatcher(layer_graph(first), layer_graph(second), node_match=operator.eq,
                             edge_match=operator.eq)
    return matcher.is_isomorphic()


def _label(token: list) -> str:
    name, attrs, weights, _outs, _refs = token
    params = dict(attrs)
    if name == "Linear":
        return f"Linear({params['in']}->{params['out']}{'' if params['bias'] else ',nobias'})"
    if name == "Embedding":
        table = params["table"]
        return f"Embedding({'x'.join(str(d) for d in table)})" if table else "Embedding"
    if name in ("Conv", "ConvTranspose") and weights:
        w = weights[0][1]
        if w:
            return f"{name}({w[1]}->{w[0]},k={'x'.join(str(d) for d in w[2:])})"
    return name


def _compact(labels: list[str]) -> str:
    """Join labels; long runs (blocks) are shortened to counts."""
    text = "+".join(labels)
    if len(labels) <= 8:
        return text
    counts: dict[str, int] = {}
    for lab in labels:
        counts[lab] = counts.get(lab, 0) + 1
    return "Block[" + ",".join(f"{k}x{v}" if v > 1 else k for k, v in counts.items()) + "]"


def group_layers(graph: ModelGraph, order: list[int], cuts: list[tuple[int, str]]) -> list[Layer]:
    """Group the data ops (``order``: topological, live) into layers ending at cut points.

    ``cuts`` are (gap, tensor) pairs sorted by gap: the tensor is the only live data value
    after the op at position ``gap`` (``-1`` is before the first op).
    """
    n = len(order)
    bounds = [(g, t) for g, t in cuts if g >= 0]
    segments: list[tuple[int, int, str | None]] = []
    prev = -1
    for g, t in bounds:
        if g > prev:
            segments.append((prev, g, t))
            prev = g
    if prev < n - 1:
        segments.append((prev, n - 1, None))
    groups: list[list[tuple[int, int, str | None]]] = []
    pending: list[tuple[int, int, str | None]] = []
    for seg in segments:
        ops = order[seg[0] + 1: seg[1] + 1]
        if any(is_primary(graph, i) for i in ops) or (not groups and any(is_norm(graph, i) for i in ops)):
            groups.append(pending + [seg])
            pending = []
        elif groups:
            groups[-1].append(seg)
        else:
            pending.append(seg)
    if pending:
        if groups:
            groups[-1].extend(pending)
        else:
            groups.append(pending)
    outputs = set(graph.outputs)
    cut_at = dict(cuts)
    layers: list[Layer] = []
    for k, group in enumerate(groups):
        start, end_gap, end = group[0][0], group[-1][1], group[-1][2]
        nodes = order[start + 1: end_gap + 1]
        if start < 0:
            inputs = list(graph.inputs)
        else:
            inputs = [cut_at[start]]
        tokens = _Tokens(graph, inputs)
        for i in nodes:
            tokens.add(i)
        shape = graph.canonical_shape(end) if end else None
        dtype = graph.tensors[end].dtype if end else None
        digest, summary, kind, structure = tokens.signature(end, (shape, dtype))
        is_output = end is None or end in outputs
        layers.append(Layer(index=k, nodes=nodes, start_gap=start, end_gap=end_gap, end=end, is_output=is_output,
                            signature=digest, summary=summary, kind=kind, shape=shape, dtype=dtype,
                            structure=structure))
        if is_output:
            layers[-1].cuttable, layers[-1].why_not = False, "ends at the model output (the head)"
        elif shape is None or "?" in shape:
            layers[-1].cuttable, layers[-1].why_not = False, "output shape unknown"
    return layers
