"""ONNX model -> data-flow graph: tensors, their producers and consumers, and what is constant.

Every tensor gets a kind:
- ``const``: initializers, Constant nodes, and whatever ops compute from constants only
  (for example ConstantOfShape of a constant shape): the model's weights;
- ``shape``: values that depend on data only through Shape/Size (shape computations);
- ``data``: everything else, the values that flow from the model inputs to its outputs.
Cut points and layers are defined on the data part; the other two are support that each
component re-creates for itself.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper

from fusekit.errors import FusekitError
from fusekit.onnxio import optable

MIN_OPSET = 13

Dim = int | str | None
# Virtual nodes of the data graph: the source feeds every place data enters, the sink collects
# every data output, so "on every input-to-output path" becomes "dominates the sink".
SOURCE = ("virtual", "source")
SINK = ("virtual", "sink")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class Tensor:
    """One tensor of the graph: kind, static type and where it comes from and goes to."""

    name: str
    kind: str  # "data", "const" or "shape"
    dtype: str | None
    shape: tuple[Dim, ...] | None
    producer: int | None = None  # node index; None for graph inputs and initializers
    consumers: list[tuple[int, int]] = field(default_factory=list)  # (node index, input slot)


@dataclass
class ModelGraph:
    """A loaded, shape-inferred ONNX model and its data-flow graph."""

    path: Path
    model: onnx.ModelProto
    tensors: dict[str, Tensor]
    nodes: list[onnx.NodeProto]
    node_inputs: list[list[str]]  # explicit inputs plus outer-scope names used by subgraphs
    node_kind: list[str]  # kind of each node's outputs
    inputs: list[str]  # data inputs (graph inputs that are not initializers)
    outputs: list[str]
    opset: int
    initializers: dict[str, onnx.TensorProto]
    dim_names: dict[str, str]  # symbolic dim in this model -> canonical name ("batch", "dim1", ...)
    nested: set[int] = field(default_factory=set)  # nodes that carry subgraphs (If/Loop/Scan bodies)
    # shape -> canonical shape: tensors share a few shapes, and layers ask for every op's
    _canonical: dict[tuple, tuple] = field(default_factory=dict, repr=False, compare=False)

    @property
    def data_nodes(self) -> list[int]:
        """Indices of the nodes on the data path, in topological order."""
        return [i for i, kind in enumerate(self.node_kind) if kind == "data"]

    def canonical_shape(self, name: str) -> tuple[Dim, ...] | None:
        """The tensor's shape with input dims renamed canonically (``batch`` first), others ``?``."""
        shape = self.tensors[name].shape
        if shape is None:
            return None
        canonical = self._canonical.get(shape)
        if canonical is None:
            # Dims that shape inference invented (unk__N) differ between models: unknown, "?".
            canonical = tuple([d if isinstance(d, int) else self._canonical_dim(d) if d else "?" for d in shape])
            self._canonical[shape] = canonical
        return canonical

    def _canonical_dim(self, dim: str) -> str:
        """An input dim's canonical name; an expression of input dims that the exporter wrote
        (``(H//2)`` after a stride-2 pool) with each of them renamed; anything else ``?``."""
        if dim in self.dim_names:
            return self.dim_names[dim]
        names = _IDENTIFIER.findall(dim)
        if not names or any(n not in self.dim_names for n in names):
            return "?"
        return _IDENTIFIER.sub(lambda m: self.dim_names[m.group(0)], dim)

    @cached_property
    def data_graph(self) -> nx.DiGraph:
        """The data part as a DiGraph of ops, built once per model.

        Nodes: ``("op", i)`` for each data op, ``("tensor", name)`` for each data input, and the
        virtual ``SOURCE`` and ``SINK``. Edges: ``u -> ("op", i)`` when op i reads a data tensor
        that u produces (or that u is), outer-scope reads of subgraphs included; ``SOURCE ->``
        every data input and every data op that reads no data (random generators); ``u -> SINK``
        for the producer of every data output. Ops rather than tensors are the nodes: the graph
        is half the size, and a tensor is recovered as the one live output of its op.
        """
        graph = nx.DiGraph()
        graph.add_nodes_from((SOURCE, SINK))
        tensors = self.tensors

        def source_of(name: str) -> tuple:
            producer = tensors[name].producer
            return ("tensor", name) if producer is None else ("op", producer)

        edges: list[tuple] = [(SOURCE, ("tensor", name)) for name in self.inputs]
        for i in self.data_nodes:
            op = ("op", i)
            reads = [source_of(n) for n in self.node_inputs[i] if n and tensors[n].kind == "data"]
            edges += [(u, op) for u in reads] if reads else [(SOURCE, op)]
        edges += [(source_of(n), SINK) for n in self.outputs if tensors[n].kind == "data"]
        graph.add_edges_from(edges)
        return graph

    def to_networkx(self) -> nx.DiGraph:
        """The whole graph with attributes: op nodes ``("op", i)``, tensor nodes ``("tensor", name)``
        of every kind."""
        graph = nx.DiGraph()
        for name, tensor in self.tensors.items():
            graph.add_node(("tensor", name), kind=tensor.kind, dtype=tensor.dtype, shape=tensor.shape)
        for i, node in enumerate(self.nodes):
            graph.add_node(("op", i), op_type=node.op_type, kind=self.node_kind[i])
            for slot, name in enumerate(self.node_inputs[i]):
                if name:
                    graph.add_edge(("tensor", name), ("op", i), slot=slot)
            for name in node.output:
                if name:
                    graph.add_edge(("op", i), ("tensor", name))
        return graph


