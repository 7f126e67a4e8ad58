"""Each op implementation against onnxruntime, on single-node ONNX models built with onnx.helper."""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fusekit.errors import FusekitError
from fusekit.onnxio.interpreter import FrozenComponent, load_component
from fusekit.onnxio.optable import TABLE

TOL = 1e-5
_rng = np.random.default_rng(0)


def f32(*shape: int, lo: float = -2.0, hi: float = 2.0) -> np.ndarray:
    return _rng.uniform(lo, hi, shape).astype(np.float32)


def pos(*shape: int) -> np.ndarray:
    return f32(*shape, lo=0.1, hi=3.0)


def i64(values) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def boolean(*shape: int) -> np.ndarray:
    return _rng.random(shape) > 0.5


@dataclass
class Case:
    op: str
    inputs: list  # numpy arrays; None for a skipped optional input
    attrs: dict = field(default_factory=dict)
    const: tuple = ()  # input positions stored as initializers (how exporters store shapes/axes)
    outputs: int = 1
    opset: int = 18
    name: str = ""

    @property
    def id(self) -> str:
        return f"{self.op}-{self.name}" if self.name else self.op


def C(op, inputs, const=(), outputs=1, opset=18, name="", **attrs) -> Case:
    return Case(op, inputs, attrs, tuple(const), outputs, opset, name)


X = f32(3, 4)
IMG = f32(2, 4, 7, 7)
SEQ = f32(2, 3, 5)

def _branch(op: str, name: str) -> onnx.GraphProto:
    """An If branch computing ``op`` of an initializer of its own."""
    return helper.make_graph([helper.make_node(op, [f"{name}_k"], [f"{name}_out"])], name, [],
                             [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [3, 4])],
                             [numpy_helper.from_array(X, f"{name}_k")])


def _loop_body(stop: bool = False) -> onnx.GraphProto:
    """Loop body: carried acc += i * (initial acc, read from the outer scope) + 1, scanned too.

    ``stop``: the body's condition turns false after i == 2 (else it passes the condition on).
    """
    n = helper.make_node
    cond = ([n("Constant", [], ["two"], value=numpy_helper.from_array(i64(2))), n("Less", ["i", "two"], ["cond_out"])]
            if stop else [n("Identity", ["cond"], ["cond_out"])])
    nodes = [n("Cast", ["i"], ["fi"], to=TensorProto.FLOAT), n("Mul", ["fi", "in2"], ["step"]),
             n("Add", ["acc", "step"], ["a1"]), n("Add", ["a1", "one"], ["acc_out"]),
             n("Identity", ["acc_out"], ["scan"]), *cond]
    return helper.make_graph(
        nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []), helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", TensorProto.FLOAT, [3, 4])],
        [helper.make_tensor_value_info(o, t, s) for o, t, s in
         (("cond_out", TensorProto.BOOL, []), ("acc_out", TensorProto.FLOAT, [3, 4]), ("scan", TensorProto.FLOAT, [3, 4]))],
        [numpy_helper.from_array(np.ones(4, np.float32), "one")])


T, B, I, H = 4, 2, 3, 5  # recurrent cases: steps, batch, input width, hidden width


def _recurrent(op: str, dirs: int = 1, layout: int = 0, bias: bool = True, initial: bool = False,
               peepholes: bool = False, outputs: int = 2, name: str = "", **attrs) -> Case:
    """A GRU/LSTM/RNN node with random weights (as initializers) and optional initial states."""
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    x = f32(B, T, I) if layout else f32(T, B, I)
    state = (lambda: f32(B, dirs, H)) if layout else (lambda: f32(dirs, B, H))
    inputs = [x, f32(dirs, gates * H, I, lo=-0.6, hi=0.6), f32(dirs, gates * H, H, lo=-0.6, hi=0.6),
              f32(dirs, 2 * gates * H) if bias else None, None, state() if initial else None]
    if op == "LSTM":
        inputs += [state() if initial else None, f32(dirs, 3 * H) if peepholes else None]
    while inputs[-1] is None:
        inputs.pop()
    direction = {1: attrs.pop("direction", "forward"), 2: "bidirectional"}[dirs]
    return C(op, inputs, const=(1, 2, 3, 7), outputs=outputs, opset=14, name=name, hidden_size=H,
             direction=direction, layout=layout, **attrs)


