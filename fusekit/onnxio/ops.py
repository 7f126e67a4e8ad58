"""ONNX operators (opset 13..21) as torch functions, keyed by op type.

Each entry is a *factory*: it receives the node's resolved attributes and an :class:`OpContext`
once, at load time, and returns a closure that computes the node's outputs from its inputs.
The interpreter in :mod:`fusekit.onnxio.interpreter` calls the closures every forward pass, so all
attribute handling happens once.

Which ops exist, and which of their inputs are static (shapes, axes, pads, ...), is the op
table's (:mod:`fusekit.onnxio.optable`); this module checks at import that it implements exactly
the table's ops. Static inputs are not tensors: they arrive as host values (numpy arrays whose
items may be ``torch.SymInt`` while ``torch.export`` traces a dynamic batch). Reading them as
python numbers keeps shape arithmetic out of the tensor graph, which is what makes a component
re-exportable with a symbolic batch size.

``SHAPE_OPS`` evaluates the small integer computations that ONNX exporters build from ``Shape``
outputs (Gather, Concat, Unsqueeze, Mul, ...) on those host values instead of on tensors.
A factory raises :class:`UnsupportedOp` for attribute values it does not implement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from onnx import TensorProto

from fusekit.onnxio import optable


class UnsupportedOp(Exception):
    """The op, or this use of its attributes, has no implementation here."""


@dataclass(frozen=True)
class OpContext:
    """What a factory may know about its node besides the attributes."""

    op_type: str
    opset: int
    n_inputs: int
    n_outputs: int
    input_dtypes: tuple = ()
    output_dtypes: tuple = ()
    used_outputs: tuple = ()  # indices of outputs that something reads
    present_inputs: tuple = ()  # per input position: whether the node names one (optional inputs may be empty)


@dataclass(frozen=True)
class OpDef:
    """A registered op: its factory, and whether it creates tensors (so needs the call's device)."""

    factory: Callable[[dict, OpContext], Callable]
    needs_device: bool = False


OPS: dict[str, OpDef] = {}
SHAPE_OPS: dict[str, Callable[[dict, OpContext], Callable]] = {}

ONNX_TO_TORCH: dict[int, torch.dtype] = {
    TensorProto.FLOAT: torch.float32,
    TensorProto.DOUBLE: torch.float64,
    TensorProto.FLOAT16: torch.float16,
    TensorProto.BFLOAT16: torch.bfloat16,
    TensorProto.INT8: torch.int8,
    TensorProto.INT16: torch.int16,
    TensorProto.INT32: torch.int32,
    TensorProto.INT64: torch.int64,
    TensorProto.UINT8: torch.uint8,
    TensorProto.UINT16: torch.uint16,
    TensorProto.UINT32: torch.uint32,
    TensorProto.UINT64: torch.uint64,
    TensorProto.BOOL: torch.bool,
}


def register(*names: str, device: bool = False):
    """Decorator: register a factory under one or more op types of the op table."""

    def deco(factory):
        for name in names:
            if name not in optable.TABLE:
                raise RuntimeError(f"fusekit/onnxio/ops.py implements {name}, which the op table "
                                   "(fusekit/onnxio/optable.py) does not list; add it there")
            OPS[name] = OpDef(factory, device)
        return factory

    return deco


def register_shape(*names: str):
    """Decorator: register a host-value (numpy) implementation for shape arithmetic."""

    def deco(factory):
        for name in names:
            SHAPE_OPS[name] = factory
        return factory

    return deco


# ----------------------------------------------------------------------------- host values

_SYM = (torch.SymInt, torch.SymFloat, torch.SymBool)


def _py(x: Any) -> Any:
    """A numpy scalar as a python number; symbolic numbers pass through untouched."""
    if isinstance(x, _SYM):
        return x
    if isinstance(x, np.generic):
        return x.item()
    return x


def host(v: Any) -> np.ndarray | None:
    """Any input value (tensor, numpy array, list) as a numpy array (object dtype if symbolic)."""
    if v is None or isinstance(v, np.ndarray):
        return v
    if isinstance(v, torch.Tensor):
        return np.array(v.detach().cpu().tolist(), dtype=object if v.dtype != torch.bool else bool)
    return np.array(v, dtype=object)


def ints(v: Any) -> list | None:
    """A static input (shape, axes, pads, ...) as a flat list of python ints or SymInts."""
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        return [int(x) for x in v.reshape(-1).tolist()]
    arr = np.asarray(v)
    return [_as_int(x) for x in arr.reshape(-1).tolist()]


def _as_int(x: Any) -> Any:
    if isinstance(x, torch.SymInt):
        return x
    if isinstance(x, torch.SymFloat):
        return torch.sym_int(x)
    return int(x)


def scalar(v: Any) -> Any:
    """A static scalar input as a python number (or a symbolic one)."""
    if isinstance(v, torch.Tensor):
        return v.reshape(-1)[0].item()
    return _py(np.asarray(v).reshape(-1)[0])


def _axis(a: int, rank: int) -> int:
    return a + rank if a < 0 else a


def _attr_or_input(attrs: dict, name: str, value: Any) -> list | None:
    """Axes-like values moved from an attribute to an input in later opsets; accept both."""
    if value is not None:
        return ints(value)
    got = attrs.get(name)
    return list(got) if got is not None else None


def _is_int(dtype: torch.dtype | None) -> bool:
    return dtype is not None and not dtype.is_floating_point and not dtype.is_complex and dtype != torch.bool


# ----------------------------------------------------------------------------- elementwise

_UNARY: dict[str, Callable] = {
    "Abs": torch.abs, "Neg": torch.neg, "Exp": torch.exp, "Log": torch.log, "Sqrt": torch.sqrt,
    "Reciprocal": torch.reciprocal, "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Tanh": torch.tanh,
    "Erf": torch.erf, "Floor": torch.floor, "Ceil": torch.ceil, "Round": torch.round, "Sign": torch.sign,
    "Sin": torch.sin, "Cos": torch.cos, "Tan": torch.tan, "Asin": torch.asin, "Acos": torch.acos,
    "Atan": torch.atan, "Sinh": torch.sinh, "Cosh": torch.cosh, "Asinh": torch.asinh,
    "Acosh": torch.acosh, "Atanh": torch.atanh, "Not": torch.logical_not, "Softsign": F.softsign,
    "IsNaN": torch.isnan, "Mish": F.mish, "Softplus": F.softplus, "BitwiseNot": torch.bitwise_not,
}


def _unary_factory(fn: Callable):
    return lambda attrs, ctx: fn


for _name, _fn in _UNARY.items():
    register(_name)(_unary_factory(_fn))


@register("Identity")
def _identity(attrs, ctx):
    return lambda x: x


@register("LeakyRelu")
def _leaky_relu(attrs, ctx):
    alpha = attrs.get("alpha", 0.01)
    return lambda x: F.leaky_relu(x, alpha)


@register("Elu")
def _elu(attrs, ctx):
    alpha = attrs.get("alpha", 1.0)
    return lambda x: F.elu(x, alpha)


@register("Celu")
def _celu(attrs, ctx):
    alpha = attrs.get("alpha", 1.0)
    return lambda x: F.celu(x, alpha)


@register("Selu")
def _selu(attrs, ctx):
    alpha = attrs.get("alpha", 1.67326319217681884765625)
    gamma = attrs.get("gamma", 1.05070102214813232421875)
    return lambda x: gamma * torch.where(x > 0, x, alpha * (torch.exp(x) - 1))


@register("ThresholdedRelu")
def _thresholded_relu(attrs, ctx):
    alpha = attrs.get("alpha", 1.0)
    return lambda x: torch.where(x > alpha, x, torch.zeros_like(x))


@register("HardSigmoid")
def _hard_sigmoid(attrs, ctx):
    alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
    return lambda x: torch.clamp(alpha * x + beta, 0.0, 1.0)


@register("HardSwish")
def _hard_swish(attrs, ctx):
    return lambda x: x * torch.clamp(x / 6.0 + 0.5, 0.0, 1.0)


@register("PRelu")
def _prelu(attrs, ctx):
    return lambda x, slope: torch.where(x >= 0, x, x * slope)


@register("Gelu")
def _gelu(attrs, ctx):
    approximate = attrs.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise UnsupportedOp(f"approximate={approximate!r}")
    return lambda x: F.gelu(x, approximate=approximate)


@register("IsInf")
def _isinf(attrs, ctx):
    pos, neg = attrs.get("detect_positive", 1), attrs.get("detect_negative", 1)

    def f(x):
        return (torch.isposinf(x) & bool(pos)) | (torch.isneginf(x) & bool(neg))

    return f


def _div(a, b):
    if _is_int(a.dtype):
        return torch.div(a, b, rounding_mode="trunc")
    return torch.div(a, b)


_BINARY: dict[str, Callable] = {
    "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": _div,
    "Equal": torch.eq, "Less": torch.lt, "Greater": torch.gt, "LessOrEqual": torch.le,
    "GreaterOrEqual": torch.ge, "And": torch.logical_and, "Or": torch.logical_or,
    "Xor": torch.logical_xor, "BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or,
    "BitwiseXor": torch.bitwise_xor,
}

for _name, _fn in _BINARY.items():
    register(_name)(_unary_factory(_fn))


@register("Pow")
def _pow(attrs, ctx):
    def f(a, b):
        y = torch.pow(a, b)
        return y if y.dtype == a.dtype else y.to(a.dtype)

    return f


@register("Mod")
def _mod(attrs, ctx):
    if attrs.get("fmod", 0):
        return torch.fmod
    return torch.remainder


def _variadic(fn: Callable, mean: bool = False):
    def factory(attrs, ctx):
        def f(*xs):
            y = xs[0]
            for x in xs[1:]:
                y = fn(y, x)
            return y / len(xs) if mean else y

        return f

    return factory


register("Sum")(_variadic(torch.add))
register("Mean")(_variadic(torch.add, mean=True))
register("Max")(_variadic(torch.maximum))
register("Min")(_variadic(torch.minimum))


@register("Where")
def _where(attrs, ctx):
    return torch.where


@register("Clip")
def _clip(attrs, ctx):
    if ctx.opset < 11:
        lo, hi = attrs.get("min"), attrs.get("max")
        return lambda x: torch.clamp(x, lo, hi)

    def f(x, lo=None, hi=None):
        if lo is not None:
            x = torch.maximum(x, lo.to(x.dtype))
        if hi is not None:
            x = torch.minimum(x, hi.to(x.dtype))
        return x

    return f


def _softmax_like(fn: Callable):
    def factory(attrs, ctx):
        if ctx.opset >= 13:
            axis = attrs.get("axis", -1)
            return lambda x: fn(x, dim=axis)
        axis = attrs.get("axis", 1)  # before opset 13 the input is coerced to 2-D at `axis`

        def f(x):
            a = _axis(axis, x.dim())
            flat = x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))
            return fn(flat, dim=1).reshape(x.shape)

        return f

    return factory


