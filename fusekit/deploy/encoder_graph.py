"""The feature specification as an ONNX graph: raw columns in, the model's ``categorical`` and ``dense`` out.

The graph reproduces :meth:`fusekit.data.FeatureSpec.encode` exactly, in standard ONNX (opset 20:
StringSplit, StringConcat) and ``ai.onnx.ml`` LabelEncoder, which every onnxruntime build runs:

- every categorical column is a string tensor ``[batch]`` (integer codes too, as the CSV text);
- the three lookups of ``FeatureSpec.encode`` (exact; spaces normalised; integer written
  ``33.0``) are LabelEncoders over the tables of ``CategoricalFeature.tables`` (default: the
  unseen id 0), and the first lookup that finds the value wins. The exact lookup runs per
  column; the values it misses are gathered from all columns (Compress), keyed
  ``"<column index>\\x1f<value>"`` so that one LabelEncoder per lookup serves every column, and
  put back in place: clean data never pays for the normalisation, and the graph has
  about 100 nodes for Census's 32 columns (at batch 1 onnxruntime's cost is per node). StringSplit without a delimiter splits on runs of
  U+0020 and drops leading and trailing ones, which is ``normal_spaces`` once the pieces are
  joined by one space; the join is unrolled up to the most pieces a vocabulary entry has (a value
  with more pieces can match no entry and is unseen). A value is an integer written with a
  fraction when it splits on ``.`` into exactly two pieces and the second splits on ``0`` into
  empty pieces only;
- every dense column is a float32 tensor ``[batch]``; it is scaled in double precision and cast
  to float32, as ``encode`` does, so the result is bit-identical for every float32 input.

Tensor names made here start with ``fusekit.encode/`` and never contain a column's name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fusekit.data.features import FeatureSpec
from fusekit.errors import FusekitError
from fusekit.options import quote

OPSET = 20  # StringSplit and StringConcat
ML_OPSET = 3  # ai.onnx.ml: LabelEncoder-2 (keys_strings / values_int64s)
PREFIX = "fusekit.encode/"
SEPARATOR = "\x1f"  # between a column's index and its value in a lookup key
# A key no lookup can produce (every produced key starts with a digit): keeps a table non-empty.
_NEVER = SEPARATOR


@dataclass(frozen=True)
class RawInput:
    """One input of the raw-input graph: the column it feeds and how."""

    name: str  # the graph input's name
    column: str  # the spec's column
    kind: str  # "categorical" (string) or "dense" (float32)

    def to_dict(self) -> dict:
        """JSON-ready (the ``fusekit.raw_inputs`` metadata)."""
        return {"input": self.name, "column": self.column, "kind": self.kind}


def check_expressible(spec: FeatureSpec) -> None:
    """Refuse, naming the feature, what the graph cannot reproduce: duplicate columns, non-finite scaling."""
    seen: set[str] = set()
    for name in spec.columns:
        if name in seen:
            raise FusekitError(f"feature {quote(name)} appears twice in the feature specification; "
                               "one graph input per column cannot express it: re-export the model with unique columns")
        seen.add(name)
    for feature in spec.dense:
        if not (math.isfinite(feature.mean) and math.isfinite(feature.std)):
            raise FusekitError(f"dense feature {quote(feature.name)} has a non-finite mean or std "
                               f"({feature.mean}, {feature.std}); re-fit the feature specification")


class _Builder:
    """Nodes and initializers with names made from a counter under PREFIX."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{PREFIX}{hint}_{self.count}"

    def const(self, value, hint: str = "const") -> str:
        array = np.asarray(value)
        name = self.name(hint)
        if array.dtype.kind in "OUS":
            tensor = helper.make_tensor(name, TensorProto.STRING, array.shape,
                                        [str(v).encode("utf-8") for v in array.reshape(-1)])
        else:
            tensor = numpy_helper.from_array(array, name)
        self.initializers.append(tensor)
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, outputs: int = 1,
           domain: str = "", out: str | None = None, **attrs) -> str | list[str]:
        names = [out] if out else [self.name(hint or op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, domain=domain, **attrs))
        return names[0] if outputs == 1 else names


def _lookup(b: _Builder, keys: str, table: dict[str, int], hint: str) -> str:
    ordered = sorted(table.items()) or [(_NEVER, 0)]
    return b.op("LabelEncoder", [keys], hint, domain="ai.onnx.ml", keys_strings=[k for k, _ in ordered],
                values_int64s=[v for _, v in ordered], default_int64=0)


def _pad_pieces(b: _Builder, pieces: str, rows: str, width: int) -> str:
    """``pieces [M, k]`` padded with empty strings or cut to exactly ``width`` columns (``rows``: [M])."""
    shape = b.op("Concat", [rows, b.const(np.array([width], np.int64))], "pad_shape", axis=0)
    empty = b.op("Expand", [b.const(np.array("", dtype=object)), shape], "empty")
    wide = b.op("Concat", [pieces, empty], "padded", axis=1)
    return b.op("Slice", [wide, b.const(np.array([0], np.int64)), b.const(np.array([width], np.int64)),
                          b.const(np.array([1], np.int64))], "pieces")