@lru_cache(maxsize=None)
def _np_ok(elem_type: int) -> bool:
    try:
        helper.tensor_dtype_to_np_dtype(elem_type)
        return True
    except Exception:  # noqa: BLE001 - some ONNX types have no numpy equivalent
        return False


@lru_cache(maxsize=None)
def dtype_name(elem_type: int) -> str:
    """A readable name of an ONNX element type (numpy's name when there is one)."""
    if elem_type == onnx.TensorProto.STRING:
        return "string"
    if _np_ok(elem_type):
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    return onnx.TensorProto.DataType.Name(elem_type).lower()


def _type_of(value_info: onnx.ValueInfoProto) -> tuple[str | None, tuple[Dim, ...] | None]:
    ttype = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type"):
        return None, None
    dtype = dtype_name(ttype.elem_type) if ttype.elem_type else None
    if not ttype.HasField("shape"):
        return dtype, None
    dims: list[Dim] = []
    for d in ttype.shape.dim:
        which = d.WhichOneof("value")
        dims.append(d.dim_value if which == "dim_value" else d.dim_param if which == "dim_param" else None)
    return dtype, tuple(dims)


def _has_external_data(graph: onnx.GraphProto) -> bool:
    """Whether an initializer or attribute tensor of ``graph`` or its subgraphs is stored outside."""
    external = onnx.TensorProto.EXTERNAL
    if any(t.data_location == external for t in graph.initializer):
        return True
    for node in graph.node:
        for attr in node.attribute:
            kind = attr.type
            if ((kind == onnx.AttributeProto.TENSOR and attr.t.data_location == external)
                    or (kind == onnx.AttributeProto.TENSORS and any(t.data_location == external for t in attr.tensors))
                    or (kind == onnx.AttributeProto.GRAPH and _has_external_data(attr.g))
                    or (kind == onnx.AttributeProto.GRAPHS and any(_has_external_data(g) for g in attr.graphs))):
                return True
    return False


