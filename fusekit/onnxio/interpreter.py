"""An ONNX component as a frozen, differentiable torch module.

:func:`load_component` interprets the ONNX graph with the op implementations of
:mod:`fusekit.onnxio.ops`, for the ops of the op table (:mod:`fusekit.onnxio.optable`). All
planning happens once, at load time: the nodes are sorted, attributes resolved into closures,
and every node whose inputs are all constants is evaluated (constant folding). What remains is
a list of steps over value slots.

Values come in three kinds:

* constants: folded at load time; kept as buffers where a tensor op reads them and as host
  (numpy) values where an op reads them as a shape, axes, pads, ...;
* host values: the outputs of ``Shape``/``Size`` and of integer arithmetic on them, evaluated
  in python on numpy object arrays whose items are ints, or ``torch.SymInt`` while
  ``torch.export`` traces a dynamic batch. This keeps shape computations out of the tensor graph,
  so a module holding components exports again with a symbolic batch size;
* tensors: everything else.

An ``If`` whose condition is a constant is no step of its own: the branch it takes is chosen
at load time and planned inline, its outer-scope reads resolving to the enclosing graph's
values. A condition computed from the inputs is refused, since a traced (exported) graph can
hold one path only, except inside a ``Loop`` body. A Loop is one step that drives its body:
the body's nodes are planned once, by this same planner, into their own step list over the
same slots (so outer values, constants and trainable weights are shared), and run once per
iteration; an If in it plans both branches and picks one per iteration.

The module has no parameters, always computes in inference mode (no dropout, BatchNorm with its
stored statistics) whatever its ``training`` flag, and lets gradients flow to its inputs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import torch
from onnx import helper, inliner, numpy_helper
from torch import nn

from fusekit.onnxio import ops as onnx_ops
from fusekit.onnxio import optable
from fusekit.errors import FusekitError

# Host arithmetic is meant for shape vectors: larger constants and float ones (which may be
# weights, such as a small position-embedding table gathered by a Range) stay tensors.
_MAX_HOST_CONST = 64
_DEVICE_SLOT = 0


@dataclass
class _Value:
    kind: str  # "const", "host" or "tensor"
    slot: int = -1  # runtime slot (host and tensor values; consts once a tensor op reads them)
    const: torch.Tensor | None = None
    dtype: torch.dtype | None = None


def load_component(path: Path | str) -> "FrozenComponent":
    """Load an ONNX file as a :class:`FrozenComponent`; FusekitError if unreadable or unsupported."""
    path = Path(path)
    if not path.is_file():
        raise FusekitError(f"component file {path} does not exist; check the path (or re-run decompose)")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ... for a damaged file
        raise FusekitError(f"cannot read {path} as an ONNX model ({exc}); re-create the file") from None
    return FrozenComponent(model, source=str(path))


class FrozenComponent(nn.Module):
    """A frozen ONNX graph: ``forward(*inputs)`` takes the graph inputs in order.

    Returns one tensor for a single-output graph, else a tuple in ``output_names`` order.
    Constants are non-persistent buffers (they come from the ONNX file, so they stay out of
    ``state_dict`` and checkpoints) and move with ``.to(device)``.
    """

    def __init__(self, model: onnx.ModelProto, source: str = "<in-memory model>"):
        super().__init__()
        self.source = source
        self._steps: list[Callable[[list], None]] = []
        self._const_slots: list[tuple[int, str]] = []
        self.buffer_names: dict[str, str] = {}  # buffer -> the ONNX tensor it holds (an initializer or a folded value)
        self._loop_depth = 0  # > 0 while planning a Loop body
        self._build(model)
        super().train(False)

    # ------------------------------------------------------------------ planning

    def _fail(self, message: str) -> FusekitError:
        return FusekitError(f"{self.source}: {message}")

    def _build(self, model: onnx.ModelProto) -> None:
        if model.functions:
            model = inliner.inline_local_functions(model)
        graph = model.graph
        self.opset = optable.default_opset(model)
        if self.opset == 0:
            raise self._fail("the model imports no default ONNX opset; re-export it with a standard opset")
        dtypes = _value_dtypes(model)
        values: dict[str, _Value] = {}
        self._n_slots = 1  # slot 0 holds the device of the call

        for init in graph.initializer:
            values[init.name] = self._const_value(_tensor_to_torch(init, self))
        self.input_names = [i.name for i in graph.input if i.name not in values]
        self.output_names = [o.name for o in graph.output]
        self._input_slots = []
        for name in self.input_names:
            values[name] = _Value("tensor", self._new_slot(), dtype=dtypes.get(name))
            self._input_slots.append(values[name].slot)

        consumers = _consumer_count(graph)
        for node in _live(_topological(graph, set(values), self), self.output_names):
            self._plan_node(node, values, dtypes, consumers)

        self._output_getters = [self._getter(values, name, tensor=True) for name in self.output_names]

    def _new_slot(self) -> int:
        self._n_slots += 1
        return self._n_slots - 1

    @staticmethod
    def _const_value(t: torch.Tensor) -> _Value:
        return _Value("const", const=t, dtype=t.dtype)

    def _plan_node(self, node: onnx.NodeProto, values: dict, dtypes: dict, consumers: dict) -> None:
        op = node.op_type
        where = f"op {op} (node {node.name or node.output[0]!r})"
        if node.domain not in optable.DEFAULT_DOMAINS:
            raise self._fail(f"{where} of domain {node.domain!r} is not supported; only standard ONNX ops are")
        info = optable.lookup(op, node.domain)
        if info is None:
            raise self._fail(f"{where} is not supported by fusekit's ONNX interpreter; "
                             "re-export the model without it")
        if self.opset < info.min_opset:
            raise self._fail(f"{where} is supported from opset {info.min_opset} on, the model has {self.opset}; "
                             "re-export it with a newer opset")
        if info.static_condition:
            self._plan_if(node, values, dtypes, consumers, where)
            return
        if info.loop_body:
            self._plan_loop(node, values, dtypes, consumers, where)
            return
        opdef = onnx_ops.OPS[op]
        static = info.static_inputs
        attrs = _attributes(node, self, where)
        ins = [values[n] if n else None for n in node.input]
        ctx = onnx_ops.OpContext(
            op_type=op, opset=self.opset, n_inputs=len(node.input), n_outputs=len(node.output),
            input_dtypes=tuple(v.dtype if v is not None else None for v in ins),
            output_dtypes=tuple(dtypes.get(n) for n in node.output),
            used_outputs=tuple(i for i, n in enumerate(node.output) if n and consumers.get(n, 0) > 0),
            present_inputs=tuple(bool(n) for n in node.input),
        )
        try:
            fn = opdef.factory(attrs, ctx)
        except onnx_ops.UnsupportedOp as exc:
            raise self._fail(f"{where} is not supported with {exc}") from None
        except KeyError as exc:
            raise self._fail(f"{where} lacks the required attribute {exc}") from None

        live = [v for v in ins if v is not None]
        # Every op of the table is deterministic (optable.foldable), so constant inputs fold.
        if all(v.kind == "const" for v in live) and not info.makes_sequence:
            self._fold(node, fn, opdef, static, ins, values, where)
            return
        if op in ("Shape", "Size") and ins[0].kind == "tensor":
            self._plan_shape_of(node, attrs, ins[0], values)
            return
        if all(v.kind in ("const", "host") for v in live) and all(
            v.kind == "host" or (v.const.numel() <= _MAX_HOST_CONST and not v.const.is_floating_point()) for v in live
        ) and op in onnx_ops.SHAPE_OPS:
            host_fn = onnx_ops.SHAPE_OPS[op](attrs, ctx)
            if host_fn is not None:
                self._plan_host(node, host_fn, ins, values, dtypes)
                return
        self._plan_tensor(node, fn, opdef, static, ins, values, dtypes)

    def _plan_if(self, node: onnx.NodeProto, values: dict, dtypes: dict, consumers: dict, where: str) -> None:
        """Plan the branch a constant condition selects in the If's place."""
        cond = values[node.input[0]] if node.input and node.input[0] else None
        if cond is not None and cond.kind != "const" and self._loop_depth:
            self._plan_runtime_if(node, cond, values, dtypes, consumers, where)
            return
        if cond is None or cond.kind != "const":
            raise self._fail(f"{where}: its condition depends on the data, and export-traceable fusion needs a "
                             "static branch; re-export the model with a constant condition")
        ctx = onnx_ops.OpContext(op_type=node.op_type, opset=self.opset, n_inputs=len(node.input),
                                 n_outputs=len(node.output))
        try:
            which = onnx_ops.OPS[node.op_type].factory({}, ctx)(cond.const)
        except onnx_ops.UnsupportedOp as exc:
            raise self._fail(f"{where} is not supported with {exc}") from None
        branch = next((a.g for a in node.attribute if a.name == which), None)
        if branch is None or branch.input or len(branch.output) != len(node.output):
            raise self._fail(f"{where} has no {which} with {len(node.output)} outputs and no inputs; "
                             "the file is malformed")
        # A copy, so that names defined in the branch stay in it; the _Value objects are shared,
        # so a constant of the enclosing graph still becomes one buffer however often it is read.
        scope = dict(values)
        for init in branch.initializer:
            scope[init.name] = self._const_value(_tensor_to_torch(init, self))
        outs = [o.name for o in branch.output]
        for inner in _live(_topological(branch, set(scope), self), outs):
            self._plan_node(inner, scope, dtypes, consumers)
        for name, out in zip(node.output, outs):
            if name:
                values[name] = scope[out]

    def _plan_subgraph(self, graph: onnx.GraphProto, values: dict, dtypes: dict, consumers: dict,
                       inputs: dict[str, _Value]) -> tuple[list, list]:
        """Plan ``graph`` (a branch or loop body) into its own steps; returns (steps, output getters).

        The subgraph sees the enclosing values, its own initializers and ``inputs``; what it
        defines stays in its scope.
        """
        scope = dict(values)
        scope.update(inputs)
        for init in graph.initializer:
            scope[init.name] = self._const_value(_tensor_to_torch(init, self))
        outer, self._steps = self._steps, []
        try:
            outs = [o.name for o in graph.output]
            for inner in _live(_topological(graph, set(scope), self), outs):
                self._plan_node(inner, scope, dtypes, consumers)
            getters = [self._getter(scope, name, tensor=True) for name in outs]
            return self._steps, getters
        finally:
            self._steps = outer

    def _plan_runtime_if(self, node, cond: _Value, values, dtypes, consumers, where) -> None:
        """An If inside a Loop body whose condition is data: both branches planned, one run per call."""
        branches = {}
        for name in ("then_branch", "else_branch"):
            graph = next((a.g for a in node.attribute if a.name == name), None)
            if graph is None or graph.input or len(graph.output) != len(node.output):
                raise self._fail(f"{where} has no {name} with {len(node.output)} outputs and no inputs; "
                                 "the file is malformed")
            branches[name] = self._plan_subgraph(graph, values, dtypes, consumers, {})
        ctx = onnx_ops.OpContext(op_type=node.op_type, opset=self.opset, n_inputs=len(node.input),
                                 n_outputs=len(node.output))
        choose = onnx_ops.OPS[node.op_type].factory({}, ctx)
        read = self._getter(values, node.input[0], tensor=True)
        outs = [self._new_slot() if n else -1 for n in node.output]

        def step(env):
            steps, getters = branches[choose(read(env))]
            for s in steps:
                s(env)
            for slot, g in zip(outs, getters):
                if slot >= 0:
                    env[slot] = g(env)
        self._steps.append(step)
        _bind_outputs(node, outs, values, dtypes)

    def _plan_loop(self, node, values, dtypes, consumers, where) -> None:
        """A Loop as one step that runs its body (planned once, here) per iteration."""
        body = next((a.g for a in node.attribute if a.name == "body"), None)
        n_carried = len(node.input) - 2
        if body is None or n_carried < 0 or len(body.input) != n_carried + 2 or len(body.output) < n_carried + 1:
            raise self._fail(f"{where} needs a body with 2 + {max(n_carried, 0)} inputs and at least "
                             f"{max(n_carried, 0) + 1} outputs; the file is malformed")
        slots = [self._new_slot() for _ in body.input]
        inputs = {vi.name: _Value("tensor", slot, dtype=dtypes.get(vi.name)) for vi, slot in zip(body.input, slots)}
        self._loop_depth += 1
        try:
            steps, getters = self._plan_subgraph(body, values, dtypes, consumers, inputs)
        finally:
            self._loop_depth -= 1
        ctx = onnx_ops.OpContext(op_type=node.op_type, opset=self.opset, n_inputs=len(node.input),
                                 n_outputs=len(node.output))
        run = onnx_ops.OPS[node.op_type].factory(_attributes(node, self, where, subgraphs=True), ctx)
        reads = [self._getter(values, n, tensor=i >= 2) if n else _none for i, n in enumerate(node.input)]
        outs = [self._new_slot() if n else -1 for n in node.output]

        def step(env):
            def iteration(i, cond, carried):
                env[slots[0]], env[slots[1]] = i, cond
                for slot, v in zip(slots[2:], carried):
                    env[slot] = v
                for s in steps:
                    s(env)
                return [g(env) for g in getters]

            res = run(iteration, *[g(env) for g in reads])
            for slot, r in zip(outs, res):
                if slot >= 0:
                    env[slot] = r
        self._steps.append(step)
        _bind_outputs(node, outs, values, dtypes)

    def _fold(self, node, fn, opdef, static, ins, values, where) -> None:
        args = [None if v is None else (onnx_ops.host(v.const) if i in static else v.const)
                for i, v in enumerate(ins)]
        try:
            with torch.no_grad():
                out = fn(*args, device=torch.device("cpu")) if opdef.needs_device else fn(*args)
        except onnx_ops.UnsupportedOp as exc:
            raise self._fail(f"{where} is not supported with {exc}") from None
        except Exception as exc:  # a malformed graph: report it at load time, not mid-training
            raise self._fail(f"{where} failed on its constant inputs ({exc}); check the model") from None
        outs = out if isinstance(out, (tuple, list)) else (out,)
        for name, t in zip(node.output, outs):
            if name:
                values[name] = self._const_value(t.detach().clone())

    def _plan_shape_of(self, node, attrs, src: _Value, values) -> None:
        i, o = src.slot, self._new_slot()
        if node.op_type == "Size":
            def step(env):
                env[o] = np.array(env[i].numel(), dtype=object)
        else:
            start, end = attrs.get("start", 0), attrs.get("end")

            def step(env):
                env[o] = np.array(list(env[i].shape)[start:end], dtype=object)
        self._steps.append(step)
        values[node.output[0]] = _Value("host", o, dtype=torch.int64)

    def _plan_host(self, node, host_fn, ins, values, dtypes) -> None:
        getters = [self._getter(values, n, tensor=False) if n else _none for n in node.input]
        outs = [self._new_slot() if n else -1 for n in node.output]

        def step(env):
            res = host_fn(*[g(env) for g in getters])
            res = res if isinstance(res, tuple) else (res,)
            for slot, r in zip(outs, res):
                if slot >= 0:
                    env[slot] = r
        self._steps.append(step)
        first = next((v.dtype for v in ins if v is not None), None)
        for name, slot in zip(node.output, outs):
            if name:
                values[name] = _Value("host", slot, dtype=dtypes.get(name, first))

    def _plan_tensor(self, node, fn, opdef, static, ins, values, dtypes) -> None:
        getters = [
            _none if not n else self._getter(values, n, tensor=i not in static)
            for i, n in enumerate(node.input)
        ]
        outs = [self._new_slot() if n else -1 for n in node.output]
        single = len(outs) == 1
        o0 = outs[0]
        if opdef.needs_device:
            def call(env):
                return fn(*[g(env) for g in getters], device=env[_DEVICE_SLOT])
        else:
            def call(env):
                return fn(*[g(env) for g in getters])

        if single:
            def step(env):
                env[o0] = call(env)
        else:
            def step(env):
                res = call(env)
                res = res if isinstance(res, (tuple, list)) else (res,)
                for slot, r in zip(outs, res):
                    if slot >= 0:
                        env[slot] = r
        self._steps.append(step)
        _bind_outputs(node, outs, values, dtypes)

    def _getter(self, values: dict, name: str, tensor: bool) -> Callable[[list], Any]:
        """How a step reads `name`: as a tensor (`tensor=True`) or as a host value."""
        v = values[name]
        if v.kind == "const":
            if not tensor:
                hv = onnx_ops.host(v.const)
                return lambda env: hv
            if v.slot < 0:
                v.slot = self._new_slot()
                buf = f"c{len(self._const_slots)}"
                self.register_buffer(buf, v.const, persistent=False)
                self._const_slots.append((v.slot, buf))
                self.buffer_names[buf] = name
            slot = v.slot
            return lambda env: env[slot]
        slot = v.slot
        if v.kind == "host" and tensor:
            dtype = v.dtype or torch.int64
            return lambda env: _materialize(env[slot], dtype, env[_DEVICE_SLOT])
        return lambda env: env[slot]

    # ------------------------------------------------------------------ running

    def train(self, mode: bool = True) -> "FrozenComponent":
        """Ignored: a frozen component always computes in inference mode."""
        return super().train(False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """Run the graph on its inputs (in `input_names` order)."""
        if len(inputs) != len(self._input_slots):
            raise FusekitError(
                f"{self.source}: expected {len(self._input_slots)} inputs ({', '.join(self.input_names)}), "
                f"got {len(inputs)}"
            )
        env: list = [None] * self._n_slots
        for slot, x in zip(self._input_slots, inputs):
            env[slot] = x
        buffers = self._buffers
        for slot, name in self._const_slots:
            env[slot] = buffers[name]
        env[_DEVICE_SLOT] = inputs[0].device if inputs else next(iter(buffers.values()), torch.empty(0)).device
        for step in self._steps:
            step(env)
        outs = tuple(g(env) for g in self._output_getters)
        return outs[0] if len(outs) == 1 else outs

    def extra_repr(self) -> str:
        return (f"source={self.source!r}, inputs={self.input_names}, outputs={self.output_names}, "
                f"steps={len(self._steps)}")


def _bind_outputs(node: onnx.NodeProto, outs: list[int], values: dict, dtypes: dict) -> None:
    """Name the tensor slots a planned node writes (unnamed, optional outputs are skipped)."""
    for name, slot in zip(node.output, outs):
        if name:
            values[name] = _Value("tensor", slot, dtype=dtypes.get(name))


def _none(env: list) -> None:
    return None


def _materialize(value: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A host value as a tensor (torch.tensor accepts SymInts, so this stays traceable)."""
    return torch.tensor(np.asarray(value, dtype=object).tolist(), dtype=dtype, device=device)


def _tensor_to_torch(init: onnx.TensorProto, comp: FrozenComponent) -> torch.Tensor:
    try:
        return onnx_ops.numpy_to_torch(numpy_helper.to_array(init))
    except onnx_ops.UnsupportedOp as exc:
        raise comp._fail(f"initializer {init.name!r} is not supported: {exc}") from None


def _attributes(node: onnx.NodeProto, comp: FrozenComponent, where: str, subgraphs: bool = False) -> dict:
    attrs: dict = {}
    for a in node.attribute:
        if a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS):
            if subgraphs:  # planned by the caller
                continue
            raise comp._fail(f"{where} has a subgraph attribute {a.name!r}; control flow is not supported")
        if a.ref_attr_name:
            raise comp._fail(f"{where} refers to a function attribute; inline the model's functions first")
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        attrs[a.name] = value
    return attrs


def _value_dtypes(model: onnx.ModelProto) -> dict[str, torch.dtype]:
    """Element types of the graph's values, from ONNX shape inference where it succeeds."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception:  # inference is only a help for dtypes; the plan works without it
        inferred = model
    out: dict[str, torch.dtype] = {}
    graphs = [inferred.graph]
    while graphs:  # If branches carry their own value_info
        g = graphs.pop()
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            et = vi.type.tensor_type.elem_type
            if et in onnx_ops.ONNX_TO_TORCH:
                out.setdefault(vi.name, onnx_ops.ONNX_TO_TORCH[et])
        graphs.extend(sub for node in g.node for sub in optable.subgraphs(node))
    return out


def _consumer_count(graph: onnx.GraphProto, counts: dict[str, int] | None = None) -> dict[str, int]:
    """How often each name is read, by nodes or as an output, in ``graph`` and its subgraphs."""
    counts = {} if counts is None else counts
    for node in graph.node:
        for n in node.input:
            counts[n] = counts.get(n, 0) + 1
        for sub in optable.subgraphs(node):
            _consumer_count(sub, counts)
    for o in graph.output:
        counts[o.name] = counts.get(o.name, 0) + 1
    return counts


def _reads(node: onnx.NodeProto) -> list[str]:
    """The names a node needs: its inputs and what its subgraphs read from the enclosing scope."""
    names = list(node.input)
    for sub in optable.subgraphs(node):
        names += [n for n in optable.outer_names(sub) if n not in names]
    return names


def _topological(graph: onnx.GraphProto, known: set[str], comp: FrozenComponent) -> list[onnx.NodeProto]:
    """Nodes in an order where every input is produced first (exporters usually already do this)."""
    produced = set(known)
    pending = [(node, _reads(node)) for node in graph.node]
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node, reads in pending:
            if all((not n) or n in produced for n in reads):
                ordered.append(node)
                produced.update(o for o in node.output if o)
            else:
                rest.append((node, reads))
        if len(rest) == len(pending):
            missing = sorted({n for _, reads in rest for n in reads if n and n not in produced})
            raise comp._fail(f"the graph reads values nothing produces ({', '.join(missing[:3])}); "
                             "the file is malformed")
        pending = rest
    missing_out = [o.name for o in graph.output if o.name not in produced]
    if missing_out:
        raise comp._fail(f"graph outputs {missing_out} are produced by no node; the file is malformed")
    return ordered


def _live(nodes: list[onnx.NodeProto], outputs: list[str]) -> list[onnx.NodeProto]:
    """The nodes the graph outputs depend on (dead branches are neither checked nor run)."""
    needed = set(outputs)
    keep = []
    for node in reversed(nodes):
        if any(o in needed for o in node.output if o):
            keep.append(node)
            needed.update(n for n in _reads(node) if n)
    return keep[::-1]
