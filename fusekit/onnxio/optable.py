"""The op table: everything fusekit knows about an ONNX op, in one place, without torch.

One :class:`OpInfo` per op type of the default ONNX domain that fusekit's interpreter
(:mod:`fusekit.onnxio.ops`) implements, and no others: :mod:`fusekit.onnxio.ops` checks at
import that its implementations and this table name the same ops. Who reads what:

* the interpreter: ``static_inputs`` (inputs read as host values), ``min_opset`` and
  ``static_condition``;
* decompose (:mod:`fusekit.decompose.graph`, :mod:`~fusekit.decompose.layers`,
  :mod:`~fusekit.decompose.align`, :mod:`~fusekit.decompose.pipeline`): ``role``,
  ``weight_inputs`` and ``shape_only``, and :func:`unsupported_ops` to refuse, before cutting,
  a model that fuse could not load;
* fine-tuning and from-scratch training (:mod:`fusekit.fusion.finetune`): ``weight_inputs``
  and ``bias_add`` through :func:`weight_positions`.

Every op here is a deterministic function of its inputs. Random ops (RandomNormal, Bernoulli,
...) are deliberately absent, since a frozen component computes one fixed function; so any
op of the table may be evaluated ahead of time on constant inputs (:func:`foldable`).

Of the control-flow ops ``If`` and ``Loop`` are here. An If needs a condition known without
data: the interpreter picks the branch at load time and runs its nodes inline, which is what
keeps a fused model exportable (a traced graph has one path). :func:`unsupported_ops` reports
an If whose condition it cannot prove constant, except inside a Loop body: a Loop runs eagerly
as a python loop over its body (planned by the same interpreter), so there the branch is chosen
per iteration. This is what torch's exporters write for ``nn.EmbeddingBag`` with offsets (with
the sequence ops SequenceEmpty/SequenceInsert/ConcatFromSequence in the dynamo exporter's
version). A component with a Loop runs and trains in torch; traced again, its loop would unroll for
the traced batch, so fuse writes a component with a Loop that the data drive (:func:`data_loops`)
into fused.onnx as its own graph (:mod:`fusekit.onnxio.splice`).

The table is per op type. Limits on attribute values (MaxPool's Indices output, some Resize
modes, ...) stay with the implementations and are reported when a component is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Iterable, Literal, Mapping, get_args

import onnx

DEFAULT_DOMAINS = ("", "ai.onnx")

Role = Literal["primary", "norm", "alias", "reshape", "plain"]
ROLES: tuple[str, ...] = get_args(Role)


@dataclass(frozen=True)
class OpInfo:
    """What fusekit knows about one ONNX op.

    role: how decompose groups the op into layers.
        ``primary``: carries a layer's weights and starts a layer when (some of) its
        ``weight_inputs`` are constants (a Gather on a shape vector is no layer);
        ``norm``: a normalisation, joins the layer before it;
        ``alias``: passes its first input through unchanged at inference (Identity, Dropout),
        skipped by layer signatures;
        ``reshape``: changes only the shape of its data; chains of them count as one;
        ``plain``: anything else.
    weight_inputs: input positions holding learnable weights when they are constants: what
        fine-tuning makes trainable and training from scratch re-initialises. Required for
        ``primary`` ops; a ``norm`` op may list its scale and bias; no other role has any.
    scale_inputs, bias_inputs: the weight inputs that are scales (training from scratch
        restarts them at one) and biases (restarted at zero); the others are matrices or
        tables.
    static_inputs: input positions the interpreter reads as host values (shapes, axes, pads,
        ...) rather than tensors.
    bias_add: exporters may write this op's bias as a separate Add of a constant on its output
        (MatMul has no bias input; some exporters split Conv's); that constant is a weight too.
    shape_only: the output depends on the input's shape only, never its values (Shape,
        Size); what it computes is shape arithmetic, not data.
    min_opset: the oldest default-domain opset in which the implementation matches the ONNX
        definition of the op.
    static_condition: the op (If) runs only when its condition, input 0, is known without data
        (or inside a Loop body); the interpreter then plans the chosen branch in its place.
    loop_body: the op (Loop) runs its ``body`` graph repeatedly; the interpreter plans the
        body with the enclosing graph's values in scope and drives it.
    makes_sequence: the output is an ONNX sequence (a python list of tensors at run time),
        which is never folded into a constant.
    """

    role: Role = "plain"
    weight_inputs: tuple[int, ...] = ()
    static_inputs: frozenset[int] = frozenset()
    bias_add: bool = False
    shape_only: bool = False
    min_opset: int = 1
    static_condition: bool = False
    scale_inputs: tuple[int, ...] = ()
    bias_inputs: tuple[int, ...] = ()
    loop_body: bool = False
    makes_sequence: bool = False

    def __post_init__(self) -> None:
        # A malformed record is a programming error in this file: fail at import.
        if self.role not in ROLES:
            raise ValueError(f"unknown op role {self.role!r}")
        if self.role == "primary" and not self.weight_inputs:
            raise ValueError("a primary op needs weight_inputs")
        if self.weight_inputs and self.role not in ("primary", "norm"):
            raise ValueError("weight_inputs are given for primary and norm ops only")
        if not set(self.scale_inputs) | set(self.bias_inputs) <= set(self.weight_inputs):
            raise ValueError("scale_inputs and bias_inputs are weight_inputs")
        if self.bias_add and self.role != "primary":
            raise ValueError("only a primary op can take a separate bias Add")
        if set(self.weight_inputs) & self.static_inputs:
            raise ValueError("an input cannot be both a weight and a host value")


def _table(*groups: tuple[str, OpInfo]) -> Mapping[str, OpInfo]:
    """``(space-separated op types, their record)`` groups as a read-only mapping."""
    out: dict[str, OpInfo] = {}
    for names, info in groups:
        for name in names.split():
            if name in out:
                raise ValueError(f"op {name} is listed twice in the op table")
            out[name] = info
    return MappingProxyType(out)


def _static(*positions: int, **fields) -> OpInfo:
    return OpInfo(static_inputs=frozenset(positions), **fields)


_PLAIN = OpInfo()
_NORM = OpInfo("norm", weight_inputs=(1, 2), scale_inputs=(1,), bias_inputs=(2,))

TABLE: Mapping[str, OpInfo] = _table(
    # Layers' weight-carrying ops. Einsum: the two operands of a binary contraction.
    ("Gemm ConvTranspose", OpInfo("primary", weight_inputs=(1, 2), bias_inputs=(2,))),
    ("Conv", OpInfo("primary", weight_inputs=(1, 2), bias_inputs=(2,), bias_add=True)),
    ("MatMul", OpInfo("primary", weight_inputs=(0, 1), bias_add=True)),
    ("Einsum", OpInfo("primary", weight_inputs=(0, 1))),
    ("Gather", OpInfo("primary", weight_inputs=(0,))),
    # Recurrent layers: W, R, B (and LSTM's peepholes P); sequence_lens and initial states are data.
    ("GRU RNN", OpInfo("primary", weight_inputs=(1, 2, 3), bias_inputs=(3,))),
    ("LSTM", OpInfo("primary", weight_inputs=(1, 2, 3, 7), bias_inputs=(3, 7))),
    # Normalisations: scale and bias are weights (BatchNorm's running statistics are not).
    ("BatchNormalization LayerNormalization InstanceNormalization", _NORM),
    # GroupNormalization before opset 21: one scale per group, not per channel.
    ("GroupNormalization", OpInfo("norm", weight_inputs=(1, 2), scale_inputs=(1,), bias_inputs=(2,), min_opset=21)),
    ("LpNormalization", OpInfo("norm")),
    ("Identity", OpInfo("alias")),
    ("Dropout", _static(1, 2, role="alias")),
    ("Flatten", OpInfo("reshape")),
    ("Reshape Squeeze Unsqueeze", _static(1, role="reshape")),
    ("Shape Size", OpInfo(shape_only=True)),
    # elementwise
    ("Abs Neg Exp Log Sqrt Reciprocal Relu Sigmoid Tanh Erf Floor Ceil Round Sign Sin Cos Tan Asin Acos Atan "
     "Sinh Cosh Asinh Acosh Atanh Not Softsign IsNaN IsInf Mish Softplus BitwiseNot LeakyRelu Elu Celu Selu "
     "ThresholdedRelu HardSigmoid HardSwish PRelu Gelu", _PLAIN),
    ("Add Sub Mul Div Pow Mod Equal Less Greater LessOrEqual GreaterOrEqual And Or Xor BitwiseAnd BitwiseOr "
     "BitwiseXor Sum Mean Max Min Where Clip", _PLAIN),
    ("Softmax LogSoftmax", _PLAIN),
    ("Attention", OpInfo(min_opset=23)),  # scaled dot-product attention, as one op
    ("Hardmax", OpInfo(min_opset=13)),  # before 13 it coerced its input to 2-D
    # types and constants
    ("Cast CastLike Constant EyeLike", _PLAIN),
    ("ConstantOfShape", _static(0)),
    ("Range", _static(0, 1, 2)),
    # indexing and layout
    ("Transpose Concat GatherElements GatherND ScatterElements ScatterND NonZero DepthToSpace SpaceToDepth",
     _PLAIN),
    ("Split Expand Tile OneHot Trilu CumSum TopK", _static(1)),
    ("Slice", _static(1, 2, 3, 4)),
    ("Pad Resize", _static(1, 2, 3)),
    # reductions, pooling
    ("ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceSumSquare ReduceLogSum "
     "ReduceLogSumExp", _static(1)),
    ("ArgMax ArgMin MaxPool AveragePool GlobalAveragePool GlobalMaxPool", _PLAIN),
    # control flow: the branch is chosen at load time (per iteration inside a Loop)
    ("If", OpInfo(static_condition=True)),
    ("Loop", OpInfo(loop_body=True)),
    ("SequenceEmpty SequenceInsert", OpInfo(makes_sequence=True)),
    ("ConcatFromSequence", _PLAIN),
)

DATA_CONDITION = "If (condition computed from the data)"



def lookup(op_type: str, domain: str = "") -> OpInfo | None:
    """The op's record, or None for an op fusekit does not know (any op of another domain)."""
    if domain not in DEFAULT_DOMAINS:
        return None
    return TABLE.get(op_type)