register("Softmax")(_softmax_like(torch.softmax))
register("LogSoftmax")(_softmax_like(torch.log_softmax))


@register("Hardmax")
def _hardmax(attrs, ctx):
    axis = attrs.get("axis", -1)
    return lambda x: F.one_hot(torch.argmax(x, dim=axis), x.shape[axis]).movedim(-1, axis).to(x.dtype)


# ----------------------------------------------------------------------------- types, constants

def _torch_dtype(onnx_type: int) -> torch.dtype:
    if onnx_type not in ONNX_TO_TORCH:
        raise UnsupportedOp(f"element type {TensorProto.DataType.Name(onnx_type)}")
    return ONNX_TO_TORCH[onnx_type]


def _cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.bool and x.dtype != torch.bool:
        return x != 0
    return x.to(dtype)


@register("Cast")
def _cast_op(attrs, ctx):
    dtype = _torch_dtype(attrs["to"])
    return lambda x: _cast(x, dtype)


@register("CastLike")
def _cast_like(attrs, ctx):
    return lambda x, like: _cast(x, like.dtype)


@register("Constant")
def _constant(attrs, ctx):
    if "value" in attrs:
        arr = attrs["value"]
    elif "value_float" in attrs:
        arr = np.array(attrs["value_float"], dtype=np.float32)
    elif "value_floats" in attrs:
        arr = np.array(attrs["value_floats"], dtype=np.float32)
    elif "value_int" in attrs:
        arr = np.array(attrs["value_int"], dtype=np.int64)
    elif "value_ints" in attrs:
        arr = np.array(attrs["value_ints"], dtype=np.int64)
    else:
        raise UnsupportedOp(f"attribute {sorted(attrs)}")
    t = numpy_to_torch(arr)
    return lambda: t


def numpy_to_torch(arr: np.ndarray) -> torch.Tensor:
    """A numpy array as a torch tensor (own memory); UnsupportedOp for strings and the like."""
    if arr.dtype == object or arr.dtype.kind in "SUV":
        raise UnsupportedOp(f"constant of element type {arr.dtype}")
    return torch.from_numpy(np.array(arr, copy=True))


@register("ConstantOfShape", device=True)
def _constant_of_shape(attrs, ctx):
    value = attrs.get("value")
    t = numpy_to_torch(value).reshape(-1) if value is not None else torch.zeros(1, dtype=torch.float32)

    def f(shape, device=None):
        return torch.full(ints(shape), t[0].item(), dtype=t.dtype, device=device)

    return f


@register("Range", device=True)
def _range(attrs, ctx):
    dtype = ctx.output_dtypes[0] if ctx.output_dtypes and ctx.output_dtypes[0] is not None else None

    def f(start, limit, delta, device=None):
        s, l, d = scalar(start), scalar(limit), scalar(delta)
        return torch.arange(s, l, d, dtype=dtype, device=device)

    return f


@register("Dropout")
def _dropout(attrs, ctx):
    # Always inference semantics: a frozen component never drops activations.
    if ctx.n_outputs > 1:
        return lambda x, ratio=None, training=None: (x, torch.ones_like(x, dtype=torch.bool))
    return lambda x, ratio=None, training=None: x


# ----------------------------------------------------------------------------- shapes

@register("Shape")
def _shape(attrs, ctx):
    start, end = attrs.get("start", 0), attrs.get("end")
    return lambda x: torch.tensor(list(x.shape)[start:end], dtype=torch.int64)


@register("Size")
def _size(attrs, ctx):
    return lambda x: torch.tensor(x.numel(), dtype=torch.int64)


