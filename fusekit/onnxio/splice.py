"""Components that fused.onnx holds as their own ONNX graphs, spliced in after the export.

A traced export writes one fixed path through a module: a Loop that the data drive (torch
writes ``nn.EmbeddingBag`` as one iteration per bag) would be unrolled for the traced batch
and be wrong for every other batch size. Such a component is wrapped in a
:class:`SplicedComponent`. In torch it runs as the interpreter's :class:`FrozenComponent`
(training, evaluation, the parity checks); while the ONNX exporter traces it, it is one
placeholder node (domain :data:`DOMAIN`) whose output shapes come from the component's ONNX
outputs. :func:`splice_placeholders` then replaces each placeholder by the component's own
graph (nodes, initializers, subgraphs), renamed apart, so the deployed file runs exactly the
graph that decompose cut and verified.

The weights are the ONNX file's, unless fuse trains them (``--finetune``, ``--from-scratch``):
then :meth:`SplicedComponent.retrained` records which initializer each trained weight is, and the
trained values replace those initializers when the part is spliced.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper, version_converter
from torch import nn

from fusekit.errors import FusekitError
from fusekit.onnxio import optable
from fusekit.onnxio.ops import ONNX_TO_TORCH

DOMAIN = "fusekit.splice"

# The components being traced, by key: set by :func:`recording` for the length of one export.
_recording: dict[int, "SplicedComponent"] | None = None


def _op_type(n_outputs: int) -> str:
    """The placeholder op for a component of ``n_outputs`` outputs, its schema registered on first use:
    the exporter's op builder needs a schema, and gives a node as many outputs as its schema lists."""
    op = f"Component{n_outputs}"
    if onnx.defs.has(op, DOMAIN):
        return op
    types = [f"tensor({onnx.TensorProto.DataType.Name(t).lower()})" for t in ONNX_TO_TORCH]
    param = onnx.defs.OpSchema.FormalParameter
    onnx.defs.register_schema(onnx.defs.OpSchema(
        op, DOMAIN, 1, doc="fusekit placeholder for a component spliced in after export",
        inputs=[param("inputs", "I", param_option=onnx.defs.OpSchema.FormalParameterOption.Variadic,
                      is_homogeneous=False)],
        outputs=[param(f"output{k}", f"O{k}") for k in range(n_outputs)],
        type_constraints=[("I", types, "any tensor")] + [(f"O{k}", types, "any tensor") for k in range(n_outputs)],
        attributes=[onnx.defs.OpSchema.Attribute("key", onnx.defs.OpSchema.AttrType.INT, "which component")]))
    return op


@torch.library.custom_op("fusekit::spliced", mutates_args=())
def _spliced(inputs: list[torch.Tensor], key: int) -> list[torch.Tensor]:
    outs = _entry(key).component(*inputs)
    return [t.clone() for t in (outs if isinstance(outs, tuple) else (outs,))]


@_spliced.register_fake
def _(inputs: list[torch.Tensor], key: int) -> list[torch.Tensor]:
    return _entry(key).fake_outputs(inputs)


def _translate(inputs, key: int):
    import onnxscript
    from onnxscript import ir

    specs = _entry(key).outputs
    out = getattr(onnxscript.values.Opset(DOMAIN, 1), _op_type(len(specs)))(*inputs, key=key)
    outs = list(out) if len(specs) > 1 else [out]
    for value, (elem, shape) in zip(outs, specs):  # typed, so the exporter can write the graph around it
        value.dtype = ir.DataType(elem)
        value.shape = ir.Shape(_sizes(shape, inputs))
    return outs


TRANSLATIONS = {torch.ops.fusekit.spliced.default: _translate}  # the exporter's custom_translation_table


def _sizes(shape: list[int | tuple[int, int]], inputs) -> list:
    """An output's sizes for these inputs (tensors, or the exporter's values): constants, or an input's dim."""
    return [d if isinstance(d, int) else inputs[d[0]].shape[d[1]] for d in shape]