RECURRENT = [
    _recurrent("GRU", linear_before_reset=1, name="torch"), _recurrent("GRU", name="reset_first"),
    _recurrent("GRU", 2, linear_before_reset=1, initial=True, name="bidirectional_h0"),
    _recurrent("GRU", direction="reverse", initial=True, name="reverse_h0"),
    _recurrent("GRU", 2, bias=False, outputs=1, name="bidirectional_nobias"),
    _recurrent("LSTM", outputs=3, name="forward"), _recurrent("LSTM", 2, initial=True, outputs=3, name="bidirectional_h0c0"),
    _recurrent("LSTM", direction="reverse", peepholes=True, initial=True, outputs=3, name="reverse_peepholes"),
    _recurrent("RNN", name="tanh"), _recurrent("RNN", 2, initial=True, name="bidirectional_h0"),
    _recurrent("RNN", activations=["Relu"], name="relu"),
    _recurrent("RNN", direction="reverse", bias=False, name="reverse_nobias"),
]

QKV = [f32(2, 2, 5, 4), f32(2, 2, 5, 4), f32(2, 2, 5, 3)]
ATTENTION = [
    C("Attention", QKV, opset=23, name="4d"),
    C("Attention", [*QKV, boolean(2, 1, 5, 5) | np.eye(5, dtype=bool)], opset=23, name="bool_mask"),
    C("Attention", [*QKV, f32(5, 5)], opset=23, scale=0.3, softcap=2.0, name="float_mask_scale_softcap"),
    C("Attention", [f32(2, 5, 8), f32(2, 5, 4), f32(2, 5, 6)], opset=23, q_num_heads=2, kv_num_heads=1,
      name="3d_grouped_heads"),
    C("Attention", [f32(2, 2, 3, 4), f32(2, 2, 3, 4), f32(2, 2, 3, 3), None, f32(2, 2, 4, 4), f32(2, 2, 4, 3)],
      opset=23, outputs=3, is_causal=1, name="causal_past"),
]

# Batch-first layout (layout=1, opset 14): onnxruntime refuses it, so these are checked
# against the ONNX reference implementation instead.
BATCH_FIRST = [
    _recurrent("GRU", direction="reverse", layout=1, initial=True, name="reverse_layout1"),
    _recurrent("GRU", 2, layout=1, bias=False, outputs=1, name="bidirectional_layout1_nobias"),
    _recurrent("LSTM", 2, layout=1, initial=True, outputs=3, name="bidirectional_layout1_h0c0"),
    _recurrent("RNN", layout=1, initial=True, name="layout1_h0"),
]

# Covered with the exporters' real output in tests/test_onnx_ops_exported.py (sequence values
# cannot be fed or fetched like the tensors of these single-node cases).
ELSEWHERE = {"SequenceEmpty", "SequenceInsert", "ConcatFromSequence"}