@register("Reshape")
def _reshape(attrs, ctx):
    allowzero = attrs.get("allowzero", 0)

    def f(x, shape):
        dims = ints(shape)
        if not allowzero:
            dims = [x.shape[i] if (not isinstance(d, torch.SymInt) and d == 0) else d for i, d in enumerate(dims)]
        return x.reshape(dims)

    return f


@register("Flatten")
def _flatten(attrs, ctx):
    axis = attrs.get("axis", 1)

    def f(x):
        a = _axis(axis, x.dim())
        return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))

    return f


@register("Transpose")
def _transpose(attrs, ctx):
    perm = attrs.get("perm")

    def f(x):
        return x.permute(perm if perm is not None else list(range(x.dim() - 1, -1, -1)))

    return f


@register("Squeeze")
def _squeeze(attrs, ctx):
    def f(x, axes=None):
        ax = _attr_or_input(attrs, "axes", axes)
        if ax is None:
            return x.squeeze()
        return x.squeeze(tuple(_axis(a, x.dim()) for a in ax)) if ax else x

    return f


@register("Unsqueeze")
def _unsqueeze(attrs, ctx):
    def f(x, axes=None):
        ax = _attr_or_input(attrs, "axes", axes)
        rank = x.dim() + len(ax)
        for a in sorted(_axis(a, rank) for a in ax):
            x = x.unsqueeze(a)
        return x

    return f


@register("Concat")
def _concat(attrs, ctx):
    axis = attrs["axis"]
    return lambda *xs: torch.cat(xs, dim=axis)