def supported(op_type: str, domain: str = "", opset: int | None = None) -> bool:
    """Whether the interpreter runs the op (at ``opset``, when given)."""
    info = lookup(op_type, domain)
    return info is not None and (opset is None or opset >= info.min_opset)


def foldable(op_type: str, domain: str = "") -> bool:
    """Whether a node of this op may be evaluated ahead of time when all its inputs are constants.

    True for every op of the table (all deterministic); False for an op fusekit does not
    know, which may be random.
    """
    return lookup(op_type, domain) is not None


def is_shape_only(op_type: str, domain: str = "") -> bool:
    """Whether the op's output depends on its input's shape only (Shape, Size)."""
    info = lookup(op_type, domain)
    return info is not None and info.shape_only


def weight_ops() -> list[str]:
    """The op types that carry layer weights, sorted."""
    return sorted(name for name, info in TABLE.items() if info.weight_inputs)


def weight_positions(node: onnx.NodeProto, producers: Mapping[str, onnx.NodeProto]) -> tuple[int, ...]:
    """Input positions of ``node`` that hold a layer weight when they are constants.

    A primary op's own ``weight_inputs``; for an Add, the side opposite the output of a
    ``bias_add`` op (its separately exported bias). ``producers`` maps tensor names to the
    nodes that produce them.
    """
    info = lookup(node.op_type, node.domain)
    if info is None:
        return ()
    if info.weight_inputs:
        return info.weight_inputs
    if node.op_type != "Add" or len(node.input) != 2:
        return ()
    positions = []
    for pos in (0, 1):
        src = producers.get(node.input[1 - pos])
        src_info = lookup(src.op_type, src.domain) if src is not None else None
        if src_info is not None and src_info.bias_add:
            positions.append(pos)
    return tuple(positions)