def _piece(b: _Builder, pieces: str, k: int) -> str:
    return b.op("Gather", [pieces, b.const(np.array(k, np.int64))], "piece", axis=1)


def _normalised_ids(b: _Builder, values: str, prefixes: str, tables: list, keyed) -> str:
    """Ids of ``values [M]`` (with their columns' ``prefixes [M]``) by the space and integer lookups."""
    rows = b.op("Shape", [values], "rows")
    # Spaces: split on runs of U+0020, join the first `width` pieces with one space.
    width = max([len(form.split(" ")) for t in tables for form in t.spaced] + [1])
    pieces, count = b.op("StringSplit", [values], "spaces", outputs=2)
    pieces = _pad_pieces(b, pieces, rows, width)
    joined = _piece(b, pieces, 0)
    space = b.const(np.array(" ", dtype=object), "space")
    for k in range(1, width):
        longer = b.op("StringConcat", [b.op("StringConcat", [joined, space], "join"), _piece(b, pieces, k)], "join")
        present = b.op("Less", [b.const(np.array(k, np.int64)), count], "present")
        joined = b.op("Where", [present, longer, joined], "joined")
    fits = b.op("LessOrEqual", [count, b.const(np.array(width, np.int64))], "fits")
    zero = b.const(np.array(0, np.int64), "zero")
    spaced = _lookup(b, b.op("StringConcat", [prefixes, joined], "spaced_key"), keyed([t.spaced for t in tables]),
                     "spaced")
    spaced = b.op("Where", [fits, spaced, zero], "spaced")

    # Integers written with a fraction of zeros: "33.0" -> "33".
    parts, n_parts = b.op("StringSplit", [joined], "dot", outputs=2, delimiter=".")
    parts = _pad_pieces(b, parts, rows, 2)
    head, tail = _piece(b, parts, 0), _piece(b, parts, 1)
    digits, _ = b.op("StringSplit", [tail], "zeros", outputs=2, delimiter="0")
    not_empty = b.op("Cast", [b.op("Not", [b.op("Equal", [digits, b.const(np.array("", dtype=object))], "eq")])],
                     "nonempty", to=TensorProto.INT64)
    other = b.op("ReduceSum", [not_empty, b.const(np.array([-1], np.int64))], "other", keepdims=0)
    integer_form = b.op("And", [b.op("Equal", [n_parts, b.const(np.array(2, np.int64))], "one_dot"),
                                b.op("Equal", [other, zero], "only_zeros")], "integer_form")
    integer_form = b.op("And", [integer_form, fits], "integer_form")
    integer = _lookup(b, b.op("StringConcat", [prefixes, head], "integer_key"), keyed([t.integer for t in tables]),
                      "integer")
    integer = b.op("Where", [integer_form, integer, zero], "integer")
    return b.op("Where", [b.op("Greater", [spaced, zero], "found"), spaced, integer], "normalised")


def _categorical(b: _Builder, spec: FeatureSpec, names: list[str], out: str) -> None:
    tables = [f.tables for f in spec.categorical]
    width = len(names)

    def keyed(table: list[dict[str, int]]) -> dict[str, int]:
        return {f"{j}{SEPARATOR}{value}": index for j, t in enumerate(table) for value, index in t.items()}

    # The exact lookup runs per column; the columns' ids and values are then laid end to end
    # (column-major, [C * B]) so that the values it misses (none, in clean data) are picked out
    # with one Compress, looked up after normalising, and put back in place.
    zero = b.const(np.array(0, np.int64), "zero")
    exact = [_lookup(b, name, t.exact, "exact") for name, t in zip(names, tables)]

    def chain(items: list[str], hint: str) -> str:
        return b.op("Concat", items, hint, axis=0) if len(items) > 1 else items[0]

    flat_ids = chain(exact, "exact_ids")
    missed = b.op("Equal", [flat_ids, zero], "missed")
    values = b.op("Compress", [chain(names, "values"), missed], "missed_values", axis=0)
    batch = b.op("Shape", [names[0]], "batch")
    size = b.op("Shape", [flat_ids], "size")
    # Column of each element (position div B), then of each miss: its key prefix.
    positions = b.op("Range", [zero, b.op("Squeeze", [size], "size"), b.const(np.array(1, np.int64))], "positions")
    column = b.op("Div", [positions, b.op("Max", [batch, b.const(np.array([1], np.int64))], "batch")], "column")
    prefix = b.const(np.array([f"{j}{SEPARATOR}" for j in range(width)], dtype=object), "prefix")
    prefixes = b.op("Gather", [prefix, b.op("Compress", [column, missed], "missed_columns", axis=0)], "prefixes", axis=0)
    found = _normalised_ids(b, values, prefixes, tables, keyed)
    # Back in place without NonZero/ScatterND: the k-th miss (running count k) takes found[k - 1];
    # a found value takes 0 from the padded vector and keeps its exact id.
    misses = b.op("Cast", [missed], "misses", to=TensorProto.INT64)
    rank = b.op("Mul", [b.op("CumSum", [misses, zero], "rank"), misses], "rank")
    padded = b.op("Concat", [b.const(np.array([0], np.int64)), found], "padded", axis=0)
    ids = b.op("Add", [flat_ids, b.op("Gather", [padded, rank], "normalised_ids", axis=0)], "ids")
    by_column = b.op("Reshape", [ids, b.op("Concat", [b.const(np.array([width], np.int64)), batch], "cb", axis=0)],
                     "by_column")
    b.op("Transpose", [by_column], out=out, perm=[1, 0])