CASES: list[Case] = [
    # elementwise
    *[C(op, [X]) for op in ("Abs", "Neg", "Exp", "Relu", "Sigmoid", "Tanh", "Erf", "Floor", "Ceil",
                             "Sign", "Sin", "Cos", "Softsign", "Softplus", "Atan", "Mish", "Identity",
                             "HardSwish", "Round", "IsNaN", "Tan", "Sinh", "Cosh", "Asinh")],
    *[C(op, [pos(3, 4)]) for op in ("Reciprocal", "Sqrt", "Log")],
    *[C(op, [f32(3, 4, lo=-0.9, hi=0.9)]) for op in ("Asin", "Acos", "Atanh")],
    C("Acosh", [f32(3, 4, lo=1.1, hi=3.0)]),
    C("Not", [boolean(3, 4)]),
    C("LeakyRelu", [X], alpha=0.1), C("LeakyRelu", [X], name="default"),
    C("Elu", [X], alpha=0.7), C("Selu", [X]), C("Selu", [X], alpha=1.2, gamma=0.9, name="attrs"),
    C("Celu", [X], alpha=0.5), C("HardSigmoid", [X]), C("HardSigmoid", [X], alpha=0.3, beta=0.4, name="attrs"),
    C("ThresholdedRelu", [X], alpha=0.5), C("PRelu", [X, f32(4)], const=(1,)),
    C("Gelu", [X], opset=20), C("Gelu", [X], approximate="tanh", opset=20, name="tanh"),
    C("IsInf", [np.array([1.0, np.inf, -np.inf, 0.0], np.float32)], detect_negative=0),
    C("Add", [X, f32(4)]), C("Sub", [X, f32(3, 1)]), C("Mul", [X, f32(1)], const=(1,)), C("Div", [X, pos(4)]),
    C("Div", [i64([-7, 7, -7, 7, 6]), i64([2, 2, -2, -2, 3])], name="int"),
    C("Pow", [pos(3, 4), f32(4)]), C("Pow", [X, np.array(2.0, np.float32)], const=(1,), name="square"),
    C("Pow", [X, i64(3)], name="int_exponent"),
    C("Mod", [i64([-7, 7, -7, 7]), i64([3, 3, -3, -3])]),
    C("Mod", [f32(5), pos(5)], fmod=1, name="fmod"),
    *[C(op, [i64([1, 2, 3, 4]), i64([2, 2, 2, 2])]) for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")],
    *[C(op, [boolean(3, 4), boolean(4)]) for op in ("And", "Or", "Xor")],
    *[C(op, [i64([5, -3, 12, 0]), i64([3, 6, -1, 7])]) for op in ("BitwiseAnd", "BitwiseOr", "BitwiseXor")],
    C("BitwiseNot", [i64([5, -3, 0])]),
    C("Sum", [X, f32(4), f32(3, 1)]), C("Mean", [X, f32(4)]), C("Max", [X, f32(4), f32(3, 4)]), C("Min", [X, f32(1)]),
    C("Where", [boolean(3, 4), X, f32(4)]),
    C("Clip", [X, np.array(-0.5, np.float32), np.array(0.7, np.float32)], const=(1, 2)),
    C("Clip", [X, np.array(-0.5, np.float32)], const=(1,), name="min_only"),
    C("Clip", [X, None, np.array(0.3, np.float32)], const=(2,), name="max_only"),
    C("Clip", [i64([-5, 0, 5]), i64(-1), i64(2)], const=(1, 2), name="int"),
    C("Softmax", [SEQ]), C("Softmax", [SEQ], axis=1, name="axis1"),
    C("Softmax", [SEQ], axis=1, opset=11, name="opset11"), C("LogSoftmax", [SEQ], axis=-1),
    C("Hardmax", [X]),
    # types and constants
    C("Cast", [f32(3, 4, lo=-5, hi=5)], to=TensorProto.INT64), C("Cast", [X], to=TensorProto.BOOL, name="bool"),
    C("Cast", [i64([1, -2, 3])], to=TensorProto.FLOAT, name="from_int"), C("Cast", [X], to=TensorProto.DOUBLE, name="double"),
    C("CastLike", [i64([1, 2]), X]),
    C("Constant", [], value=numpy_helper.from_array(f32(2, 3), "v")),
    C("Constant", [], value_floats=[1.0, 2.5], name="floats"), C("Constant", [], value_int=4, name="int"),
    C("ConstantOfShape", [i64([2, 3])], const=(0,), value=numpy_helper.from_array(i64([7]), "v")),
    C("ConstantOfShape", [i64([4])], name="default"),
    C("Range", [np.array(1, np.int64), np.array(11, np.int64), np.array(3, np.int64)]),
    C("Range", [np.array(0.5, np.float32), np.array(-2.0, np.float32), np.array(-0.75, np.float32)], name="float"),
    C("Dropout", [X, np.array(0.4, np.float32)], const=(1,)),
    # shapes
    C("Shape", [SEQ]), C("Shape", [SEQ], start=1, end=-1, opset=15, name="start_end"), C("Size", [SEQ]),
    C("Reshape", [SEQ, i64([0, -1])], const=(1,)), C("Reshape", [SEQ, i64([-1])], const=(1,), name="flat"),
    C("Reshape", [f32(0, 3), i64([3, 0])], const=(1,), allowzero=1, name="allowzero"),
    C("Flatten", [IMG]), C("Flatten", [IMG], axis=0, name="axis0"), C("Flatten", [IMG], axis=-1, name="axis-1"),
    C("Transpose", [SEQ], perm=[1, 0, 2]), C("Transpose", [SEQ], name="default"),
    C("Squeeze", [f32(3, 1, 4, 1), i64([1])], const=(1,)), C("Squeeze", [f32(3, 1, 4, 1)], name="all"),
    C("Squeeze", [f32(3, 1, 4, 1)], axes=[-1], opset=11, name="attr"),
    C("Unsqueeze", [X, i64([0, -1])], const=(1,)), C("Unsqueeze", [X], axes=[1], opset=11, name="attr"),
    C("Concat", [X, f32(3, 2)], axis=1), C("Concat", [SEQ, f32(2, 3, 1), f32(2, 3, 2)], axis=-1, name="three"),
    C("Split", [f32(7, 2), i64([3, 4])], const=(1,), outputs=2, opset=13),
    C("Split", [f32(2, 7)], axis=1, num_outputs=3, outputs=3, name="num_outputs"),
    C("Split", [f32(6, 2)], outputs=3, opset=13, name="even"),
    C("Slice", [SEQ, i64([1]), i64([100]), i64([2]), i64([2])], const=(1, 2, 3, 4)),
    C("Slice", [SEQ, i64([0, -2]), i64([1, 2**63 - 1]), i64([0, 1])], const=(1, 2, 3), name="int64max"),
    C("Slice", [SEQ, i64([-1]), i64([-100]), i64([2]), i64([-2])], const=(1, 2, 3, 4), name="negative_step"),
    C("Slice", [SEQ, i64([1, 1]), i64([3, 4])], const=(1, 2), name="default_axes"),
    C("Gather", [f32(5, 3), i64([[0, 4], [-1, 2]])], const=(1,)),
    C("Gather", [SEQ, i64([2, 0])], axis=1, name="axis1"), C("Gather", [SEQ, i64(1)], axis=-1, name="scalar"),
    C("GatherElements", [X, i64([[0, -1], [3, 2], [1, 1]])], axis=1),
    C("GatherND", [SEQ, i64([[0, 1], [1, -1]])]),
    C("Expand", [f32(3, 1), i64([2, 3, 4])], const=(1,)), C("Expand", [X, i64([1, 1])], const=(1,), name="bidirectional"),
    C("Tile", [X, i64([2, 1])], const=(1,)),
    C("Pad", [X, i64([1, 0, 0, 2]), np.array(1.5, np.float32)], const=(1, 2)),
    C("Pad", [SEQ, i64([1, 2]), None, i64([-1])], const=(1, 3), name="axes"),
    C("Pad", [f32(1, 2, 5), i64([0, 0, 2, 0, 0, 1])], const=(1,), mode="reflect", name="reflect"),
    C("Pad", [f32(1, 2, 5), i64([0, 0, 2, 0, 0, 1])], const=(1,), mode="edge", name="edge"),
    C("Pad", [f32(1, 2, 5), i64([0, 0, 2, 0, 0, 1])], const=(1,), mode="wrap", opset=19, name="wrap"),
    C("Pad", [X, i64([0, -1, 1, 1])], const=(1,), name="negative"),
    C("Trilu", [f32(2, 4, 4)]), C("Trilu", [f32(4, 5), i64(1)], const=(1,), upper=0, name="lower_k"),
    C("Einsum", [SEQ, f32(2, 5, 4)], equation="bij,bjk->bik"), C("Einsum", [X], equation="ij -> ji", name="transpose"),
    C("MatMul", [SEQ, f32(5, 4)]), C("MatMul", [f32(4), f32(2, 4, 3)], name="vector"),
    C("Gemm", [X, f32(4, 5), f32(5)], const=(1, 2)),
    C("Gemm", [f32(4, 3), f32(5, 4), f32(3, 5)], transA=1, transB=1, alpha=0.5, beta=2.0, name="attrs"),
    C("Gemm", [X, f32(4, 5)], alpha=1.5, name="no_c"),
    C("Gemm", [X, f32(4, 5), np.array(0.25, np.float32)], beta=0.5, name="scalar_c"),
    C("CumSum", [X, i64(1)], const=(1,)), C("CumSum", [X, i64(0)], const=(1,), exclusive=1, reverse=1, name="excl_rev"),
    C("TopK", [f32(3, 6), i64([2])], const=(1,), outputs=2), C("TopK", [f32(3, 6), i64([3])], const=(1,), outputs=2, largest=0, axis=0, name="smallest"),
    C("ArgMax", [i64([[1, 3, 3], [2, 2, 0]])], axis=1), C("ArgMin", [i64([[1, 0, 0], [2, 2, 0]])], axis=1, keepdims=0, select_last_index=1),
    C("DepthToSpace", [f32(1, 8, 2, 3)], blocksize=2), C("DepthToSpace", [f32(1, 8, 2, 3)], blocksize=2, mode="CRD", name="crd"),
    C("SpaceToDepth", [f32(1, 2, 4, 6)], blocksize=2), C("LpNormalization", [X], axis=1),
    C("ScatterElements", [X, i64([[0, -1], [3, 2], [1, 1]]), f32(3, 2)], axis=1),
    C("ScatterElements", [X, i64([[0, 0], [3, 2], [1, 1]]), f32(3, 2)], axis=1, reduction="add", name="add"),
    C("ScatterND", [SEQ, i64([[0, 1], [1, -1]]), f32(2, 5)]),
    C("ScatterND", [SEQ, i64([[0, 1], [0, 1]]), f32(2, 5)], reduction="add", name="add"),
    C("OneHot", [i64([0, 2, -1, 5]), i64(4), np.array([0.0, 3.0], np.float32)], const=(1,), axis=0),
    C("EyeLike", [f32(3, 4)], k=1), C("NonZero", [boolean(3, 4)]),
    C("Resize", [IMG, None, np.array([1, 1, 2, 2], np.float32)], const=(2,), mode="nearest",
      coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
    C("Resize", [IMG, None, None, i64([2, 4, 10, 5])], const=(3,), mode="linear", name="linear_sizes"),
    C("Resize", [IMG, None, np.array([1, 1, 1.5, 2], np.float32)], const=(2,), mode="linear",
      coordinate_transformation_mode="align_corners", name="align_corners"),
    C("Resize", [IMG, None, None, i64([2, 4, 14, 14])], const=(3,), mode="nearest",
      nearest_mode="round_prefer_ceil", name="nearest_half_pixel"),
    C("Resize", [IMG, None, np.array([1, 1, 2, 2], np.float32)], const=(2,), mode="cubic", name="cubic"),
    C("GroupNormalization", [f32(2, 4, 5), f32(4), f32(4)], const=(1, 2), num_groups=2, opset=21),
    # reductions
    *[C(f"Reduce{k}", [SEQ], axes=[1], opset=13) for k in ("Mean", "Max", "Min", "Prod", "L1", "L2", "LogSumExp", "SumSquare")],
    C("ReduceLogSum", [pos(2, 3)], axes=[0], opset=13), C("ReduceSum", [SEQ, i64([1, -1])], const=(1,), opset=13),
    *[C(f"Reduce{k}", [SEQ, i64([-1])], const=(1,), keepdims=0, name="opset18") for k in ("Mean", "Max", "Sum", "L2")],
    C("ReduceMean", [SEQ], name="all_axes"), C("ReduceSum", [SEQ, i64([])], const=(1,), noop_with_empty_axes=1, name="noop"),
    # normalisation
    C("BatchNormalization", [f32(2, 3, 4), f32(3), f32(3), f32(3), pos(3)], const=(1, 2, 3, 4), epsilon=1e-3),
    C("LayerNormalization", [SEQ, f32(5), f32(5)], const=(1, 2), epsilon=1e-4),
    C("LayerNormalization", [SEQ, f32(3, 5)], const=(1,), axis=1, name="axis1_nobias"),
    C("InstanceNormalization", [f32(2, 3, 6), f32(3), f32(3)], const=(1, 2)),
    # convolution and pooling
    C("Conv", [f32(2, 3, 9), f32(4, 3, 3), f32(4)], const=(1, 2), pads=[1, 1], name="1d"),
    C("Conv", [IMG, f32(6, 2, 3, 3), f32(6)], const=(1, 2), group=2, strides=[2, 1], pads=[1, 0, 1, 0], name="groups"),
    C("Conv", [IMG, f32(3, 4, 3, 2)], const=(1,), pads=[0, 1, 2, 0], dilations=[2, 1], name="asym_dil"),
    C("Conv", [IMG, f32(3, 4, 3, 3)], const=(1,), auto_pad="SAME_UPPER", strides=[2, 2], name="same_upper"),
    C("Conv", [IMG, f32(3, 4, 2, 2)], const=(1,), auto_pad="SAME_LOWER", name="same_lower"),
    C("Conv", [IMG, f32(3, 4, 3, 3)], const=(1,), auto_pad="VALID", strides=[2, 2], name="valid"),
    C("ConvTranspose", [f32(2, 4, 5, 5), f32(4, 3, 3, 3), f32(3)], const=(1, 2), strides=[2, 2], pads=[1, 1, 1, 1],
      output_padding=[1, 1]),
    C("ConvTranspose", [f32(2, 4, 5, 5), f32(4, 2, 2, 3)], const=(1,), group=2, strides=[2, 1], pads=[0, 1, 1, 0],
      dilations=[1, 2], name="groups_asym"),
    C("ConvTranspose", [f32(2, 4, 6), f32(4, 3, 3)], const=(1,), strides=[2], name="1d"),
    C("ConvTranspose", [f32(1, 2, 4, 4), f32(2, 3, 3, 3)], const=(1,), strides=[2, 2], auto_pad="SAME_UPPER", name="same"),
    C("MaxPool", [IMG], kernel_shape=[2, 2], strides=[2, 2]),
    C("MaxPool", [IMG], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="pads"),
    C("MaxPool", [IMG], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, name="ceil"),
    C("MaxPool", [IMG], kernel_shape=[2, 3], pads=[0, 2, 1, 0], name="asym"),
    C("MaxPool", [IMG], kernel_shape=[2, 2], dilations=[2, 2], name="dilated"),
    C("MaxPool", [f32(2, 3, 10)], kernel_shape=[3], strides=[2], auto_pad="SAME_UPPER", name="1d_same"),
    C("AveragePool", [IMG], kernel_shape=[2, 2], strides=[2, 2]),
    C("AveragePool", [IMG], kernel_shape=[3, 3], pads=[1, 1, 1, 1], name="exclude_pad"),
    C("AveragePool", [IMG], kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1, name="include_pad"),
    C("AveragePool", [IMG], kernel_shape=[3, 2], pads=[0, 1, 2, 0], name="asym"),
    C("AveragePool", [IMG], kernel_shape=[3, 2], pads=[0, 1, 2, 0], count_include_pad=1, name="asym_include"),
    C("AveragePool", [IMG], kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, name="ceil"),
    C("GlobalAveragePool", [IMG]), C("GlobalMaxPool", [IMG]),
    # A lone If can read no outer tensor, so its branches compute from their own initializers;
    # tests/test_components.py covers outer-scope reads, nesting and data-dependent conditions.
    *(C("If", [np.array(value)], const=(0,), name=str(value).lower(), then_branch=_branch("Relu", "then"),
        else_branch=_branch("Neg", "else")) for value in (True, False)),
    C("Loop", [i64(3), np.array(True), X], const=(0, 1), outputs=2, body=_loop_body()),
    C("Loop", [i64(5), np.array(True), X], outputs=2, body=_loop_body(), name="fed_trip_count"),
    C("Loop", [None, np.array(True), X], const=(1,), outputs=2, body=_loop_body(stop=True), name="condition_only"),
    *RECURRENT,
    *ATTENTION,
]

# Cases whose constant inputs are also worth feeding at run time (shapes known only then).
FED = [c for c in CASES if c.const and c.op in {"Reshape", "Slice", "Unsqueeze", "Squeeze", "Expand", "Tile", "Pad",
                                                 "ReduceSum", "ReduceMean", "TopK", "ConstantOfShape", "Split",
                                                 "Clip", "Gemm", "Conv", "Trilu", "CumSum"}]


def _model(case: Case, fed: bool) -> onnx.ModelProto:
    names = [f"in{i}" if a is not None else "" for i, a in enumerate(case.inputs)]
    inits, graph_inputs = [], []
    for i, (n, a) in enumerate(zip(names, case.inputs)):
        if a is None:
            continue
        if i in case.const and not fed:
            inits.append(numpy_helper.from_array(a, n))
        else:
            graph_inputs.append(helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape))
    outs = [f"out{i}" for i in range(case.outputs)]
    while names and names[-1] == "":
        names.pop()
    node = helper.make_node(case.op, names, outs, **case.attrs)
    graph = helper.make_graph([node], case.id, graph_inputs, [onnx.ValueInfoProto(name=o) for o in outs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)], ir_version=8)