def default_opset(model: onnx.ModelProto) -> int:
    """The model's default-domain opset (0 when it imports none)."""
    return next((o.version for o in model.opset_import if o.domain in DEFAULT_DOMAINS), 0)


def unsupported_ops(source: onnx.ModelProto | onnx.GraphProto | Iterable[onnx.NodeProto],
                    opset: int | None = None) -> list[str]:
    """Sorted op types that ``source`` uses and the interpreter cannot run.

    Ops of other domains are named ``domain::Op``; an If whose condition is not provably a
    constant is named :data:`DATA_CONDITION` (inside a Loop body any condition is fine). Subgraphs (If/Loop/Scan bodies) and the bodies of
    a model's local functions (which the interpreter inlines) are searched too.
    ``opset`` defaults to a model's own; without one, ops are not checked against ``min_opset``.
    """
    functions: dict[tuple[str, str], onnx.FunctionProto] = {}
    consts: set[str] = set()
    if isinstance(source, onnx.ModelProto):
        opset = default_opset(source) if opset is None else opset
        functions = {(f.domain, f.name): f for f in source.functions}
        nodes: Iterable[onnx.NodeProto] = source.graph.node
        consts = {t.name for t in source.graph.initializer}
    elif isinstance(source, onnx.GraphProto):
        nodes = source.node
        consts = {t.name for t in source.initializer}
    else:
        nodes = source
    found: set[str] = set()
    _collect(list(nodes), functions, opset, found, set(), consts)
    return sorted(found)