def _entry(key: int) -> "SplicedComponent":
    if _recording is None or key not in _recording:
        raise FusekitError("a spliced component ran outside fusekit's export; this is a fusekit bug, please report it")
    return _recording[key]


@contextlib.contextmanager
def recording() -> Iterator[dict[int, "SplicedComponent"]]:
    """The spliced components traced inside this block, by placeholder key."""
    global _recording
    outer, _recording = _recording, {}
    try:
        yield _recording
    finally:
        _recording = outer


class SplicedComponent(nn.Module):
    """A component written into fused.onnx as its own graph (see the module docstring).

    ``component`` is the interpreter module that computes it in torch; ``path`` its ONNX file.
    Output dims must be constants or dims of its inputs (the batch), so the placeholder's
    shapes are known while tracing; FusekitError otherwise.
    """

    def __init__(self, component: nn.Module, path: str | Path, trained: dict[str, str] | None = None):
        super().__init__()
        self.component = component
        self.path = str(path)
        self.outputs = _output_specs(onnx.load(self.path, load_external_data=False), self.path)
        self.trained = dict(trained or {})  # buffer of the interpreter module -> the initializer it trains

    def retrained(self, trainable: nn.Module) -> "SplicedComponent":
        """This part around ``trainable`` (fusion/finetune.py's TrainableComponent of its interpreter
        module): the trained weights are written into the part's initializers when it is spliced.
        FusekitError when a trained weight is no initializer of the file (a value computed from one)."""
        inner = trainable.component
        inits = _initializer_names(onnx.load(self.path, load_external_data=False).graph)
        trained = {}
        for buf in trainable.names:
            name = inner.buffer_names.get(buf)
            if name not in inits:
                raise FusekitError(f"{Path(self.path).name}: a weight fuse would train is computed in the graph "
                                   f"(from {name!r}), not stored as an initializer, so the trained value could not be "
                                   "written into fused.onnx; keep this part frozen ({finetune}, {pretrained})",
                                   owner="FusionOptions")
            trained[buf] = name
        return SplicedComponent(trainable, self.path, trained)

    def weights(self) -> dict[str, np.ndarray]:
        """The trained weights by initializer name, as they are now."""
        inner = getattr(self.component, "component", self.component)  # inside a TrainableComponent, or frozen back
        return {name: inner._buffers[buf].detach().cpu().numpy() for buf, name in self.trained.items()}

    def fake_outputs(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Empty tensors of the output shapes for ``inputs`` (what the exporter traces with)."""
        return [inputs[0].new_empty(_sizes(shape, inputs), dtype=ONNX_TO_TORCH[elem]) for elem, shape in self.outputs]

    def forward(self, *inputs: torch.Tensor):
        if _recording is not None and torch.compiler.is_exporting():
            key = len(_recording)
            _recording[key] = self
            outs = torch.ops.fusekit.spliced(list(inputs), key)
            return outs[0] if len(outs) == 1 else tuple(outs)
        return self.component(*inputs)

    def extra_repr(self) -> str:
        return f"path={self.path!r} (written into fused.onnx as its own graph)"


def is_spliced(path: str | Path) -> bool:
    """Whether fused.onnx must hold the component of ``path`` as its own graph: a traced export
    could not write it (a Loop that the data drive: :func:`optable.data_loops`). FusekitError when
    it could not be spliced either (an output size no input gives)."""
    model = onnx.load(str(path), load_external_data=False)
    if not optable.data_loops(model):
        return False
    _output_specs(model, str(path))
    return True


def spliceable(component: nn.Module, path: str | Path) -> nn.Module:
    """``component`` wrapped as a :class:`SplicedComponent` when :func:`is_spliced`, else itself."""
    return SplicedComponent(component, path) if is_spliced(path) else component


def _output_specs(model: onnx.ModelProto, path: str) -> list[tuple[int, list[int | tuple[int, int]]]]:
    """Per output of the component file: its ONNX element type and, per axis, a size or the (input, axis) giving it."""
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    dims: dict[str, tuple[int, int]] = {}
    for k, value in enumerate(inputs):
        for axis, d in enumerate(value.type.tensor_type.shape.dim):
            if d.dim_param:
                dims.setdefault(d.dim_param, (k, axis))
    specs = []
    for value in graph.output:
        tensor = value.type.tensor_type
        if tensor.elem_type not in ONNX_TO_TORCH or not tensor.HasField("shape"):
            raise FusekitError(f"{Path(path).name}: output {value.name!r} has no tensor type and shape that fuse "
                               "can write into fused.onnx; decompose the models again")
        shape: list[int | tuple[int, int]] = []
        for axis, d in enumerate(tensor.shape.dim):
            if d.HasField("dim_value"):
                shape.append(d.dim_value)
            elif d.dim_param in dims:
                shape.append(dims[d.dim_param])
            else:
                raise FusekitError(
                    f"{Path(path).name}: output {value.name!r} axis {axis} has a size that none of its inputs "
                    "gives, so fuse cannot write this part (it runs an ONNX Loop once per row or bag) into "
                    "fused.onnx; re-export the model with nn.Embedding and a sum or mean over the bag axis")
        specs.append((tensor.elem_type, shape))
    return specs


# -- after the export ------------------------------------------------------------------------------
def splice_placeholders(proto: onnx.ModelProto, spliced: dict[int, SplicedComponent]) -> None:
    """Replace every placeholder node of ``proto`` by its component's graph, in place.

    The model and the components are brought to one default opset (the highest of them) with
    onnx's version converter; every name a component defines gets a prefix of its own."""
    placeholders = [n for n in proto.graph.node if n.domain == DOMAIN]
    if not placeholders:
        _drop_domain(proto)
        return
    parts = {_key(node): onnx.load(spliced[_key(node)].path) for node in placeholders}
    target = max([optable.default_opset(proto)] + [optable.default_opset(p) for p in parts.values()])
    if optable.default_opset(proto) < target:
        proto.CopyFrom(_converted(proto, target, "the fused model"))
    taken = _names(proto.graph)
    nodes: list[onnx.NodeProto] = []
    for node in proto.graph.node:
        if node.domain != DOMAIN:
            nodes.append(node)
            continue
        part = parts[_key(node)]
        _write_weights(part.graph, spliced[_key(node)].weights())
        if part.functions:
            part = onnx.inliner.inline_local_functions(part)
        if optable.default_opset(part) < target:
            part = _converted(part, target, Path(spliced[_key(node)].path).name)
        _merge_opsets(proto, part)
        nodes.extend(_inlined(part.graph, node, _prefix(node, taken), proto.graph))
    del proto.graph.node[:]
    proto.graph.node.extend(nodes)
    _drop_domain(proto)


def _initializer_names(graph: onnx.GraphProto) -> set[str]:
    names = {i.name for i in graph.initializer}
    for node in graph.node:
        for sub in optable.subgraphs(node):
            names |= _initializer_names(sub)
    return names


def _write_weights(graph: onnx.GraphProto, weights: dict[str, np.ndarray]) -> None:
    """Replace the values of the initializers named in ``weights`` (in any scope), keeping their dtypes."""
    for k, init in enumerate(graph.initializer):
        if init.name in weights:
            dtype = numpy_helper.to_array(init).dtype
            graph.initializer[k].CopyFrom(numpy_helper.from_array(weights[init.name].astype(dtype), init.name))
    for node in graph.node:
        for sub in optable.subgraphs(node):
            _write_weights(sub, weights)


def _key(node: onnx.NodeProto) -> int:
    return next(a.i for a in node.attribute if a.name == "key")


def _converted(model: onnx.ModelProto, opset: int, what: str) -> onnx.ModelProto:
    try:
        return version_converter.convert_version(model, opset)
    except Exception as exc:  # noqa: BLE001 - the converter raises C++ errors
        raise FusekitError(f"cannot bring {what} to ONNX opset {opset} to write it into fused.onnx "
                           f"({str(exc).splitlines()[0][:160]}); export the source models with one opset") from None


def _merge_opsets(proto: onnx.ModelProto, part: onnx.ModelProto) -> None:
    have = {o.domain: o.version for o in proto.opset_import}
    for o in part.opset_import:
        if o.domain in optable.DEFAULT_DOMAINS:
            continue
        if o.domain not in have:
            proto.opset_import.add(domain=o.domain, version=o.version)
        elif have[o.domain] != o.version:
            raise FusekitError(f"a spliced component imports {o.domain!r} opset {o.version}, the fused model "
                               f"{have[o.domain]}; export the source models with one opset")


def _drop_domain(proto: onnx.ModelProto) -> None:
    keep = [o for o in proto.opset_import if o.domain != DOMAIN]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)