def _check(case: Case, tmp_path, fed: bool = False) -> None:
    model = _model(case, fed)
    path = tmp_path / "op.onnx"
    onnx.save(model, str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {i.name: case.inputs[int(i.name[2:])] for i in sess.get_inputs()}
    want = sess.run(None, feeds)
    comp = load_component(path)
    assert list(comp.parameters()) == []
    with torch.no_grad():
        got = comp(*[torch.from_numpy(np.array(feeds[n])) for n in comp.input_names])
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g = g.numpy()
        assert g.shape == w.shape, (g.shape, w.shape)
        assert g.dtype == w.dtype, (g.dtype, w.dtype)
        if w.dtype.kind in "fc":
            assert np.allclose(g, w, atol=TOL, rtol=0, equal_nan=True), np.abs(g - w).max()
        else:
            assert np.array_equal(g, w)


def test_every_op_of_the_table_has_a_case():
    assert {c.op for c in CASES} | ELSEWHERE == set(TABLE)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_matches_onnxruntime(case, tmp_path):
    _check(case, tmp_path)


@pytest.mark.parametrize("case", BATCH_FIRST, ids=[c.id for c in BATCH_FIRST])
def test_batch_first_recurrent_op_matches_the_onnx_reference(case):
    from onnx.reference import ReferenceEvaluator

    model = _model(case, fed=False)
    feeds = {i.name: case.inputs[int(i.name[2:])] for i in model.graph.input}
    want = ReferenceEvaluator(model).run(None, feeds)
    got = FrozenComponent(model)(*[torch.from_numpy(feeds[i.name]) for i in model.graph.input])
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(want) == case.outputs
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.allclose(g.numpy(), w, atol=TOL, rtol=0), (g.shape, w.shape)


@pytest.mark.parametrize("op,inputs,attrs,opset,since", [
    ("GroupNormalization", [f32(2, 4, 5), f32(2), f32(2)], {"num_groups": 2}, 18, 21),
    ("Hardmax", [X], {}, 11, 13),
], ids=["GroupNormalization", "Hardmax"])
def test_op_older_than_its_table_opset_is_refused_at_load(op, inputs, attrs, opset, since, tmp_path):
    path = tmp_path / "old.onnx"
    onnx.save(_model(Case(op, inputs, attrs, const=tuple(range(1, len(inputs))), opset=opset), fed=False), str(path))
    with pytest.raises(FusekitError, match=f"{op}.*from opset {since} on, the model has {opset}"):
        load_component(path)


@pytest.mark.parametrize("case", FED, ids=[c.id for c in FED])
def test_op_with_runtime_shape_inputs(case, tmp_path):
    """The same ops with their shape/axes inputs fed at run time instead of stored as constants."""
    _check(case, tmp_path, fed=True)


def _shape_chain_model() -> onnx.ModelProto:
    """Shape arithmetic the legacy exporter emits: Shape/Gather/Unsqueeze/Concat into Reshape etc."""
    n = helper.make_node
    c = lambda name, arr: numpy_helper.from_array(arr, name)  # noqa: E731
    nodes = [
        n("Shape", ["x"], ["s"]), n("Gather", ["s", "zero"], ["b"], axis=0), n("Size", ["x"], ["numel"]),
        n("Div", ["numel", "six"], ["b2"]), n("Unsqueeze", ["b2", "zero1"], ["b2u"]),
        n("Concat", ["b2u", "two_three"], ["target"], axis=0), n("Reshape", ["x", "target"], ["reshaped"]),
        n("Unsqueeze", ["b", "zero1"], ["bu"]), n("Concat", ["bu", "one"], ["zshape"], axis=0),
        n("ConstantOfShape", ["zshape"], ["zeros"]),
        n("Range", ["zero", "b", "one_s"], ["ramp"]),
        n("Concat", ["bu", "four"], ["eshape"], axis=0), n("Expand", ["half", "eshape"], ["expanded"]),
        n("Equal", ["s", "six_v"], ["is6"]), n("Where", ["is6", "s", "minus"], ["picked"]),
        n("Cast", ["b", ], ["bf"], to=TensorProto.FLOAT), n("Mul", ["x", "bf"], ["scaled"]),
        n("Slice", ["s", "one", "two"], ["last"]), n("Mul", ["last", "b2u"], ["prod"]),
    ]
    inits = [c("zero", i64(0)), c("six", i64(6)), c("zero1", i64([0])), c("two_three", i64([2, 3])),
             c("one", i64([1])), c("one_s", i64(1)), c("four", i64([4])), c("half", np.full((1, 1), 0.5, np.float32)),
             c("six_v", i64([0, 6])), c("minus", i64([-1, -1])), c("two", i64([2]))]
    outputs = ["reshaped", "zeros", "ramp", "expanded", "picked", "scaled", "prod"]
    graph = helper.make_graph(nodes, "shape_chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6])],
                              [onnx.ValueInfoProto(name=o) for o in outputs], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def test_shape_arithmetic_eager_and_reexported(tmp_path):
    path = tmp_path / "chain.onnx"
    onnx.save(_shape_chain_model(), str(path))
    comp = load_component(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    class Parent(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.comp = comp

        def forward(self, x):
            return self.comp(x)

    out = tmp_path / "parent.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Parent().eval(), (torch.zeros(3, 6),), str(out), dynamo=True, input_names=["x"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), verbose=False)
    again = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = f32(batch, 6)
        want = sess.run(None, {"x": x})
        got = [t.numpy() for t in comp(torch.from_numpy(x))]
        exported = again.run(None, {"x": x})
        for g, e, w in zip(got, exported, want):
            assert g.shape == w.shape and g.dtype == w.dtype
            assert np.allclose(g, w, atol=TOL) and np.allclose(e, w, atol=TOL)