def data_loops(model: onnx.ModelProto) -> list[str]:
    """The Loop nodes of ``model``'s graph whose trip count (or start condition) is not a constant,
    by name: the interpreter runs them (torch's exporters write ``nn.EmbeddingBag`` so, one iteration
    per bag), but a traced export would fix their number of iterations to the traced batch's."""
    consts = _constants(list(model.graph.node), {}, {t.name for t in model.graph.initializer})
    found = []
    for node in model.graph.node:
        info = lookup(node.op_type, node.domain)
        if info is None or not info.loop_body:
            continue
        given = [n for n in node.input[:2] if n]
        if not given or any(n not in consts for n in given) or _body_decides(node):
            found.append(node.name or node.output[0])
    return found


def _body_decides(loop: onnx.NodeProto) -> bool:
    """Whether a Loop's body computes its own continue-condition (rather than passing on the one
    it got, or a constant): then the data decide how often it runs."""
    body = next((a.g for a in loop.attribute if a.name == "body"), None)
    if body is None or len(body.input) < 2 or not body.output:
        return False
    cond_in, cond_out = body.input[1].name, body.output[0].name
    passed = {cond_in} | {n.output[0] for n in body.node if n.op_type == "Identity" and list(n.input) == [cond_in]}
    return cond_out not in passed | _constants(list(body.node), {}, {t.name for t in body.initializer})


def _collect(nodes: list[onnx.NodeProto], functions: dict, opset: int | None, found: set[str],
             expanded: set[tuple[str, str]], consts: set[str], in_loop: bool = False) -> None:
    folded: set[str] | None = None  # computed on the first If: most graphs have none, and it costs a pass
    for node in nodes:
        key = (node.domain, node.op_type)
        if key in functions:
            if key not in expanded:  # a function calling itself would recurse forever
                expanded.add(key)
                _collect(list(functions[key].node), functions, opset, found, expanded, set(), in_loop)
            continue
        info = lookup(node.op_type, node.domain)
        if not supported(node.op_type, node.domain, opset):
            found.add(node.op_type if node.domain in DEFAULT_DOMAINS else f"{node.domain}::{node.op_type}")
        elif info.static_condition and not in_loop:
            folded = _constants(nodes, functions, consts) if folded is None else folded
            if not node.input or node.input[0] not in folded:
                found.add(DATA_CONDITION)
        subs = subgraphs(node)
        if subs:
            folded = _constants(nodes, functions, consts) if folded is None else folded
            for sub in subs:
                _collect(list(sub.node), functions, opset, found, expanded, folded | {t.name for t in sub.initializer},
                         in_loop or (info is not None and info.loop_body))


def _constants(nodes: list[onnx.NodeProto], functions: dict, known: set[str]) -> set[str]:
    """``known`` and the outputs of nodes fed only by constants: what the interpreter folds.

    Deliberately narrower than the interpreter: outputs of subgraph ops and function calls never
    count, so whatever is taken for a constant here really folds at load time.
    """
    consts = set(known)
    grew = True
    while grew:  # repeated so an unsorted graph is not wrongly refused
        grew = False
        for node in nodes:
            if (node.domain, node.op_type) in functions or subgraphs(node) or not foldable(node.op_type, node.domain):
                continue
            outs = [o for o in node.output if o and o not in consts]
            if outs and all(not n or n in consts for n in node.input):
                consts.update(outs)
                grew = True
    return consts


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs a node carries in its attributes (If branches, Loop and Scan bodies)."""
    subs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            subs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            subs.extend(attr.graphs)
    return subs


def outer_names(graph: onnx.GraphProto) -> list[str]:
    """Names a subgraph reads from enclosing scopes (implicit inputs of If/Loop/Scan), in order.

    A subgraph output may name an outer value directly, so outputs count as reads too.
    """
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    used: list[str] = []

    def read(name: str) -> None:
        if name and name not in defined and name not in used:
            used.append(name)

    for node in graph.node:
        for name in node.input:
            read(name)
        for sub in subgraphs(node):
            for name in outer_names(sub):
                read(name)
        defined.update(o for o in node.output if o)
    for out in graph.output:
        read(out.name)
    return used


def describe(ops: Iterable[str]) -> str:
    """``unsupported_ops`` output as text; ops fusekit runs from a newer opset say which."""
    return ", ".join(f"{op} (before opset {TABLE[op].min_opset})" if op in TABLE else op for op in ops)