def read_model(path: Path) -> onnx.ModelProto:
    """Load and check an ONNX file (external data allowed); FusekitError when it is unusable."""
    path = Path(path)
    if not path.exists():
        raise FusekitError(f"model file {path} does not exist; check the path")
    if not path.is_file():
        raise FusekitError(f"{path} is not a file; pass an .onnx model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several types for bad bytes
        raise FusekitError(f"{path} is not a valid ONNX model (not ONNX or truncated: "
                           f"{type(exc).__name__}); re-export or re-download it") from None
    # onnx's own loader walks every tensor in Python even when none is external (ten times the
    # parse time of a 10,000-node model): look first, load only when needed.
    if model.HasField("graph") and _has_external_data(model.graph):
        try:
            onnx.load_external_data_for_model(model, str(path.parent))
        except Exception as exc:  # noqa: BLE001 - onnx reports a missing file as ValidationError
            detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
            raise FusekitError(f"{path}: external data missing or unreadable ({detail}); keep the weights "
                               f"file beside the model") from None
    if not model.HasField("graph") or not model.graph.node:
        raise FusekitError(f"{path} is not a valid ONNX model (no graph or no nodes); re-export it")
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # noqa: BLE001 - checker raises ValidationError and C++ errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FusekitError(f"{path} fails onnx.checker ({first}); re-export a valid model") from None
    opset = optable.default_opset(model)
    if opset < MIN_OPSET:
        raise FusekitError(f"{path} uses opset {opset}; fusekit needs opset {MIN_OPSET} or newer "
                           f"(re-export with a newer opset or convert with onnx.version_converter)")
    if model.functions:
        model = onnx.inliner.inline_local_functions(model)
    return model


def infer_shapes(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    """Strict ONNX shape inference with data propagation; FusekitError naming the op it fails on."""
    try:
        return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True, data_prop=True)
    except Exception as exc:  # noqa: BLE001 - InferenceError and friends
        lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = lines[0] if lines else type(exc).__name__
        raise FusekitError(f"{path}: ONNX shape inference fails ({detail[:200]}); replace or remove "
                           f"that op, or re-export the model with standard ONNX ops") from None


def _canonical_dims(model: onnx.ModelProto, inputs: list[str]) -> dict[str, str]:
    """Symbolic input dims in order of appearance: the first is ``batch``, then ``dim1``, ..."""
    names: dict[str, str] = {}
    by_name = {v.name: v for v in model.graph.input}
    for name in inputs:
        _, shape = _type_of(by_name[name])
        for d in shape or ():
            if isinstance(d, str) and d not in names:
                names[d] = "batch" if not names else f"dim{len(names)}"
    return names


class _Untyped(FusekitError):
    """Shape inference left a data tensor without a type or rank."""


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """A copy of ``model`` whose top-level nodes computed from constants alone are Constant nodes
    (evaluated by onnx's reference evaluator), or None when there are none.

    Why: ONNX shape inference propagates shape values through a few ops only; the legacy
    torch exporter computes some reshape targets from constants with others (``Mod`` in
    ``unflatten``), so the shapes after such a Reshape stay unknown until those are folded.
    """
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    known: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes, changed = [], False
    for node in graph.node:
        if node.op_type == "Constant" and not node.domain:
            value = next((a for a in node.attribute if a.name == "value"), None)
            if value is not None:
                known[node.output[0]] = numpy_helper.to_array(value.t)
            nodes.append(node)
            continue
        ins = [n for n in node.input if n]
        if (not ins or any(n not in known for n in ins) or optable.subgraphs(node) or node.domain
                or not optable.foldable(node.op_type, node.domain)):
            nodes.append(node)
            continue
        try:
            values = ReferenceEvaluator(node).run(None, {n: known[n] for n in ins})
        except Exception:  # noqa: BLE001 - an op the reference evaluator lacks stays as it is
            nodes.append(node)
            continue
        for name, value in zip(node.output, values):
            known[name] = np.asarray(value)
            nodes.append(helper.make_node("Constant", [], [name], name=f"{node.name or name}/folded",
                                          value=numpy_helper.from_array(np.asarray(value), name)))
        changed = True
    if not changed:
        return None
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    del folded.graph.node[:]
    folded.graph.node.extend(nodes)
    return folded


def load_graph(path: Path, model: onnx.ModelProto | None = None) -> ModelGraph:
    """Read, check and shape-infer ``path``; classify every tensor as data, const or shape.

    ``model``: the file as :func:`read_model` already returned it, to not read it twice. When
    shape inference leaves a data tensor untyped, the constant-only nodes are folded
    (:func:`fold_constants`) and the folded model is analysed instead (an equivalent graph).
    """
    path = Path(path)
    model = model if model is not None else read_model(path)
    try:
        return _load_graph(path, model)
    except _Untyped:
        folded = fold_constants(model)
        if folded is None:
            raise
        return _load_graph(path, folded)


def _load_graph(path: Path, model: onnx.ModelProto) -> ModelGraph:
    model = infer_shapes(model, path)
    graph = model.graph
    opset = optable.default_opset(model)
    initializers = {t.name: t for t in graph.initializer}
    tensors: dict[str, Tensor] = {}
    for t in graph.initializer:
        tensors[t.name] = Tensor(t.name, "const", dtype_name(t.data_type), tuple(t.dims))
    for sp in graph.sparse_initializer:
        tensors[sp.values.name] = Tensor(sp.values.name, "const", dtype_name(sp.values.data_type),
                                         tuple(int(d) for d in sp.dims))
    inputs: list[str] = []
    for v in graph.input:
        if v.name in tensors:
            continue
        dtype, shape = _type_of(v)
        tensors[v.name] = Tensor(v.name, "data", dtype, shape)
        inputs.append(v.name)
    types = {v.name: _type_of(v) for v in list(graph.value_info) + list(graph.output)}
    nodes = list(graph.node)
    node_inputs: list[list[str]] = []
    node_kind: list[str] = []
    nested: set[int] = set()
    for i, node in enumerate(nodes):
        ins = list(node.input)
        subs = optable.subgraphs(node)
        if subs:
            nested.add(i)
        for sub in subs:
            ins += [n for n in optable.outer_names(sub) if n not in ins]
        node_inputs.append(ins)
        kinds = set()
        for slot, name in enumerate(ins):
            if not name:
                continue
            if name not in tensors:
                raise FusekitError(f"{path}: node {node.name or node.op_type} reads {name!r}, which nothing "
                                   f"produces; re-export a valid model")
            tensors[name].consumers.append((i, slot))
            kinds.add(tensors[name].kind)
        if optable.is_shape_only(node.op_type, node.domain):
            kind = "const" if kinds <= {"const"} else "shape"
        elif "data" in kinds:
            kind = "data"
        elif "shape" in kinds:
            kind = "shape"
        elif not optable.foldable(node.op_type, node.domain):
            kind = "data"  # an op that may be random (or is unknown) is never taken for a constant
        else:
            kind = "const"
        node_kind.append(kind)
        for name in node.output:
            if not name:
                continue
            dtype, shape = types.get(name, (None, None))
            if kind == "const" and node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        dtype, shape = dtype_name(attr.t.data_type), tuple(int(d) for d in attr.t.dims)
            tensors[name] = Tensor(name, kind, dtype, shape, producer=i)
    outputs = [o.name for o in graph.output]
    for name in outputs:
        if name not in tensors:
            raise FusekitError(f"{path}: graph output {name!r} is not produced by any node; re-export the model")
        dtype, shape = types.get(name, (None, None))
        if tensors[name].shape is None:
            tensors[name].dtype, tensors[name].shape = dtype, shape
    sequences = {v.name for v in list(graph.value_info) + list(graph.output) if v.type.HasField("sequence_type")}
    _check_typed(path, nodes, node_kind, tensors, set(outputs), sequences)
    dim_names = _canonical_dims(model, inputs)
    dim_names.update(_concat_aliases(nodes, tensors, dim_names))
    return ModelGraph(path=path, model=model, tensors=tensors, nodes=nodes, node_inputs=node_inputs,
                      node_kind=node_kind, inputs=inputs, outputs=outputs, opset=opset,
                      initializers=initializers, dim_names=dim_names, nested=nested)


def _concat_aliases(nodes: list[onnx.NodeProto], tensors: dict[str, Tensor], dim_names: dict[str, str]) -> dict[str, str]:
    """Dims that shape inference invented, named after the input dim a Concat shows they equal.

    Why: a Loop's scan output (the legacy exporter's ``nn.EmbeddingBag``) gets an invented
    length (``unk__3``), which is really the batch: the Concat that joins it to the dense
    features' ``[batch, d]`` proves it, since every axis but the joined one must agree."""
    aliases: dict[str, str] = {}
    for node in nodes:
        if node.op_type != "Concat" or node.domain or len(node.input) < 2:
            continue
        shapes = [tensors[n].shape if n in tensors else None for n in node.input if n]
        if any(s is None for s in shapes) or len({len(s) for s in shapes}) != 1:
            continue
        rank = len(shapes[0])
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0) % max(rank, 1)
        for i in range(rank):
            if i == axis:
                continue
            dims = [s[i] for s in shapes]
            known = {dim_names.get(d) or aliases.get(d) for d in dims if isinstance(d, str)} - {None}
            if len(known) != 1 or any(isinstance(d, int) for d in dims):
                continue
            name = known.pop()
            aliases.update({d: name for d in dims if isinstance(d, str) and d not in dim_names and d not in aliases})
    return aliases


