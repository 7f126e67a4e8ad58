"""Cutting components out of a model, and checking that chained components reproduce it.

A component holds the data ops between two cut points plus the constant and shape subgraphs
they read. A shape read from a tensor before the component's input (for example the batch
size taken from the model input and used much later) is rebuilt from the component's own
input: static dims become constants and symbolic dims are read with Shape/Gather from the
input, which carries the same symbolic dims (``align.analyse`` refuses cuts where it does not).

Assembling a component renames its boundary tensors (``x``/``y``, or the model's own names)
and moves other tensors of those names aside. When a component's ops carry subgraphs (If,
Loop, Scan), a renamed tensor may be read inside them from the outer scope: there
onnx-graphsurgeon assembles the component, because its graph shares one tensor object across
all scopes, so a rename reaches every nested read (then ``cleanup``/``toposort``/``export_onnx``).
Flat components, the usual case, are assembled by copying protobuf nodes instead. Measured on
one 10,000-node model of ``benchmarks/bench_decompose.py`` (one core): ``gs.import_onnx`` 0.56 s,
``gs.export_onnx`` 0.31 s, ``cleanup`` 0.13 s, ``toposort`` 0.21 s; its four components take
1.44 s through graphsurgeon and 0.15 s by protobuf, so graphsurgeon throughout would more than
double the two-model benchmark (goal: 2 s). ``use_graphsurgeon=True`` forces it; the tests check
that both ways give the same components.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import helper, numpy_helper
from onnx_graphsurgeon.logger import G_LOGGER

from fusekit import __version__
from fusekit.errors import FusekitError
from fusekit.options import literal, quote
from fusekit.decompose.branches import carry_names
from fusekit.decompose.graph import ModelGraph

TOLERANCE = 1e-5


def _elem_type(dtype: str) -> int:
    if dtype == "string":
        return onnx.TensorProto.STRING
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


def value_info(graph: ModelGraph, tensor: str, name: str) -> onnx.ValueInfoProto:
    """A graph input/output declaration for ``tensor`` under ``name``, canonical dim names."""
    t = graph.tensors[tensor]
    shape = graph.canonical_shape(tensor)
    dims = None if shape is None else [None if d == "?" else d for d in shape]
    return helper.make_tensor_value_info(name, _elem_type(t.dtype or "float32"), dims)


class _Builder:
    """Collects the nodes and initializers of one component."""

    def __init__(self, graph: ModelGraph, data_nodes: list[int], inputs: list[str]):
        self.graph = graph
        self.data_nodes = data_nodes
        self.inputs = inputs
        self.available = set(inputs)  # plus the outputs of data_nodes and of the support nodes
        self.data_set = set(data_nodes)
        self.support: set[int] = set()
        self.initializers: dict[str, onnx.TensorProto] = {}
        self.rewired: dict[int, list[onnx.NodeProto]] = {}
        self._input_shape: str | None = None

    def has(self, name: str) -> bool:
        """Whether the component has ``name`` without pulling anything in."""
        return name in self.available or self.graph.tensors[name].producer in self.data_set

    def need(self, names: list[str]) -> None:
        """Pull in the constant and shape subgraphs producing ``names``."""
        stack = [n for n in names if n]
        while stack:
            name = stack.pop()
            if name in self.initializers or self.has(name):
                continue
            tensor = self.graph.tensors[name]
            if tensor.producer is None:
                if name in self.graph.initializers:
                    self.initializers[name] = self.graph.initializers[name]
                    continue
                raise FusekitError(f"{self.graph.path}: component needs {name!r}, which is not available; "
                                   f"this cut cannot be made")
            j = tensor.producer
            if j in self.support:
                continue
            node = self.graph.nodes[j]
            src = node.input[0] if node.input else ""
            if (node.op_type in ("Shape", "Size") and src and self.graph.tensors[src].kind == "data"
                    and not self.has(src)):
                self.support.add(j)
                self.rewired[j] = self._rebuild_shape(node)
                self.available.update(node.output)
                continue
            self.support.add(j)
            self.available.update(o for o in node.output if o)
            stack.extend(n for n in self.graph.node_inputs[j] if n)

    def _rebuild_shape(self, node: onnx.NodeProto) -> list[onnx.NodeProto]:
        """Shape/Size of an earlier tensor, recomputed from the component's input."""
        g = self.graph
        src = g.tensors[node.input[0]]
        x = self.inputs[0]
        x_shape = list(g.tensors[x].shape or ())
        dims = list(src.shape or ())
        if node.op_type == "Shape":
            attrs = {a.name: a.i for a in node.attribute}
            rank = len(dims)
            start, end = attrs.get("start", 0), attrs.get("end", rank)
            dims = dims[slice(start, end)]
        prefix = f"fusekit_shape_{len(self.rewired)}"
        nodes: list[onnx.NodeProto] = []
        pieces: list[str] = []
        static: list[int] = []

        def flush() -> None:
            if static:
                cname = f"{prefix}_c{len(pieces)}"
                self.initializers[cname] = numpy_helper.from_array(np.asarray(static, dtype=np.int64), cname)
                pieces.append(cname)
                static.clear()

        for d in dims:
            if isinstance(d, int):
                static.append(d)
                continue
            if not isinstance(d, str) or d not in x_shape:
                raise FusekitError(f"{g.path}: cannot rebuild the shape of {node.input[0]!r} from the cut; "
                                   f"choose other levels")
            flush()
            if self._input_shape is None:
                self._input_shape = f"{prefix}_input_shape"
                nodes.append(helper.make_node("Shape", [x], [self._input_shape]))
            iname = f"{prefix}_i{len(pieces)}"
            self.initializers[iname] = numpy_helper.from_array(np.asarray([x_shape.index(d)], dtype=np.int64), iname)
            out = f"{prefix}_d{len(pieces)}"
            nodes.append(helper.make_node("Gather", [self._input_shape, iname], [out], axis=0))
            pieces.append(out)
        flush()
        if not pieces:
            cname = f"{prefix}_empty"
            self.initializers[cname] = numpy_helper.from_array(np.zeros(0, dtype=np.int64), cname)
            pieces.append(cname)
        shape_name = node.output[0] if node.op_type == "Shape" else f"{prefix}_shape"
        if len(pieces) == 1 and node.op_type == "Shape":
            nodes.append(helper.make_node("Identity", pieces, [shape_name]))
        else:
            nodes.append(helper.make_node("Concat", pieces, [shape_name], axis=0))
        if node.op_type == "Size":
            nodes.append(helper.make_node("ReduceProd", [shape_name], [node.output[0]], keepdims=0))
        return nodes

    def nodes(self) -> list[tuple[int | None, onnx.NodeProto]]:
        """(index in the model, node) for all nodes in the original topological order; rebuilt
        shape nodes (index None) stand in place of their Shape op."""
        chosen = sorted(self.support | self.data_set)
        out: list[tuple[int | None, onnx.NodeProto]] = []
        for j in chosen:
            if j in self.rewired:
                out.extend((None, node) for node in self.rewired[j])
            else:
                out.append((j, self.graph.nodes[j]))
        return out