def _dense(b: _Builder, spec: FeatureSpec, names: list[str], out: str) -> None:
    columns = [b.op("Unsqueeze", [n, b.const(np.array([1], np.int64))], "column") for n in names]
    x = b.op("Concat", columns, "dense_raw", axis=1) if len(columns) > 1 else columns[0]
    mean = b.const(np.array([f.mean for f in spec.dense], np.float64), "mean")
    std = b.const(np.array([f.std if f.std > 0 else 1.0 for f in spec.dense], np.float64), "std")
    wide = b.op("Cast", [x], "double", to=TensorProto.DOUBLE)
    scaled = b.op("Div", [b.op("Sub", [wide, mean], "centred"), std], "scaled")
    b.op("Cast", [scaled], to=TensorProto.FLOAT, out=out)


def _empty(b: _Builder, like: str, dtype: int, out: str) -> None:
    """A ``[batch, 0]`` tensor (a spec without columns of one kind) shaped after input ``like``."""
    batch = b.op("Shape", [like], "batch", start=0, end=1)
    shape = b.op("Concat", [batch, b.const(np.array([0], np.int64))], "shape", axis=0)
    value = helper.make_tensor("value", dtype, [1], [0])
    b.op("ConstantOfShape", [shape], out=out, value=value)


def encoder_nodes(spec: FeatureSpec, inputs: list[RawInput], categorical: str = "categorical",
                  dense: str = "dense") -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers computing ``categorical`` and ``dense`` from the ``inputs`` (spec order)."""
    check_expressible(spec)
    b = _Builder()
    cat_inputs = [i.name for i in inputs if i.kind == "categorical"]
    dense_inputs = [i.name for i in inputs if i.kind == "dense"]
    if cat_inputs:
        _categorical(b, spec, cat_inputs, categorical)
    else:
        _empty(b, dense_inputs[0], TensorProto.INT64, categorical)
    if dense_inputs:
        _dense(b, spec, dense_inputs, dense)
    else:
        _empty(b, cat_inputs[0], TensorProto.FLOAT, dense)
    return b.nodes, b.initializers


def raw_value_infos(inputs: list[RawInput]) -> list[onnx.ValueInfoProto]:
    """The graph inputs: string ``[batch]`` per categorical column, float32 ``[batch]`` per dense one."""
    return [helper.make_tensor_value_info(i.name, TensorProto.STRING if i.kind == "categorical" else TensorProto.FLOAT,
                                          ["batch"]) for i in inputs]


def encoder_model(spec: FeatureSpec, inputs: list[RawInput] | None = None) -> onnx.ModelProto:
    """The encoder alone as a model (outputs ``categorical`` int64 ``[batch, C]``, ``dense`` float32
    ``[batch, D]``): what the raw-input export puts in front of a model, and what the tests compare
    with ``FeatureSpec.encode``."""
    inputs = inputs or default_inputs(spec, reserved=set())
    nodes, inits = encoder_nodes(spec, inputs)
    outputs = [helper.make_tensor_value_info("categorical", TensorProto.INT64, ["batch", len(spec.categorical)]),
               helper.make_tensor_value_info("dense", TensorProto.FLOAT, ["batch", len(spec.dense)])]
    graph = helper.make_graph(nodes, "fusekit_encoder", raw_value_infos(inputs), outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid("ai.onnx.ml", ML_OPSET)])
    model.ir_version = 10
    return model


def _legal(name: str) -> bool:
    # Any non-empty string is a valid ONNX name; control characters are refused because C APIs
    # and log lines of the serving side would cut or garble them.
    return bool(name) and not name.startswith(PREFIX) and not any(ord(c) < 32 or ord(c) == 127 for c in name)


def default_inputs(spec: FeatureSpec, reserved: set[str]) -> list[RawInput]:
    """One input per column, named as the column when that name is legal (non-empty, no control
    characters, not ``fusekit.encode/...``) and free (not in ``reserved``, e.g. the model's
    outputs); otherwise ``column_<k>`` (k: the column's position in the spec)."""
    taken = set(reserved)
    out = []
    kinds = ["categorical"] * len(spec.categorical) + ["dense"] * len(spec.dense)
    for k, (column, kind) in enumerate(zip(spec.columns, kinds)):
        name = column if _legal(column) and column not in taken else f"column_{k}"
        while name in taken:
            name = f"_{name}"
        taken.add(name)
        out.append(RawInput(name, column, kind))
    return out