_SAME_SHAPE = ("Cast", "CastLike", "Identity")


def _check_typed(path: Path, nodes: list[onnx.NodeProto], node_kind: list[str], tensors: dict[str, Tensor],
                 outputs: set[str], sequences: set[str]) -> None:
    """Every data tensor needs an inferred type and rank; name the first op where inference stopped.

    Exempt: tensors nothing reads, and sequences (never a boundary). A tensor whose only reader
    keeps its shape (a Cast) takes that reader's inferred shape: the dynamo exporter's EmbeddingBag
    ends in a ConcatFromSequence that ONNX shape inference leaves unranked, and a Cast it annotated."""
    for i, node in enumerate(nodes):
        if node_kind[i] != "data":
            continue
        for name in node.output:
            t = tensors.get(name) if name else None
            if t is None or (t.dtype is not None and t.shape is not None) or name in sequences:
                continue
            if not t.consumers and name not in outputs:
                continue
            if t.shape is None and t.dtype is not None and len(t.consumers) == 1:
                reader = nodes[t.consumers[0][0]]
                if reader.op_type in _SAME_SHAPE and not reader.domain and t.consumers[0][1] == 0:
                    t.shape = tensors[reader.output[0]].shape
                    if t.shape is not None:
                        continue
            op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
            raise _Untyped(f"{path}: ONNX shape inference cannot handle op {op} (node "
                           f"{node.name or i}); replace it with standard ONNX ops or re-export the model")


def rename_inputs(model: onnx.ModelProto, mapping: dict[str, str], where: str = "the model") -> dict[str, str]:
    """Rename ``model``'s graph inputs in place by ``mapping`` (old -> new), every reader included
    (subgraphs too); returns the renames that applied. FusekitError when a new name is taken."""
    graph = model.graph
    applied = {i.name: mapping[i.name] for i in graph.input if i.name in mapping and mapping[i.name] != i.name}
    if not applied:
        return {}
    taken = ({i.name for i in graph.input} | {t.name for t in graph.initializer}
             | {o for node in graph.node for o in node.output}) - set(applied)
    clash = sorted(set(applied.values()) & taken)
    if clash:
        raise FusekitError(f"{where} already has a tensor named {clash[0]!r}; map its input to another name")

    def rename(g: onnx.GraphProto) -> None:
        for node in g.node:
            for k, name in enumerate(node.input):
                if name in applied:
                    node.input[k] = applied[name]
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    rename(attr.g)
                for sub in attr.graphs:
                    rename(sub)
        for value in g.output:
            if value.name in applied:
                value.name = applied[value.name]

    for value in graph.input:
        if value.name in applied:
            value.name = applied[value.name]
    rename(graph)
    return applied
