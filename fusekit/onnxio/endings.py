"""What ends an ONNX output: the activation that made it (Sigmoid, Softmax, LogSoftmax or
none) and its shape after the batch dimension. Task kinds are detected from this
(fusekit/task_kinds.py: ``kind_from_ending``) for source models, heads and deployed files alike.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx

# Ops that only move or rename values: the activation that made an output may sit behind them.
_TRANSPARENT = {"Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Cast", "Transpose"}
ACTIVATIONS = {"Sigmoid": "sigmoid", "Softmax": "softmax", "LogSoftmax": "logsoftmax", "Exp": "exp", "Relu": "relu",
               "Softplus": "softplus"}


@dataclass(frozen=True)
class Ending:
    """How an output ends: ``activation`` (sigmoid, softmax, logsoftmax, exp, relu, softplus or
    none) and ``shape``, the dims after the batch (ints, or None where dynamic)."""

    output: str
    activation: str
    shape: tuple


def _dims(value: onnx.ValueInfoProto) -> tuple:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims[1:])


def output_endings(model: onnx.ModelProto) -> dict[str, Ending]:
    """Every graph output's :class:`Ending`, in output order."""
    producer = {out: node for node in model.graph.node for out in node.output}
    result = {}
    for value in model.graph.output:
        name, activation = value.name, "none"
        seen = 0
        while name in producer and seen < 64:  # a few transparent ops at most; bounded against cycles
            node = producer[name]
            if node.op_type in ACTIVATIONS:
                activation = ACTIVATIONS[node.op_type]
                break
            if node.op_type not in _TRANSPARENT or not node.input:
                break
            name = node.input[0]
            seen += 1
        result[value.name] = Ending(value.name, activation, _dims(value))
    return result