def _names(graph: onnx.GraphProto, found: set[str] | None = None) -> set[str]:
    """Every tensor and node name of ``graph`` and its subgraphs."""
    found = set() if found is None else found
    found.update(v.name for v in [*graph.input, *graph.output, *graph.value_info])
    found.update(i.name for i in graph.initializer)
    for node in graph.node:
        found.update([*node.output, node.name])
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                _names(sub, found)
    return found


def _prefix(node: onnx.NodeProto, taken: set[str]) -> str:
    base = f"spliced{_key(node)}"
    k = 0
    while any(name.startswith(f"{base}_{k}/") for name in taken):
        k += 1
    return f"{base}_{k}/"


def _inlined(part: onnx.GraphProto, node: onnx.NodeProto, prefix: str, into: onnx.GraphProto) -> list[onnx.NodeProto]:
    """``part``'s nodes reading ``node``'s inputs and writing its outputs, every other name prefixed;
    its initializers and value infos are added to ``into``."""
    inits = {i.name for i in part.initializer}
    inputs = [i.name for i in part.input if i.name not in inits]
    rename = dict(zip(inputs, node.input))
    produced = {o for n in part.node for o in n.output if o}
    tail: list[onnx.NodeProto] = []
    for k, (out, target) in enumerate(zip([o.name for o in part.output], node.output)):
        if out in produced and out not in rename:
            rename[out] = target
        else:  # an output that is an input, or a tensor that is two outputs: copied under its new name
            tail.append(helper.make_node("Identity", [rename.get(out, prefix + out)], [target],
                                         name=f"{prefix}output{k}"))

    def name(n: str) -> str:
        return n if not n else rename.get(n, prefix + n)

    nodes = [_renamed_node(n, name, prefix) for n in part.node]
    for init in part.initializer:
        copy = onnx.TensorProto()
        copy.CopyFrom(init)
        copy.name = name(init.name)
        into.initializer.append(copy)
    for info in part.value_info:
        if info.name not in rename:
            copy = onnx.ValueInfoProto()
            copy.CopyFrom(info)
            copy.name = name(info.name)
            into.value_info.append(copy)
    return nodes + tail


def _renamed_node(node: onnx.NodeProto, name, prefix: str) -> onnx.NodeProto:
    out = onnx.NodeProto()
    out.CopyFrom(node)
    out.name = prefix + (node.name or node.output[0])
    del out.input[:]
    out.input.extend(name(n) for n in node.input)
    del out.output[:]
    out.output.extend(name(n) for n in node.output)
    for attr in out.attribute:
        for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
            _rename_graph(sub, name, prefix)
    return out


def _rename_graph(graph: onnx.GraphProto, name, prefix: str) -> None:
    """Rename a subgraph in place: its own names get the prefix, its reads of enclosing scopes follow ``name``."""
    for value in [*graph.input, *graph.output, *graph.value_info]:
        value.name = name(value.name)
    for init in graph.initializer:
        init.name = name(init.name)
    renamed = [_renamed_node(n, name, prefix) for n in graph.node]
    del graph.node[:]
    graph.node.extend(renamed)