@register("Split")
def _split(attrs, ctx):
    axis = attrs.get("axis", 0)
    num_outputs = attrs.get("num_outputs")
    n = ctx.n_outputs

    def f(x, split=None):
        sizes = _attr_or_input(attrs, "split", split)
        if sizes is None:
            dim = x.shape[axis]
            if num_outputs is not None:
                chunk = -(-dim // num_outputs)
                sizes = [chunk] * (num_outputs - 1) + [dim - chunk * (num_outputs - 1)]
            else:
                sizes = [dim // n] * n
        return tuple(torch.split(x, sizes, dim=axis))

    return f


def _slice_host(starts, ends, axes, steps, rank):
    """Per-axis python slices for numpy/torch indexing (negative steps handled by the caller)."""
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    index = [slice(None)] * rank
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[_axis(a, rank)] = slice(s, e, st)
    return index


_I64_MAX = 2**63 - 1


@register("Slice")
def _slice(attrs, ctx):
    def f(x, starts=None, ends=None, axes=None, steps=None):
        if ctx.opset < 10:
            starts_, ends_, axes_, steps_ = attrs["starts"], attrs["ends"], attrs.get("axes"), None
        else:
            starts_, ends_, axes_, steps_ = ints(starts), ints(ends), ints(axes), ints(steps)
        index = _slice_host(starts_, ends_, axes_, steps_, x.dim())
        if all(sl.step is None or (not isinstance(sl.step, torch.SymInt) and sl.step > 0) for sl in index):
            return x[tuple(_clip_slice(sl) for sl in index)]
        for a, sl in enumerate(index):  # negative steps: explicit indices (torch has no negative strides)
            if sl.step is not None and sl.step < 0:
                idx = list(range(x.shape[a]))[sl]
                x = x.index_select(a, torch.tensor(idx, dtype=torch.int64, device=x.device))
            elif sl != slice(None):
                x = x[(slice(None),) * a + (_clip_slice(sl),)]
        return x

    return f


def _clip_slice(sl: slice) -> slice:
    # torch indexing overflows on INT64 sentinels such as ends=INT64_MAX; shrink them harmlessly.
    def c(v):
        if v is None or isinstance(v, torch.SymInt):
            return v
        return max(min(v, 2**62), -(2**62))

    return slice(c(sl.start), c(sl.stop), sl.step)


@register("Gather")
def _gather(attrs, ctx):
    axis = attrs.get("axis", 0)

    def f(x, idx):
        a = _axis(axis, x.dim())
        idx = torch.where(idx < 0, idx + x.shape[a], idx)
        out = x.index_select(a, idx.reshape(-1))
        return out.reshape(tuple(x.shape[:a]) + tuple(idx.shape) + tuple(x.shape[a + 1:]))

    return f


@register("GatherElements")
def _gather_elements(attrs, ctx):
    axis = attrs.get("axis", 0)

    def f(x, idx):
        a = _axis(axis, x.dim())
        idx = torch.where(idx < 0, idx + x.shape[a], idx)
        return torch.gather(x, a, idx)

    return f


@register("GatherND")
def _gather_nd(attrs, ctx):
    batch_dims = attrs.get("batch_dims", 0)
    if batch_dims != 0:
        raise UnsupportedOp("batch_dims != 0")

    def f(x, idx):
        k = idx.shape[-1]
        idx = torch.where(idx < 0, idx + torch.tensor(x.shape[:k], device=idx.device), idx)
        return x[tuple(idx[..., i] for i in range(k))]

    return f


_SCATTER_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


@register("ScatterElements")
def _scatter_elements(attrs, ctx):
    axis, reduction = attrs.get("axis", 0), attrs.get("reduction", "none")
    if reduction != "none" and reduction not in _SCATTER_REDUCE:
        raise UnsupportedOp(f"reduction={reduction!r}")

    def f(x, idx, updates):
        a = _axis(axis, x.dim())
        idx = torch.where(idx < 0, idx + x.shape[a], idx)
        if reduction == "none":
            return torch.scatter(x, a, idx, updates)
        return torch.scatter_reduce(x, a, idx, updates, _SCATTER_REDUCE[reduction], include_self=True)

    return f


@register("ScatterND")
def _scatter_nd(attrs, ctx):
    reduction = attrs.get("reduction", "none")
    if reduction not in ("none", "add", "mul"):
        raise UnsupportedOp(f"reduction={reduction!r}")

    def f(x, idx, updates):
        k = idx.shape[-1]
        sizes = torch.tensor(list(x.shape[:k]), dtype=idx.dtype, device=idx.device)
        idx = torch.where(idx < 0, idx + sizes, idx)
        key = tuple(idx[..., i] for i in range(k))
        if reduction == "none":
            return x.index_put(key, updates)
        if reduction == "add":
            return x.index_put(key, updates, accumulate=True)
        return x.index_put(key, x[key] * updates)

    return f


@register("OneHot")
def _one_hot(attrs, ctx):
    axis = attrs.get("axis", -1)

    def f(idx, depth, values):
        d = _as_int(scalar(depth))
        idx = idx.to(torch.int64)
        idx = torch.where(idx < 0, idx + d, idx)
        valid = (idx >= 0) & (idx < d)
        hot = F.one_hot(torch.where(valid, idx, torch.zeros_like(idx)), d) & valid.unsqueeze(-1)
        out = torch.where(hot.bool(), values[1], values[0])
        return out.movedim(-1, _axis(axis, idx.dim() + 1))

    return f


@register("EyeLike")
def _eye_like(attrs, ctx):
    k = attrs.get("k", 0)
    dtype = _torch_dtype(attrs["dtype"]) if "dtype" in attrs else None

    def f(x):
        eye = torch.ones_like(x, dtype=dtype or x.dtype).triu(k).tril(k)
        return eye

    return f


@register("Resize")
def _resize(attrs, ctx):
    mode = attrs.get("mode", "nearest")
    ctm = attrs.get("coordinate_transformation_mode", "half_pixel")
    for name, default in (("antialias", 0), ("exclude_outside", 0), ("axes", None)):
        if attrs.get(name, default) != default:
            raise UnsupportedOp(f"{name}={attrs[name]!r}")
    if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise UnsupportedOp("keep_aspect_ratio_policy other than stretch")
    if mode == "nearest":
        nearest = attrs.get("nearest_mode", "round_prefer_floor")
        # torch 'nearest' is floor(out * in/out) = ONNX asymmetric/floor; 'nearest-exact' is
        # floor((out + 0.5) * in/out) = ONNX half_pixel/round_prefer_ceil.
        if ctm == "asymmetric" and nearest == "floor":
            kind, align = "nearest", None
        elif ctm in ("half_pixel", "pytorch_half_pixel") and nearest == "round_prefer_ceil":
            kind, align = "nearest-exact", None
        else:
            raise UnsupportedOp(f"nearest resize with {ctm} coordinates and nearest_mode={nearest}")
    elif mode in ("linear", "cubic"):
        if attrs.get("cubic_coeff_a", -0.75) != -0.75:
            raise UnsupportedOp("cubic_coeff_a other than -0.75")
        if ctm == "align_corners":
            align = True
        elif ctm in ("half_pixel", "pytorch_half_pixel"):
            align = False
        else:
            raise UnsupportedOp(f"{mode} resize with {ctm} coordinates")
        kind = None
    else:
        raise UnsupportedOp(f"mode={mode!r}")

    def f(x, roi=None, scales=None, sizes=None):
        nd = x.dim() - 2
        if kind is None:
            interp = ({1: "linear", 2: "bilinear", 3: "trilinear"} if mode == "linear" else {2: "bicubic"}).get(nd)
            if interp is None:
                raise UnsupportedOp(f"{mode} resize of a {x.dim()}-d tensor")
        else:
            interp = kind
        if sizes is not None and np.asarray(sizes).size:
            size = ints(sizes)
            if list(size[:2]) != list(x.shape[:2]):
                raise UnsupportedOp("resizing the batch or channel dimension")
            return F.interpolate(x, size=size[2:], mode=interp, align_corners=align)
        sc = [float(v) for v in np.asarray(scales, dtype=np.float64).reshape(-1)]
        if sc[:2] != [1.0, 1.0]:
            raise UnsupportedOp("resizing the batch or channel dimension")
        return F.interpolate(x, scale_factor=sc[2:], mode=interp, align_corners=align)

    return f


@register("GroupNormalization")
def _group_norm(attrs, ctx):
    groups, eps = attrs["num_groups"], attrs.get("epsilon", 1e-5)
    return lambda x, scale, bias: F.group_norm(x, groups, scale, bias, eps)


@register("NonZero")
def _non_zero(attrs, ctx):
    # Data-dependent output shape: runs eagerly, but a module using it cannot be re-exported.
    return lambda x: torch.nonzero(x).t().contiguous()


@register("Expand")
def _expand(attrs, ctx):
    def f(x, shape):
        dims = ints(shape)
        rank = max(x.dim(), len(dims))
        a = [1] * (rank - x.dim()) + list(x.shape)
        b = [1] * (rank - len(dims)) + dims
        out = [bi if (not isinstance(ai, torch.SymInt) and ai == 1) else ai for ai, bi in zip(a, b)]
        return x.reshape(a).expand(out)

    return f


@register("Tile")
def _tile(attrs, ctx):
    return lambda x, repeats: x.repeat(ints(repeats))


@register("Pad")
def _pad(attrs, ctx):
    mode = attrs.get("mode", "constant")
    modes = {"constant": "constant", "reflect": "reflect", "edge": "replicate", "wrap": "circular"}
    if mode not in modes:
        raise UnsupportedOp(f"mode={mode!r}")

    def f(x, pads=None, value=None, axes=None):
        p = ints(pads) if ctx.opset >= 11 else list(attrs["pads"])
        rank = x.dim()
        ax = [_axis(a, rank) for a in ints(axes)] if axes is not None else list(range(rank))
        begin, end = [0] * rank, [0] * rank
        for i, a in enumerate(ax):
            begin[a], end[a] = p[i], p[len(ax) + i]
        # F.pad takes pairs from the last dim backwards; stopping at the first padded dim keeps
        # reflect/edge/wrap within the trailing dims torch accepts for them.
        first = next((a for a in range(rank) if begin[a] != 0 or end[a] != 0), rank - 1)
        torch_pads = _torch_pad_list(begin[first:], end[first:])
        if mode != "constant":
            return F.pad(x, torch_pads, mode=modes[mode])
        if ctx.opset < 11:
            v = attrs.get("value", 0.0)
        else:
            v = 0 if value is None or np.asarray(value).size == 0 else scalar(value)
        return F.pad(x, torch_pads, mode="constant", value=v)

    return f


@register("Trilu")
def _trilu(attrs, ctx):
    upper = attrs.get("upper", 1)

    def f(x, k=None):
        kk = 0 if k is None else scalar(k)
        return torch.triu(x, kk) if upper else torch.tril(x, kk)

    return f


@register("Einsum")
def _einsum(attrs, ctx):
    eq = attrs["equation"].replace(" ", "")
    return lambda *xs: torch.einsum(eq, *xs)


@register("MatMul")
def _matmul(attrs, ctx):
    return torch.matmul


@register("Gemm")
def _gemm(attrs, ctx):
    alpha, beta = attrs.get("alpha", 1.0), attrs.get("beta", 1.0)
    ta, tb = attrs.get("transA", 0), attrs.get("transB", 0)

    def f(a, b, c=None):
        a = a.t() if ta else a
        if c is not None and c.dim() <= 1 and alpha == 1.0 and beta == 1.0 and a.is_floating_point():
            # linear() exports as one Gemm with its bias; addmm needs the bias expanded to [B, n],
            # which the exporter writes as an Expand that copies the bias for every row.
            w = b if tb else b.t()
            return torch.nn.functional.linear(a, w, c.to(a.dtype).expand(w.shape[0]))
        b = b.t() if tb else b
        if c is not None and alpha == 1.0 and beta == 1.0 and a.is_floating_point():
            return torch.addmm(c.to(a.dtype).expand(a.shape[0], b.shape[1]), a, b)
        y = a @ b
        if alpha != 1.0:
            y = y * alpha
        if c is not None:
            y = y + (c * beta if beta != 1.0 else c)
        return y

    return f


@register("CumSum")
def _cumsum(attrs, ctx):
    exclusive, reverse = attrs.get("exclusive", 0), attrs.get("reverse", 0)

    def f(x, axis):
        a = _axis(scalar(axis), x.dim())
        if reverse:
            x = x.flip(a)
        y = torch.cumsum(x, a)
        if exclusive:
            y = y - x
        return y.flip(a) if reverse else y

    return f


@register("TopK")
def _topk(attrs, ctx):
    axis, largest, sorted_ = attrs.get("axis", -1), attrs.get("largest", 1), attrs.get("sorted", 1)
    return lambda x, k: tuple(torch.topk(x, scalar(k), dim=axis, largest=bool(largest), sorted=bool(sorted_)))


def _arg_reduce(fn: Callable):
    def factory(attrs, ctx):
        axis, keep, last = attrs.get("axis", 0), attrs.get("keepdims", 1), attrs.get("select_last_index", 0)

        def f(x):
            if last:
                a = _axis(axis, x.dim())
                return x.shape[a] - 1 - fn(x.flip(a), dim=a, keepdim=bool(keep))
            return fn(x, dim=axis, keepdim=bool(keep))

        return f

    return factory


register("ArgMax")(_arg_reduce(torch.argmax))
register("ArgMin")(_arg_reduce(torch.argmin))


# ----------------------------------------------------------------------------- reductions

def _reduce(kind: str):
    def factory(attrs, ctx):
        keep = bool(attrs.get("keepdims", 1))
        noop = attrs.get("noop_with_empty_axes", 0)
        # ReduceSum took axes as an input from opset 13, the others from opset 18.
        axes_from_input = ctx.opset >= (13 if kind == "Sum" else 18)

        def f(x, axes=None):
            ax = ints(axes) if axes_from_input else attrs.get("axes")
            if not ax:
                if noop:
                    return x
                ax = list(range(x.dim()))
            dims = sorted(_axis(a, x.dim()) for a in ax)
            return _REDUCERS[kind](x, dims, keep)

        return f

    return factory


def _prod(x, dims, keep):
    for d in reversed(dims):
        x = torch.prod(x, d, keepdim=keep)
    return x


def _log_sum_exp(x, dims, keep):
    return torch.logsumexp(x, dims, keepdim=keep)


_REDUCERS = {
    "Mean": lambda x, d, k: torch.mean(x, d, keepdim=k),
    "Sum": lambda x, d, k: torch.sum(x, d, keepdim=k),
    "Max": lambda x, d, k: torch.amax(x, d, keepdim=k),
    "Min": lambda x, d, k: torch.amin(x, d, keepdim=k),
    "Prod": _prod,
    "L1": lambda x, d, k: torch.sum(torch.abs(x), d, keepdim=k),
    "L2": lambda x, d, k: torch.sqrt(torch.sum(x * x, d, keepdim=k)),
    "SumSquare": lambda x, d, k: torch.sum(x * x, d, keepdim=k),
    "LogSum": lambda x, d, k: torch.log(torch.sum(x, d, keepdim=k)),
    "LogSumExp": _log_sum_exp,
}

for _kind in _REDUCERS:
    register("Reduce" + _kind)(_reduce(_kind))


# ----------------------------------------------------------------------------- normalisation

@register("BatchNormalization")
def _batch_norm(attrs, ctx):
    if attrs.get("training_mode", 0) or ctx.n_outputs > 1:
        raise UnsupportedOp("training_mode=1 (a frozen component always uses its stored statistics)")
    eps = attrs.get("epsilon", 1e-5)
    # training=False: stored statistics always, whatever mode the parent module is in.
    return lambda x, scale, bias, mean, var: F.batch_norm(x, mean, var, scale, bias, False, 0.0, eps)


@register("LayerNormalization")
def _layer_norm(attrs, ctx):
    axis, eps = attrs.get("axis", -1), attrs.get("epsilon", 1e-5)
    want_stats = any(i > 0 for i in ctx.used_outputs)

    def f(x, scale, bias=None):
        a = _axis(axis, x.dim())
        shape = tuple(x.shape[a:])
        if tuple(scale.shape) == shape and (bias is None or tuple(bias.shape) == shape) and not want_stats:
            return F.layer_norm(x, shape, scale, bias, eps)
        dims = tuple(range(a, x.dim()))
        mean = x.mean(dims, keepdim=True)
        inv = torch.rsqrt(((x - mean) ** 2).mean(dims, keepdim=True) + eps)
        y = (x - mean) * inv * scale
        y = y + bias if bias is not None else y
        return (y, mean, inv)[: ctx.n_outputs] if ctx.n_outputs > 1 else y

    return f


@register("InstanceNormalization")
def _instance_norm(attrs, ctx):
    eps = attrs.get("epsilon", 1e-5)
    return lambda x, scale, bias: F.instance_norm(x, weight=scale, bias=bias, eps=eps)


@register("LpNormalization")
def _lp_norm(attrs, ctx):
    axis, p = attrs.get("axis", -1), attrs.get("p", 2)
    if p not in (1, 2):
        raise UnsupportedOp(f"p={p}")
    if p == 1:
        return lambda x: x / torch.sum(torch.abs(x), axis, keepdim=True)
    return lambda x: x / torch.sqrt(torch.sum(x * x, axis, keepdim=True))


# ----------------------------------------------------------------------------- convolution, pooling

def _auto_pads(auto_pad: str, in_sizes, kernel, strides, dilations, pads) -> tuple[list, list]:
    """ONNX pads (begin, end per spatial dim) resolved for auto_pad, as in the ONNX spec."""
    nd = len(kernel)
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(nd):
            out = -(-in_sizes[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (kernel[i] - 1) * dilations[i] + 1 - in_sizes[i])
            small = total // 2
            if auto_pad == "SAME_UPPER":
                begin.append(small), end.append(total - small)
            else:
                begin.append(total - small), end.append(small)
        return begin, end
    if auto_pad == "VALID" or not pads:
        return [0] * nd, [0] * nd
    return list(pads[:nd]), list(pads[nd:])


def _torch_pad_list(begin: list, end: list) -> list:
    out: list = []
    for b, e in zip(reversed(begin), reversed(end)):
        out += [b, e]
    return out


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}
_AVGPOOL = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}


def _check_auto_pad(auto_pad: str) -> None:
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise UnsupportedOp(f"auto_pad={auto_pad!r}")


@register("Conv")
def _conv(attrs, ctx):
    auto_pad = attrs.get("auto_pad", "NOTSET")
    _check_auto_pad(auto_pad)
    group = attrs.get("group", 1)

    def f(x, w, b=None):
        nd = x.dim() - 2
        if nd not in _CONV:
            raise UnsupportedOp(f"{nd}-d convolution")
        kernel = list(w.shape[2:])
        strides = attrs.get("strides", [1] * nd)
        dil = attrs.get("dilations", [1] * nd)
        begin, end = _auto_pads(auto_pad, list(x.shape[2:]), kernel, strides, dil, attrs.get("pads"))
        if begin != end:
            x = F.pad(x, _torch_pad_list(begin, end))
            begin = [0] * nd
        return _CONV[nd](x, w, b, strides, begin, dil, group)

    return f


@register("ConvTranspose")
def _conv_transpose(attrs, ctx):
    auto_pad = attrs.get("auto_pad", "NOTSET")
    _check_auto_pad(auto_pad)
    group = attrs.get("group", 1)

    def f(x, w, b=None):
        nd = x.dim() - 2
        kernel = list(w.shape[2:])
        strides = attrs.get("strides", [1] * nd)
        dil = attrs.get("dilations", [1] * nd)
        out_pad = attrs.get("output_padding", [0] * nd)
        in_sizes = list(x.shape[2:])
        full = [strides[i] * (in_sizes[i] - 1) + (kernel[i] - 1) * dil[i] + 1 for i in range(nd)]
        if "output_shape" in attrs or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            target = attrs.get("output_shape") or [in_sizes[i] * strides[i] for i in range(nd)]
            target = list(target)[-nd:]
            total = [full[i] + out_pad[i] - target[i] for i in range(nd)]
            if auto_pad == "SAME_UPPER":
                begin = [t // 2 for t in total]
            else:
                begin = [t - t // 2 for t in total]
            end = [t - bb for t, bb in zip(total, begin)]
        elif auto_pad == "VALID":
            begin, end = [0] * nd, [0] * nd
        else:
            pads = attrs.get("pads", [0] * (2 * nd))
            begin, end = list(pads[:nd]), list(pads[nd:])
        # Full transposed convolution, then crop/extend: covers asymmetric pads and any output_padding.
        y = _CONV_T[nd](x, w, None, strides, 0, 0, group, dil)
        y = F.pad(y, _torch_pad_list([-v for v in begin], [out_pad[i] - end[i] for i in range(nd)]))
        if b is not None:
            y = y + b.reshape([1, -1] + [1] * nd)
        return y

    return f


def _pool_geometry(attrs, x):
    kernel = attrs["kernel_shape"]
    nd = len(kernel)
    strides = attrs.get("strides", [1] * nd)
    dil = attrs.get("dilations", [1] * nd)
    begin, end = _auto_pads(attrs.get("auto_pad", "NOTSET"), list(x.shape[2:]), kernel, strides, dil, attrs.get("pads"))
    return kernel, strides, dil, begin, end


def _pads_fit_torch(kernel, dil, begin, end) -> bool:
    return begin == end and all(p <= ((k - 1) * d + 1) // 2 for p, k, d in zip(begin, kernel, dil))


@register("MaxPool")
def _max_pool(attrs, ctx):
    _check_auto_pad(attrs.get("auto_pad", "NOTSET"))
    if 1 in ctx.used_outputs:
        raise UnsupportedOp("the Indices output")
    if attrs.get("storage_order", 0):
        raise UnsupportedOp("storage_order=1")
    ceil = bool(attrs.get("ceil_mode", 0))

    def f(x):
        kernel, strides, dil, begin, end = _pool_geometry(attrs, x)
        nd = len(kernel)
        if _pads_fit_torch(kernel, dil, begin, end):
            return _MAXPOOL[nd](x, kernel, strides, begin, dil, ceil)
        x = F.pad(x, _torch_pad_list(begin, end), value=float("-inf"))
        return _MAXPOOL[nd](x, kernel, strides, 0, dil, ceil)

    return f


@register("AveragePool")
def _avg_pool(attrs, ctx):
    _check_auto_pad(attrs.get("auto_pad", "NOTSET"))
    if any(d != 1 for d in attrs.get("dilations", [])):
        raise UnsupportedOp("dilations other than 1")
    ceil = bool(attrs.get("ceil_mode", 0))
    include = bool(attrs.get("count_include_pad", 0))

    def f(x):
        kernel, strides, dil, begin, end = _pool_geometry(attrs, x)
        nd = len(kernel)
        pool = _AVGPOOL[nd]
        if _pads_fit_torch(kernel, dil, begin, end):
            return pool(x, kernel, strides, begin, ceil, include)
        padded = F.pad(x, _torch_pad_list(begin, end))
        total = pool(padded, kernel, strides, 0, ceil, True)
        if include:
            return total
        ones = F.pad(torch.ones_like(x[:1, :1]), _torch_pad_list(begin, end))
        return total / pool(ones, kernel, strides, 0, ceil, True)

    return f


@register("GlobalAveragePool")
def _global_avg_pool(attrs, ctx):
    return lambda x: torch.mean(x, tuple(range(2, x.dim())), keepdim=True)


@register("GlobalMaxPool")
def _global_max_pool(attrs, ctx):
    return lambda x: torch.amax(x, tuple(range(2, x.dim())), keepdim=True)


@register("DepthToSpace")
def _depth_to_space(attrs, ctx):
    bs, mode = attrs["blocksize"], attrs.get("mode", "DCR")
    if mode == "CRD":
        return lambda x: F.pixel_shuffle(x, bs)

    def f(x):
        n, c, h, w = x.shape
        y = x.reshape(n, bs, bs, c // (bs * bs), h, w).permute(0, 3, 4, 1, 5, 2)
        return y.reshape(n, c // (bs * bs), h * bs, w * bs)

    return f


@register("SpaceToDepth")
def _space_to_depth(attrs, ctx):
    bs = attrs["blocksize"]

    def f(x):
        n, c, h, w = x.shape
        y = x.reshape(n, c, h // bs, bs, w // bs, bs).permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * bs * bs, h // bs, w // bs)

    return f


# ----------------------------------------------------------------------------- host (shape) arithmetic

def _elementwise(fn: Callable) -> Callable:
    vec = np.frompyfunc(fn, 2, 1)
    return lambda a, b: np.asarray(vec(a, b), dtype=object)


def _int_div(a, b):
    if isinstance(a, _SYM) or isinstance(b, _SYM):
        return a // b  # shape values are non-negative: floor equals ONNX's truncation
    if isinstance(a, float) or isinstance(b, float):
        return a / b
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def _sym_min(a, b):
    return torch.sym_min(a, b) if isinstance(a, _SYM) or isinstance(b, _SYM) else min(a, b)


def _sym_max(a, b):
    return torch.sym_max(a, b) if isinstance(a, _SYM) or isinstance(b, _SYM) else max(a, b)


_HOST_BINARY = {
    "Add": lambda a, b: a + b, "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b, "Div": _int_div,
    "Equal": lambda a, b: a == b, "Less": lambda a, b: a < b, "Greater": lambda a, b: a > b,
    "LessOrEqual": lambda a, b: a <= b, "GreaterOrEqual": lambda a, b: a >= b,
    "Max": _sym_max, "Min": _sym_min,
}

for _name, _fn in _HOST_BINARY.items():
    SHAPE_OPS[_name] = (lambda fn: (lambda attrs, ctx: _elementwise(fn)))(_fn)


@register_shape("Mod")
def _host_mod(attrs, ctx):
    if attrs.get("fmod", 0):
        return None
    return _elementwise(lambda a, b: a % b)


@register_shape("Identity")
def _host_identity(attrs, ctx):
    return lambda x: x


@register_shape("Neg")
def _host_neg(attrs, ctx):
    return lambda x: np.asarray(np.frompyfunc(lambda v: -v, 1, 1)(x), dtype=object)


@register_shape("Abs")
def _host_abs(attrs, ctx):
    return lambda x: np.asarray(np.frompyfunc(abs, 1, 1)(x), dtype=object)


def _host_cast_to(dtype: torch.dtype) -> Callable:
    if dtype == torch.bool:
        conv = lambda v: v != 0  # noqa: E731
    elif dtype.is_floating_point:
        conv = torch.sym_float
    else:
        conv = lambda v: v if isinstance(v, torch.SymInt) else int(v)  # noqa: E731
    vec = np.frompyfunc(conv, 1, 1)
    return lambda x: np.asarray(vec(x), dtype=object)


@register_shape("Cast")
def _host_cast(attrs, ctx):
    dtype = ONNX_TO_TORCH.get(attrs["to"])
    if dtype is None or dtype.is_floating_point:
        return None  # float shape arithmetic goes to tensors: its dtype and rounding matter
    return _host_cast_to(dtype)


@register_shape("Gather")
def _host_gather(attrs, ctx):
    axis = attrs.get("axis", 0)
    return lambda x, idx: np.take(x, np.asarray(idx).astype(np.int64), axis=axis)


@register_shape("Concat")
def _host_concat(attrs, ctx):
    axis = attrs["axis"]
    return lambda *xs: np.concatenate([np.asarray(x, dtype=object) for x in xs], axis=axis)


@register_shape("Unsqueeze")
def _host_unsqueeze(attrs, ctx):
    def f(x, axes=None):
        ax = _attr_or_input(attrs, "axes", axes)
        x = np.asarray(x, dtype=object)
        rank = x.ndim + len(ax)
        for a in sorted(_axis(a, rank) for a in ax):
            x = np.expand_dims(x, a)
        return x

    return f


@register_shape("Squeeze")
def _host_squeeze(attrs, ctx):
    def f(x, axes=None):
        ax = _attr_or_input(attrs, "axes", axes)
        x = np.asarray(x, dtype=object)
        return np.squeeze(x) if ax is None else np.squeeze(x, axis=tuple(_axis(a, x.ndim) for a in ax))

    return f


@register_shape("Reshape")
def _host_reshape(attrs, ctx):
    def f(x, shape):
        x = np.asarray(x, dtype=object)
        dims = [int(d) for d in ints(shape)]
        if not attrs.get("allowzero", 0):
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)

    return f


@register_shape("Slice")
def _host_slice(attrs, ctx):
    def f(x, starts, ends, axes=None, steps=None):
        x = np.asarray(x, dtype=object)
        index = _slice_host([int(v) for v in ints(starts)], [int(v) for v in ints(ends)],
                            None if axes is None else [int(v) for v in ints(axes)],
                            None if steps is None else [int(v) for v in ints(steps)], x.ndim)
        return x[tuple(index)]

    return f


@register_shape("Where")
def _host_where(attrs, ctx):
    return lambda c, a, b: np.asarray(np.where(np.asarray(c).astype(bool), a, b), dtype=object)


@register_shape("ReduceProd", "ReduceSum")
def _host_reduce(attrs, ctx):
    if attrs.get("noop_with_empty_axes", 0) or ctx.n_inputs > 1 or attrs.get("axes") not in (None, [0]):
        return None
    keep = bool(attrs.get("keepdims", 1))
    fn = np.prod if ctx.op_type == "ReduceProd" else np.sum

    def f(x):
        x = np.asarray(x, dtype=object)
        if x.ndim != 1:
            raise UnsupportedOp("host reduction of more than one dimension")
        y = fn(x) if x.size else (1 if ctx.op_type == "ReduceProd" else 0)
        return np.asarray([y] if keep else y, dtype=object)

    return f


# ----------------------------------------------------------------------------- recurrent (GRU, LSTM, RNN)

_RNN_ACTIVATIONS: dict[str, Callable] = {
    "Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu, "Softsign": F.softsign,
    "Softplus": F.softplus,
}
_RNN_GATES = {"RNN": (1, ("Tanh",)), "GRU": (3, ("Sigmoid", "Tanh")), "LSTM": (4, ("Sigmoid", "Tanh", "Tanh"))}


def _recurrent_setup(attrs: dict, ctx: OpContext) -> tuple[int, list[list[Callable]], bool]:
    """Directions and per-direction activations of a GRU/LSTM/RNN node; refuses what is not implemented."""
    direction = attrs.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise UnsupportedOp(f"direction={direction!r}")
    n_dir = 2 if direction == "bidirectional" else 1
    _, defaults = _RNN_GATES[ctx.op_type]
    names = list(attrs.get("activations") or defaults * n_dir)
    if len(names) == len(defaults) and n_dir == 2:
        names = names * 2
    if attrs.get("activation_alpha") or attrs.get("activation_beta"):
        raise UnsupportedOp("activation_alpha/activation_beta")
    unknown = [n for n in names if n not in _RNN_ACTIVATIONS]
    if unknown or len(names) != len(defaults) * n_dir:
        raise UnsupportedOp(f"activations={names}")
    if "clip" in attrs:
        raise UnsupportedOp("clip")
    if attrs.get("input_forget", 0):
        raise UnsupportedOp("input_forget=1")
    if len(ctx.present_inputs) > 4 and ctx.present_inputs[4]:
        raise UnsupportedOp("a sequence_lens input (re-export without packed sequences)")
    acts = [[_RNN_ACTIVATIONS[n] for n in names[d * len(defaults):(d + 1) * len(defaults)]] for d in range(n_dir)]
    return n_dir, acts, direction == "reverse"


def _recurrent(cell: Callable, n_states: int):
    """A GRU/LSTM/RNN factory from its cell: ``cell(xw_t, states, R, Rb, P, acts) -> states``.

    ``xw_t`` is the input projection of one time step (with its bias); the first state is the
    hidden state. Inputs: X, W, R, B, sequence_lens, initial_h (, initial_c, P for LSTM).
    """
    def factory(attrs, ctx):
        n_dir, acts, reverse = _recurrent_setup(attrs, ctx)
        hidden = attrs.get("hidden_size")
        layout = attrs.get("layout", 0)
        gates = _RNN_GATES[ctx.op_type][0]
        lbr = attrs.get("linear_before_reset", 0)

        def f(x, w, r, b=None, seq_lens=None, *initial):
            if layout:
                x = x.transpose(0, 1)  # [seq, batch, input]
            steps, batch = x.shape[0], x.shape[1]
            h = hidden or r.shape[-1]
            peep = initial[2] if len(initial) > 2 else None
            states0 = []
            for k in range(n_states):
                s = initial[k] if k < len(initial) else None
                if s is None:
                    s = x.new_zeros(n_dir, batch, h)
                elif layout:
                    s = s.transpose(0, 1)
                states0.append(s)
            ys, finals = [], []
            for d in range(n_dir):
                bias_w = b[d, :gates * h] if b is not None else None
                bias_r = b[d, gates * h:] if b is not None else None
                xw = torch.matmul(x, w[d].t())
                if bias_w is not None:
                    xw = xw + bias_w
                states = [s[d] for s in states0]
                order = range(steps - 1, -1, -1) if (reverse or d == 1) else range(steps)
                outs = [None] * steps
                for t in order:
                    states = cell(xw[t], states, r[d], bias_r, None if peep is None else peep[d], acts[d], lbr)
                    outs[t] = states[0]
                ys.append(torch.stack(outs) if steps else x.new_zeros(0, batch, h))
                finals.append(states)
            y = torch.stack(ys, 1)  # [seq, dir, batch, hidden]
            last = [torch.stack([fs[k] for fs in finals]) for k in range(n_states)]
            if layout:
                y = y.permute(2, 0, 1, 3)
                last = [s.transpose(0, 1) for s in last]
            out = (y, *last)[: max(ctx.n_outputs, 1)]
            return out[0] if len(out) == 1 else out

        return f

    return factory


def _rnn_cell(xw, states, r, br, peep, acts, lbr):
    rec = torch.matmul(states[0], r.t())
    if br is not None:
        rec = rec + br
    return [acts[0](xw + rec)]


def _gru_cell(xw, states, r, br, peep, acts, lbr):
    h = states[0]
    size = h.shape[-1]
    xz, xr, xh = xw.split(size, dim=-1)
    rz, rr, rh = r.split(size, dim=0)
    bz, br_, bh = br.split(size) if br is not None else (0.0, 0.0, 0.0)
    z = acts[0](xz + torch.matmul(h, rz.t()) + bz)
    reset = acts[0](xr + torch.matmul(h, rr.t()) + br_)
    if lbr:
        cand = acts[1](xh + reset * (torch.matmul(h, rh.t()) + bh))
    else:
        cand = acts[1](xh + torch.matmul(reset * h, rh.t()) + bh)
    return [(1 - z) * cand + z * h]


def _lstm_cell(xw, states, r, br, peep, acts, lbr):
    h, c = states
    pre = xw + torch.matmul(h, r.t())
    if br is not None:
        pre = pre + br
    i, o, f, g = pre.split(h.shape[-1], dim=-1)
    if peep is not None:
        pi, po, pf = peep.split(h.shape[-1])
        i, f = i + pi * c, f + pf * c
    i, f = acts[0](i), acts[0](f)
    c = f * c + i * acts[1](g)
    if peep is not None:
        o = o + po * c
    return [acts[0](o) * acts[2](c), c]


register("RNN")(_recurrent(_rnn_cell, 1))
register("GRU")(_recurrent(_gru_cell, 1))
register("LSTM")(_recurrent(_lstm_cell, 2))


# ----------------------------------------------------------------------------- attention (opset 23)

@register("Attention")
def _attention(attrs, ctx):
    """Scaled dot-product attention as the opset-23 op defines it (what the dynamo exporter writes
    for ``F.scaled_dot_product_attention`` from opset 23 on): 4-D [batch, heads, seq, head size]
    or 3-D [batch, seq, heads * head size] inputs, a boolean (True attends) or additive mask,
    causal masking aligned to the end of a past cache, grouped key/value heads, softcap. A row
    that attends nothing gives zeros."""
    if 3 in ctx.used_outputs:
        raise UnsupportedOp("the qk_matmul_output output")
    if len(ctx.present_inputs) > 6 and ctx.present_inputs[6]:
        raise UnsupportedOp("a nonpad_kv_seqlen input")
    if attrs.get("softmax_precision") not in (None, TensorProto.FLOAT):
        raise UnsupportedOp(f"softmax_precision={attrs['softmax_precision']}")
    causal, scale, softcap = attrs.get("is_causal", 0), attrs.get("scale"), attrs.get("softcap", 0.0)
    q_heads, kv_heads = attrs.get("q_num_heads"), attrs.get("kv_num_heads")

    def heads(x, n):
        return x.reshape(x.shape[0], x.shape[1], n, -1).transpose(1, 2)

    def f(q, k, v, mask=None, past_k=None, past_v=None, nonpad=None):
        three = q.dim() == 3
        if three:
            q, k, v = heads(q, q_heads), heads(k, kv_heads), heads(v, kv_heads)
        if past_k is not None:
            k, v = torch.cat([past_k, k], 2), torch.cat([past_v, v], 2)
        present = (k, v)
        s_q, s_kv = q.shape[2], k.shape[2]
        bias = torch.zeros(s_q, s_kv, dtype=q.dtype, device=q.device)
        if mask is not None:
            if mask.shape[-1] < s_kv:  # a mask for the new keys only: the past is not attended
                mask = F.pad(mask, (0, s_kv - mask.shape[-1]), value=False if mask.dtype == torch.bool else -math.inf)
            bias = bias + (torch.where(mask, 0.0, -math.inf).to(q.dtype) if mask.dtype == torch.bool else mask)
        if causal:
            offset = past_k.shape[2] if past_k is not None else 0
            allowed = torch.ones(s_q, s_kv, dtype=torch.bool, device=q.device).tril(offset)
            bias = bias + torch.where(allowed, 0.0, -math.inf).to(q.dtype)
        if k.shape[1] != q.shape[1]:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
            v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
        root = math.sqrt(scale if scale is not None else 1.0 / math.sqrt(q.shape[-1]))
        scores = torch.matmul(q * root, k.transpose(-1, -2) * root)
        if softcap:
            scores = softcap * torch.tanh(scores / softcap)
        scores = scores + bias
        top = scores.amax(-1, keepdim=True)
        dead = torch.isneginf(bias.amax(-1, keepdim=True))
        weights = torch.exp(scores - torch.where(torch.isneginf(top), 0.0, top))
        total = weights.sum(-1, keepdim=True)
        weights = torch.where(dead, 0.0, weights / torch.where(total == 0, 1.0, total))
        y = torch.matmul(weights, v)
        if three:
            y = y.transpose(1, 2).reshape(y.shape[0], y.shape[2], -1)
        outs = (y, *present)[: max(1, min(ctx.n_outputs, 3))]
        return outs[0] if len(outs) == 1 else outs

    return f


# ----------------------------------------------------------------------------- loops and sequences

@register("Loop")
def _loop(attrs, ctx):
    """The loop driver. The interpreter plans the body graph and passes it in as ``body``.

    ``body(i, cond, carried) -> [cond, *carried, *scan outputs]``; runs while ``i < trip`` and
    ``cond`` (an absent one is no limit); scan outputs are stacked on a new first axis.
    """
    def run(body, trip, cond, *carried):
        limit = None if trip is None else int(scalar(trip))
        go = True if cond is None else bool(scalar(cond))
        if limit is None and cond is None:
            raise UnsupportedOp("a Loop with neither a trip count nor a condition (it never ends)")
        state, scans, i = list(carried), [], 0
        while go and (limit is None or i < limit):
            outs = body(torch.tensor(i, dtype=torch.int64), torch.tensor(go), state)
            go = bool(outs[0].reshape(-1)[0]) if isinstance(outs[0], torch.Tensor) else bool(scalar(outs[0]))
            state = list(outs[1:1 + len(state)])
            scans.append(outs[1 + len(state):])
            i += 1
        n_scan = ctx.n_outputs - len(state)
        stacked = [torch.stack([s[k] for s in scans]) if scans else torch.zeros(0) for k in range(n_scan)]
        return (*state, *stacked)

    return run


@register("SequenceEmpty")
def _sequence_empty(attrs, ctx):
    return lambda: []


@register("SequenceInsert")
def _sequence_insert(attrs, ctx):
    def f(seq, tensor, position=None):
        out = list(seq)  # sequences are values: never change the one that came in
        if position is None:
            out.append(tensor)
        else:
            p = int(scalar(position))
            out.insert(p + len(out) if p < 0 else p, tensor)
        return out

    return f


@register("ConcatFromSequence")
def _concat_from_sequence(attrs, ctx):
    axis, new_axis = attrs["axis"], attrs.get("new_axis", 0)
    return lambda seq: torch.stack(list(seq), dim=axis) if new_axis else torch.cat(list(seq), dim=axis)


@register("If")
def _if(attrs, ctx):
    """Which branch attribute an If takes, from its condition's value.

    Called at load time on a constant condition only: the interpreter then plans that branch's
    nodes in the If's place, so no data-dependent choice ever reaches a traced graph.
    """
    def choose(cond: torch.Tensor) -> str:
        if cond.numel() != 1:
            raise UnsupportedOp(f"a condition of {cond.numel()} elements (ONNX wants exactly one)")
        return "then_branch" if bool(cond.reshape(()).item()) else "else_branch"

    return choose


def _check_against_table() -> None:
    """The implementations and the op table name the same ops; anything else is a bug here."""
    missing = sorted(set(optable.TABLE) - set(OPS))
    stray = sorted(set(SHAPE_OPS) - set(OPS))
    if missing or stray:
        raise RuntimeError(f"fusekit/onnxio/ops.py is out of step with the op table: no implementation of "
                           f"{missing or 'none'}; host implementations of unlisted ops {stray or 'none'}")


_check_against_table()