def _aside(name: str, names: set[str]) -> str:
    """A new name for a tensor whose name a boundary takes."""
    alt = f"{name}__orig"
    while alt in names:
        alt += "_"
    return alt


def _rename(graph: ModelGraph, entries: list[tuple[int | None, onnx.NodeProto]], inits: dict[str, onnx.TensorProto],
            mapping: dict[str, str]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Copy nodes and initializers with tensors renamed; other tensors that clash with the new
    names move aside. Top-level names only: components with subgraphs go to graphsurgeon."""
    reserved = set(mapping.values())
    chosen = {j for j, _ in entries if j is not None}
    rebuilt = {n for j, node in entries if j is None for n in (*node.input, *node.output)}

    def present(name: str) -> bool:  # a tensor of this name is in the component
        t = graph.tensors.get(name)
        return (name in rebuilt or name in inits or t is not None
                and (t.producer in chosen or any(c in chosen for c, _ in t.consumers)))

    if any(n not in mapping and present(n) for n in reserved):
        # A tensor is named like a boundary: look at every name to find it and a free one.
        names = {n for _, node in entries for n in (*node.input, *node.output) if n} | set(inits)
        full = dict(mapping)
        full.update((n, _aside(n, names)) for n in names if n in reserved and n not in mapping)
        touched = None
    else:
        # Only the ops that read or write a boundary tensor (and rebuilt ones) need copies.
        full = mapping
        touched = set()
        for name in mapping:
            tensor = graph.tensors[name]
            touched.update(c for c, _ in tensor.consumers)
            touched.add(tensor.producer)
    copies = []
    for j, node in entries:
        if touched is not None and j is not None and j not in touched:
            copies.append(node)  # make_graph copies it anyway
            continue
        if not any(n in full for n in node.input) and not any(n in full for n in node.output):
            copies.append(node)
            continue
        new = onnx.NodeProto()
        new.CopyFrom(node)
        for k, n in enumerate(new.input):
            if n in full:
                new.input[k] = full[n]
        for k, n in enumerate(new.output):
            if n in full:
                new.output[k] = full[n]
        copies.append(new)
    tensors = []
    for name, t in inits.items():
        if name not in full:
            tensors.append(t)
            continue
        new_t = onnx.TensorProto()
        new_t.CopyFrom(t)
        new_t.name = full[name]
        tensors.append(new_t)
    return copies, tensors


def _assemble_protobuf(graph: ModelGraph, entries: list[tuple[int | None, onnx.NodeProto]],
                       inits: dict[str, onnx.TensorProto], inputs: list[str], outputs: list[str],
                       mapping: dict[str, str], label: str) -> onnx.GraphProto:
    """The component's graph by copying protobuf nodes, boundary tensors renamed."""
    nodes, tensors = _rename(graph, entries, inits, mapping)
    if not nodes and outputs:
        nodes = [helper.make_node("Identity", [mapping[inputs[0]]], [mapping[outputs[0]]])]
    return helper.make_graph(nodes, label, [value_info(graph, t, mapping[t]) for t in inputs],
                             [value_info(graph, t, mapping[t]) for t in outputs], initializer=tensors)


def _assemble_graphsurgeon(graph: ModelGraph, entries: list[tuple[int | None, onnx.NodeProto]],
                           inits: dict[str, onnx.TensorProto], inputs: list[str], outputs: list[str],
                           mapping: dict[str, str], label: str) -> onnx.GraphProto:
    """The component's graph through onnx-graphsurgeon: renames reach reads in nested subgraphs."""
    src = helper.make_graph([node for _, node in entries], label, [value_info(graph, t, t) for t in inputs],
                            [value_info(graph, t, t) for t in outputs], initializer=list(inits.values()))
    model = helper.make_model(src, opset_imports=list(graph.model.opset_import))
    model.ir_version = graph.model.ir_version
    reserved = set(mapping.values())
    try:
        # graphsurgeon prints its warnings to stdout, where --json output goes
        with G_LOGGER.suppress(G_LOGGER.CRITICAL + 1):
            component = gs.import_onnx(model)
            tensors: dict[str, gs.Tensor] = {}
            for scope in (component, *component.subgraphs(recursive=True)):
                for name, tensor in scope.tensors().items():
                    tensors.setdefault(name, tensor)  # outer-scope reads are the same object
            names = set(tensors)
            for name, tensor in tensors.items():
                if name in mapping:
                    tensor.name = mapping[name]
                elif name in reserved:
                    tensor.name = _aside(name, names)
            component.cleanup().toposort()
            return gs.export_onnx(component, do_type_check=False).graph
    except gs.OnnxGraphSurgeonException as exc:
        raise FusekitError(f"{graph.path}: onnx-graphsurgeon cannot assemble component {label} "
                           f"({str(exc).splitlines()[0][:160]}); choose other levels or report this model") from None


def cut_component(graph: ModelGraph, data_nodes: list[int], inputs: list[str], outputs: list[str],
                  input_names: list[str], output_names: list[str], label: str,
                  use_graphsurgeon: bool | None = None) -> onnx.ModelProto:
    """The sub-model computing ``outputs`` from ``inputs`` with the given data nodes, renamed.

    ``use_graphsurgeon``: None assembles with onnx-graphsurgeon only when an op carries a
    subgraph (see the module docstring); True or False forces one way.
    """
    builder = _Builder(graph, data_nodes, inputs)
    for i in data_nodes:
        builder.need([n for n in graph.node_inputs[i] if n and graph.tensors[n].kind != "data"])
    builder.need([o for o in outputs if graph.tensors[o].kind != "data"])
    if len(set(input_names + output_names)) != len(input_names + output_names):
        raise FusekitError(f"{graph.path}: component {label} would have clashing input/output names; "
                           f"rename the model's inputs or outputs")
    # An output that is also an input (a carried tensor passed on) gets an Identity of its own.
    passed = {o: n for o, n in zip(outputs, output_names) if o in inputs}
    computed = [o for o in outputs if o not in passed]
    mapping = {old: new for old, new in zip(inputs, input_names)}
    mapping.update((old, new) for old, new in zip(outputs, output_names) if old not in passed)
    entries = builder.nodes()
    if use_graphsurgeon is None:
        use_graphsurgeon = any(j in graph.nested for j, _ in entries)
    assemble = _assemble_graphsurgeon if use_graphsurgeon and entries else _assemble_protobuf
    g = assemble(graph, entries, builder.initializers, inputs, computed, mapping, label)
    if passed:
        g.node.extend(helper.make_node("Identity", [mapping[o]], [n], name=f"fusekit_pass_{n}")
                      for o, n in passed.items())
        declared = {v.name: v for v in g.output}
        declared.update((n, value_info(graph, o, n)) for o, n in passed.items())
        del g.output[:]
        g.output.extend(declared[n] for n in output_names)
    src = graph.model
    model = helper.make_model(g, opset_imports=list(src.opset_import), producer_name="fusekit",
                              producer_version=__version__)
    model.ir_version = src.ir_version
    helper.set_model_props(model, {"fusekit.version": __version__, "fusekit.component": label})
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FusekitError(f"{graph.path}: component {label} fails onnx.checker ({first[:200]}); "
                           f"choose other levels or report this model") from None
    return model


def random_inputs(graph: ModelGraph, batch: int = 3, seed: int = 0, int_high: int = 2) -> dict[str, np.ndarray]:
    """Seeded random values for the model inputs; symbolic dims get ``batch``.

    Integer inputs are usually ids into embedding tables whose sizes fusekit cannot know, so
    they stay in [0, int_high).
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for name in graph.inputs:
        t = graph.tensors[name]
        shape = [d if isinstance(d, int) else batch for d in (t.shape or ())]
        dtype = np.dtype(t.dtype or "float32")
        if dtype.kind == "f":
            feeds[name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            feeds[name] = rng.integers(0, int_high, size=shape).astype(dtype)
        elif dtype.kind == "b":
            feeds[name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            raise FusekitError(f"{literal(graph.path)}: cannot make random values for input {quote(name)} of type "
                               f"{literal(t.dtype)}; pass {{verify=False}} to skip the check", owner="decompose()")
    return feeds


def _session(model: onnx.ModelProto | Path):
    from fusekit.onnxio.sessions import session

    # Unoptimised graphs load several times faster and compute what the file says, op by op.
    return session(model, "cpu", threads=None, optimize=False, quiet=True)[0]


def reference_values(graph: ModelGraph, tensors: list[str], feeds: dict[str, np.ndarray],
                     sess=None) -> dict[str, np.ndarray]:
    """The original model's outputs and the values of ``tensors``, computed by onnxruntime in one
    session (``reference_session``; pass ``sess`` to reuse one)."""
    sess = sess if sess is not None else reference_session(graph, tensors)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def reference_session(graph: ModelGraph, tensors: list[str]):
    """One session of the original model with ``tensors`` added as outputs (model inputs skipped)."""
    model = onnx.ModelProto()
    model.CopyFrom(graph.model)
    present = {o.name for o in model.graph.output} | set(graph.inputs)
    for t in dict.fromkeys(tensors):
        if t not in present:
            model.graph.output.append(value_info(graph, t, t))
    return _session(model)


def verify_chain(graph: ModelGraph, components: list[Path], head: Path, boundaries: list[str],
                 carried: list[list[str]] | None = None, seed: int = 0) -> float:
    """Chain the components and head in onnxruntime on random inputs; return the worst absolute
    difference to the original model (at every cut, every carried tensor and the outputs);
    FusekitError above 1e-5.

    ``carried[k]``: the tensors that level k+1 outputs after ``y`` (``carry0``, ...). One
    session per file and one for the original model (all cut and carried tensors as outputs),
    each created once: session creation is most of the time verification takes.
    """
    carried = carried if carried is not None else [[] for _ in boundaries]
    reference = reference_session(graph, boundaries + [t for level in carried for t in level])
    feeds = random_inputs(graph, seed=seed)
    try:
        ref = reference_values(graph, [], feeds, reference)
    except Exception:  # noqa: BLE001 - random ids may fall outside a table: retry with id 0
        feeds = random_inputs(graph, seed=seed, int_high=1)
        try:
            ref = reference_values(graph, [], feeds, reference)
        except Exception as exc:  # noqa: BLE001
            raise FusekitError(f"{literal(graph.path)}: onnxruntime cannot run the model on random inputs "
                               f"({literal(str(exc).splitlines()[0][:160])}); pass {{verify=False}} to skip the check",
                               owner="decompose()") from None
    ref.update(feeds)  # carried model inputs pass through unchanged
    worst = 0.0
    value: dict[str, np.ndarray] = feeds
    for k, path in enumerate(components):
        names = ["y"] + carry_names(len(carried[k]), k + 1)
        outs = _session(path).run(names, value)
        for name, tensor, out in zip(names, [boundaries[k]] + carried[k], outs):
            diff = _maxdiff(out, ref[tensor])
            worst = max(worst, diff)
            if diff > TOLERANCE:
                where = "at its cut" if name == "y" else f"in carried tensor {name} ({tensor!r})"
                raise FusekitError(f"{graph.path}: level {k + 1} differs from the model by {diff:.3g} {where} "
                                   f"(tolerance {TOLERANCE}); report this model")
        value = dict(zip(["x"] + carry_names(len(carried[k])), outs))
    sess = _session(head)
    names = [o.name for o in sess.get_outputs()]
    for name, out in zip(names, sess.run(names, value)):
        diff = _maxdiff(out, ref[name])
        worst = max(worst, diff)
        if diff > TOLERANCE:
            raise FusekitError(f"{graph.path}: head output {name!r} differs from the model by {diff:.3g} "
                               f"(tolerance {TOLERANCE}); report this model")
    return worst


def _maxdiff(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    if a.dtype.kind in "fc":
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        # NaN where both give NaN is agreement (a fully padded row of an attention mask); NaN on
        # one side only is the largest difference, never one that passes the tolerance.
        diff = np.where(np.isnan(a64) & np.isnan(b64), 0.0, np.abs(a64 - b64))
        return float("inf") if np.isnan(diff).any() else float(np.max(diff))
    return float(np.max(a != b))
