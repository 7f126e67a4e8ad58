"""Source components with trainable layer weights: fine-tuning, and training from scratch.

A frozen component keeps its weights as buffers. Which of them are layer weights comes from
the op table (:mod:`fusekit.onnxio.optable`): the constants at the ``weight_inputs`` of its
nodes (Gemm/MatMul/Conv/ConvTranspose/Einsum/Gather, GRU/LSTM/RNN's W, R, B, the scale and
bias of the normalisations), in Loop bodies too, and the separately exported bias Add of a
MatMul or Conv. :func:`trainable_copy` makes those weights trainable as they are
(``--finetune``); :func:`reinitialised_copy` replaces them with fresh ones (``--from-scratch``,
the Table II ablation). :func:`deployable_copy` turns either back into plain components for export.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from fusekit.errors import FusekitError
from fusekit.options import literal
from fusekit.onnxio import optable


def _weight_kind(node: onnx.NodeProto, pos: int) -> str:
    """``scale``, ``bias`` or ``matrix``: how training from scratch restarts the weight."""
    info = optable.lookup(node.op_type, node.domain)
    if info is not None and pos in info.scale_inputs:
        return "scale"
    if info is None or not info.weight_inputs or pos in info.bias_inputs:
        return "bias"  # a bias_add Add's constant, or a declared bias
    return "matrix"


def _parametric_initializers(onnx_path: str) -> list[tuple[str, str, np.ndarray]]:
    """(op type, weight kind, value) of each float initializer that holds a layer weight of ``onnx_path``.

    Nodes of subgraphs (Loop bodies, If branches) count too, reading initializers of their scopes.
    """
    model = onnx.load(onnx_path)
    found: dict[str, tuple[str, str, np.ndarray]] = {}

    def walk(graph: onnx.GraphProto, inits: dict) -> None:
        inits = {**inits, **{i.name: i for i in graph.initializer}}
        producers = {out: node for node in graph.node for out in node.output}
        for node in graph.node:
            for pos in optable.weight_positions(node, producers):
                if pos < len(node.input) and node.input[pos] in inits and node.input[pos] not in found:
                    array = numpy_helper.to_array(inits[node.input[pos]])
                    if array.dtype.kind == "f":
                        found[node.input[pos]] = (node.op_type, _weight_kind(node, pos), array)
            for sub in optable.subgraphs(node):
                walk(sub, inits)

    walk(model.graph, {})
    return list(found.values())


class TrainableComponent(nn.Module):
    """A frozen component whose layer weights are replaced by trainable parameters.

    The component reads its constants from its own buffer dict; the parameters are put there
    (and put back after every ``.to()``/``.cuda()``, which would otherwise copy them apart).
    """

    def __init__(self, component: nn.Module, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.component = component
        self.names = list(weights)
        self.weights = nn.ParameterList(nn.Parameter(w) for w in weights.values())
        self._sync()

    def _sync(self) -> None:
        for name, weight in zip(self.names, self.weights):
            self.component._buffers[name] = weight

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        self._sync()
        return out

    def forward(self, *inputs: torch.Tensor):
        return self.component(*inputs)

    def frozen(self) -> nn.Module:
        """The component with the current weights as plain buffers again (for export)."""
        out = copy.deepcopy(self.component)
        for name, weight in zip(self.names, self.weights):
            out._buffers[name] = weight.detach().clone()
        return out


def deployable_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every TrainableComponent frozen back into a plain component.

    The ONNX exporter cannot trace a parameter that sits in another module's buffer dict.
    """
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, TrainableComponent):
                # setattr works for ModuleList/ModuleDict children too: both keep them in _modules by name.
                setattr(module, child_name, child.frozen())
    return model


def _layer_weight_buffers(component: nn.Module, onnx_path: str) -> dict[str, tuple[str, str]]:
    """Names of ``component``'s buffers that hold a layer weight of ``onnx_path``, with the op using
    it and the weight's kind.

    Weight buffers are recognised by value against the ONNX file's layer-weight initializers
    (possibly transposed), so this works whatever the buffers are called.
    """
    weights = _parametric_initializers(onnx_path)
    found: dict[str, tuple[str, str]] = {}
    for name, buf in component._buffers.items():
        if buf is None or not buf.is_floating_point() or buf.numel() < 1:
            continue
        arr = buf.detach().cpu().numpy()
        for op, kind, w in weights:
            if (w.shape == arr.shape and np.array_equal(w, arr)) or (
                    w.ndim == 2 and w.T.shape == arr.shape and np.array_equal(w.T, arr)):
                found[name] = (op, kind)
                break
    return found


def _no_weights(action: str, fix: str) -> FusekitError:
    return FusekitError(f"cannot {literal(action)}: no {'/'.join(optable.weight_ops())} weight found in it; {fix}",
                        owner="FusionOptions")


def reinitialised_copy(component: nn.Module, onnx_path: str, seed: int) -> nn.Module:
    """A copy of a frozen component whose layer weights are fresh, trainable parameters.

    Other buffers (normalisation statistics, shapes) stay frozen. Biases restart at zero,
    normalisation scales at one, weight matrices Xavier-uniform, embedding tables N(0, 1e-4).
    """
    from fusekit.onnxio.splice import SplicedComponent

    if isinstance(component, SplicedComponent):  # trained as its interpreter module, written back when spliced
        return component.retrained(reinitialised_copy(component.component, onnx_path, seed))
    clone = copy.deepcopy(component)
    generator = torch.Generator().manual_seed(seed)
    fresh_weights: dict[str, torch.Tensor] = {}
    for name, (op, kind) in _layer_weight_buffers(clone, onnx_path).items():
        buf = clone._buffers[name]
        fresh = torch.empty(buf.shape, dtype=buf.dtype)
        if kind == "scale":
            fresh.fill_(1.0)
        elif kind == "bias":
            fresh.zero_()
        elif op == "Gather":
            fresh.normal_(0.0, 1e-4, generator=generator)  # small embeddings train better (DESIGN.md)
        elif op in ("GRU", "LSTM", "RNN"):  # [directions, gates * hidden, inputs]: one matrix per direction
            bound = (6.0 / (buf.shape[-1] + buf.shape[-2])) ** 0.5
            fresh.uniform_(-bound, bound, generator=generator)
        elif buf.dim() >= 2:
            fan = (buf.shape[0] + buf.shape[1]) * (buf[0][0].numel() if buf.dim() > 2 else 1)
            bound = (6.0 / fan) ** 0.5
            fresh.uniform_(-bound, bound, generator=generator)
        else:
            fresh.zero_()
        fresh_weights[name] = fresh.to(buf.device)
    if not fresh_weights:
        raise _no_weights(f"train {onnx_path} from scratch", "drop {pretrained=False}")
    return TrainableComponent(clone, fresh_weights)


def trainable_copy(component: nn.Module, onnx_path: str) -> nn.Module:
    """A copy of a frozen component whose trained layer weights become trainable (fine-tuning)."""
    from fusekit.onnxio.splice import SplicedComponent

    if isinstance(component, SplicedComponent):
        return component.retrained(trainable_copy(component.component, onnx_path))
    clone = copy.deepcopy(component)
    names = _layer_weight_buffers(clone, onnx_path)
    if not names:
        raise _no_weights(f"fine-tune {onnx_path}", "choose another {finetune}")
    return TrainableComponent(clone, {n: clone._buffers[n].detach().clone() for n in names})
