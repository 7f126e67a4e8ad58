"""ONNX components as frozen torch modules, checked against onnxruntime on real exported models."""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from torch import nn

from fusekit.onnxio.interpreter import FrozenComponent, load_component
from fusekit.errors import FusekitError
from tests import onnx_fixtures as fx

TOL = 1e-5
CARDS = (5, 7, 3)


class GeluResidualMLP(nn.Module):
    """Residual blocks x + W2 gelu_tanh(W1 LN(x)), then LayerNorm and a linear output."""

    def __init__(self, n_in: int = 8, width: int = 16, hidden: int = 32, blocks: int = 2):
        super().__init__()
        self.stem = nn.Linear(n_in, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(blocks))
        self.fc1 = nn.ModuleList(nn.Linear(width, hidden) for _ in range(blocks))
        self.fc2 = nn.ModuleList(nn.Linear(hidden, width) for _ in range(blocks))
        self.final = nn.LayerNorm(width)
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for norm, fc1, fc2 in zip(self.norms, self.fc1, self.fc2):
            h = h + fc2(nn.functional.gelu(fc1(norm(h)), approximate="tanh"))
        return self.out(self.final(h))


class PooledCNN(nn.Module):
    """BatchNorm2d, Conv2d/BatchNorm2d/ReLU/MaxPool blocks, global average pooling, linear output."""

    def __init__(self):
        super().__init__()
        # The leading BatchNorm2d (input normalisation) is not folded into a Conv by the exporters.
        self.features = nn.Sequential(
            nn.BatchNorm2d(3), nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, stride=1, padding=1, groups=2), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Dropout(0.3),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.pool(self.features(x)).flatten(1))


def _cnn() -> PooledCNN:
    torch.manual_seed(3)
    model = PooledCNN()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _resmlp() -> GeluResidualMLP:
    torch.manual_seed(2)
    return GeluResidualMLP().eval()


def _mlp_inputs(batch: int, seed: int) -> list[np.ndarray]:
    cat, dense = fx.embedding_mlp_inputs(CARDS, 4, batch=batch, seed=seed)
    return [cat.numpy(), dense.numpy()]


def _float_inputs(*shape: int) -> Callable[[int, int], list[np.ndarray]]:
    return lambda batch, seed: [np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)]


# name -> (builder, example inputs(batch, seed), input names, output names, index of a float input)
MODELS: dict[str, tuple] = {
    "mlp": (lambda: fx.embedding_mlp(CARDS, 4, (16, 8), batchnorm=True), _mlp_inputs,
            ["categorical", "dense"], ["income"], 1),
    "resmlp": (_resmlp, _float_inputs(8), ["x"], ["y"], 0),
    "cnn": (_cnn, _float_inputs(3, 8, 8), ["image"], ["logits"], 0),
    "transformer": (lambda: fx.small_transformer(), _float_inputs(5, 6), ["x"], ["y"], 0),
}
CASES = [(name, dynamo) for name in MODELS for dynamo in (True, False)]


def _ids(case: tuple) -> str:
    return f"{case[0]}-{'dynamo' if case[1] else 'legacy'}"


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> Callable[[str, bool], Path]:
    """Export each fixture model once per session, on first use (a dynamo export takes seconds)."""
    root = tmp_path_factory.mktemp("components")
    cache: dict[tuple[str, bool], Path] = {}

    def get(name: str, dynamo: bool) -> Path:
        if (name, dynamo) not in cache:
            build, make_inputs, inputs, outputs, _ = MODELS[name]
            args = tuple(torch.from_numpy(a) for a in make_inputs(3, 0))
            path = root / f"{name}_{'dynamo' if dynamo else 'legacy'}.onnx"
            cache[(name, dynamo)] = fx.export(build(), args, path, dynamo, inputs, outputs)
        return cache[(name, dynamo)]

    return get


def _ort(path: Path, feeds: list[np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), feeds)})


def _torch(module: nn.Module, feeds: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*[torch.from_numpy(a) for a in feeds])
    return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]


def _assert_close(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert np.abs(g - w).max() <= TOL


@pytest.mark.parametrize("case", CASES, ids=_ids)
@pytest.mark.parametrize("batch", [1, 13])
def test_matches_onnxruntime(exported, case, batch):
    name, dynamo = case
    path = exported(name, dynamo)
    comp = load_component(path)
    assert comp.input_names == MODELS[name][2] and comp.output_names == MODELS[name][3]
    feeds = MODELS[name][1](batch, seed=batch)
    _assert_close(_torch(comp, feeds), _ort(path, feeds))


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_weights_are_buffers_not_parameters(exported, case):
    path = exported(*case)
    comp = load_component(path)
    assert list(comp.parameters()) == []
    n_weights = sum(t.size for t in (onnx.numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer))
    # Every weight of the file lives in a buffer (folding may add a few derived constants).
    assert sum(b.numel() for b in comp.buffers()) >= 0.9 * n_weights
    assert all(not b.requires_grad for b in comp.buffers())


@pytest.mark.parametrize("case", [("mlp", False), ("cnn", False), ("cnn", True)], ids=_ids)
def test_train_mode_keeps_batchnorm_statistics_and_outputs(exported, case):
    path = exported(*case)
    if case[1] is False:  # the legacy exporter keeps BatchNormalization nodes: the case that matters
        assert "BatchNormalization" in {n.op_type for n in onnx.load(str(path)).graph.node}
    parent = nn.ModuleDict({"comp": load_component(path), "head": nn.Linear(1, 1)})
    feeds = MODELS[case[0]][1](16, seed=5)
    expected = _ort(path, feeds)
    before = {k: v.clone() for k, v in parent["comp"].named_buffers()}
    parent.train()
    assert parent["comp"].training is False
    for _ in range(2):
        _assert_close(_torch(parent["comp"], feeds), expected)
    for k, v in parent["comp"].named_buffers():
        assert torch.equal(v, before[k]), k


def _input_grad(module: nn.Module, feeds: list[np.ndarray], k: int) -> torch.Tensor:
    xs = [torch.from_numpy(a.copy()) for a in feeds]
    xs[k].requires_grad_(True)
    module(*xs).float().pow(2).sum().backward()
    return xs[k].grad


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_gradients_reach_inputs_and_match_the_source_model(exported, case):
    name = case[0]
    comp = load_component(exported(*case)).train()
    feeds, k = MODELS[name][1](6, seed=1), MODELS[name][4]
    grad = _input_grad(comp, feeds, k)
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    expected = _input_grad(MODELS[name][0](), feeds, k)  # the torch model the file was exported from
    assert torch.allclose(grad, expected, atol=1e-5, rtol=1e-4)


class _Both(nn.Module):
    """A parent module holding the dynamo- and legacy-exported component of one model."""

    def __init__(self, a: FrozenComponent, b: FrozenComponent):
        super().__init__()
        self.a, self.b = a, b
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, *xs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.a(*xs) * self.scale, self.b(*xs)


@pytest.mark.parametrize("name", list(MODELS))
def test_reexport_with_dynamic_batch_matches_onnxruntime(exported, tmp_path, name):
    dyn_path, legacy_path = exported(name, True), exported(name, False)
    parent = _Both(load_component(dyn_path), load_component(legacy_path)).eval()
    _, make_inputs, input_names, _, _ = MODELS[name]
    args = tuple(torch.from_numpy(a) for a in make_inputs(4, 0))
    batch = torch.export.Dim("batch", min=1)
    out = tmp_path / "parent.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(parent, args, str(out), dynamo=True, input_names=input_names,
                          dynamic_shapes=(tuple({0: batch} for _ in args),), verbose=False)
    onnx.checker.check_model(str(out))
    for b in (1, 7):
        feeds = make_inputs(b, 10 + b)
        got = _ort(out, feeds)
        _assert_close([got[0]], _ort(dyn_path, feeds))
        _assert_close([got[1]], _ort(legacy_path, feeds))


def _middle_output(op: str) -> Callable[[onnx.GraphProto], str]:
    def cut(graph: onnx.GraphProto) -> str:
        nodes = [n for n in graph.node if n.op_type == op]
        return nodes[len(nodes) // 2].output[0]

    return cut


# Tensors every later node depends on only through them (single-tensor cuts, as decompose makes).
_CUTS = {
    "mlp": _middle_output("Relu"),
    "cnn": _middle_output("Relu"),
    "resmlp": lambda g: [n for n in g.node if n.op_type == "LayerNormalization"][1].input[0],
    "transformer": _middle_output("Add"),
}


@pytest.mark.parametrize("case", [("mlp", False), ("cnn", True), ("resmlp", False), ("transformer", True)], ids=_ids)
def test_cut_pieces_match_and_chain(exported, tmp_path, case):
    """Two pieces cut at an intermediate tensor: each matches onnxruntime, chained they give the model."""
    path = exported(*case)
    model = onnx.load(str(path))
    mid = _CUTS[case[0]](model.graph)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    first, second = tmp_path / "first.onnx", tmp_path / "second.onnx"
    onnx.utils.extract_model(str(path), str(first), inputs, [mid])
    onnx.utils.extract_model(str(path), str(second), [mid], outputs)
    c1, c2 = load_component(first), load_component(second)
    assert c2.input_names == [mid]
    for batch in (2, 9):
        feeds = MODELS[case[0]][1](batch, seed=batch)
        h = _torch(c1, feeds)
        _assert_close(h, _ort(first, feeds))
        _assert_close(_torch(c2, h), _ort(second, h))
        _assert_close(_torch(c2, h), _ort(path, feeds))


def _single_node_model(path: Path, node: onnx.NodeProto, extra_opsets: tuple = ()) -> Path:
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 4]) for n in node.input],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in node.output],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), *extra_opsets])
    onnx.save(model, str(path))
    return path


def test_unsupported_op_names_op_and_file(tmp_path):
    node = helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["selected"])
    path = _single_node_model(tmp_path / "nms_component.onnx", node)
    with pytest.raises(FusekitError) as err:
        load_component(path)
    assert "NonMaxSuppression" in str(err.value) and "nms_component.onnx" in str(err.value)


def test_custom_domain_op_is_refused(tmp_path):
    node = helper.make_node("FusedGelu", ["x"], ["y"], domain="com.example")
    path = _single_node_model(tmp_path / "custom.onnx", node, (helper.make_opsetid("com.example", 1),))
    with pytest.raises(FusekitError, match=r"FusedGelu.*com\.example") as err:
        load_component(path)
    assert "custom.onnx" in str(err.value)


def test_unsupported_attribute_is_refused_at_load(tmp_path):
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("idx", TensorProto.INT64, None)])
    path = tmp_path / "pool.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(FusekitError, match="MaxPool.*Indices"):
        load_component(path)


def test_dropout_is_identity_even_in_train_mode(tmp_path):
    """ONNX Dropout with training_mode=True would drop activations in onnxruntime; a frozen component never does."""
    ratio = helper.make_tensor("ratio", TensorProto.FLOAT, [], [0.5])
    mode = helper.make_tensor("mode", TensorProto.BOOL, [], [True])
    node = helper.make_node("Dropout", ["x", "ratio", "mode"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [ratio, mode])
    path = tmp_path / "dropout.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    comp = load_component(path).train()
    x = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))
    assert torch.equal(comp(x), x)


def test_missing_or_damaged_file(tmp_path):
    with pytest.raises(FusekitError, match="does not exist"):
        load_component(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf \xff\xfe")
    with pytest.raises(FusekitError, match="bad.onnx"):
        load_component(bad)


def test_wrong_number_of_inputs(exported):
    comp = load_component(exported("mlp", False))
    with pytest.raises(FusekitError, match="expected 2 inputs"):
        comp(torch.zeros(2, 3, dtype=torch.int64))


def test_state_dict_leaves_out_the_frozen_weights(exported):
    """The weights come from the ONNX file, so checkpoints of a parent module stay small."""
    parent = nn.ModuleDict({"comp": load_component(exported("mlp", False)), "head": nn.Linear(2, 1)})
    assert set(parent.state_dict()) == {"head.weight", "head.bias"}


def test_model_local_functions_are_inlined(tmp_path):
    """The legacy exporter can wrap modules as ONNX functions (a custom domain); they run inlined."""
    path = tmp_path / "functions.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_resmlp(), (torch.zeros(3, 8),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
                          export_modules_as_functions={nn.LayerNorm}, opset_version=17)
    model = onnx.load(str(path))
    assert model.functions and any(n.domain not in ("", "ai.onnx") for n in model.graph.node)
    feeds = MODELS["resmlp"][1](6, seed=4)
    _assert_close(_torch(load_component(path), feeds), _ort(path, feeds))


# ------------------------------------------------------------------ If with a condition known at load time

def _vi(name: str, dtype: int = TensorProto.FLOAT, shape=(None, 4)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape) if shape is not None else None)


def _init(name: str, array) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(array), name)


def _condition(kind: str, value: bool, name: str = "cond") -> tuple[list, list]:
    """Nodes and initializers that define ``name``: a boolean known without data, or computed from x."""
    if kind == "initializer":
        return [], [_init(name, np.array(value))]
    if kind == "constant":
        return [helper.make_node("Constant", [], [name], value=_init("v", np.array(value)))], []
    if kind == "folded":  # ReduceSum and Greater on initializers: constant folding decides
        k = _init(f"{name}_k", np.full(3, 1.0 if value else -1.0, np.float32))
        zero = _init(f"{name}_zero", np.array(0, np.float32))
        return [helper.make_node("ReduceSum", [k.name], [f"{name}_s"], keepdims=0),
                helper.make_node("Greater", [f"{name}_s", zero.name], [name])], [k, zero]
    if kind == "data":
        zero = _init(f"{name}_zero", np.array(0, np.float32))
        return [helper.make_node("ReduceSum", ["x"], [f"{name}_s"], keepdims=0),
                helper.make_node("Greater", [f"{name}_s", zero.name], [name])], [zero]
    assert kind == "shape"  # Size(x) > 8: host arithmetic on the input's shape, known only at run time
    eight = _init(f"{name}_eight", np.array(8, np.int64))
    return [helper.make_node("Size", ["x"], [f"{name}_n"]),
            helper.make_node("Greater", [f"{name}_n", eight.name], [name])], [eight]


def _if_model(path: Path, kind: str, value: bool, inner: bool | None = None) -> Path:
    """``a = x * w``; ``y = 2 * If(cond, Relu(a + t), a - x * s)`` with ``t`` and ``s`` initializers
    of their branches; with ``inner``, the then branch adds ``If(cond2, a * u + x, Abs(a))`` to ``a + t``."""
    rng = np.random.default_rng(0)
    cond_nodes, inits = _condition(kind, value)
    then_nodes = [helper.make_node("Add", ["a", "t"], ["at"]), helper.make_node("Relu", ["at"], ["then_out"])]
    if inner is not None:
        inner_then = helper.make_graph(
            [helper.make_node("Mul", ["a", "u"], ["au"]), helper.make_node("Add", ["au", "x"], ["in_then"])],
            "inner_then", [], [_vi("in_then")], [_init("u", rng.normal(size=4).astype(np.float32))])
        inner_else = helper.make_graph([helper.make_node("Abs", ["a"], ["in_else"])], "inner_else", [],
                                       [_vi("in_else")])
        cond2_nodes, cond2_inits = _condition("initializer", inner, "cond2")
        inits += cond2_inits
        then_nodes = [*cond2_nodes, helper.make_node("If", ["cond2"], ["nested"], then_branch=inner_then,
                                                     else_branch=inner_else),
                      helper.make_node("Add", ["a", "t"], ["at"]), helper.make_node("Add", ["at", "nested"], ["sum"]),
                      helper.make_node("Relu", ["sum"], ["then_out"])]
    then_g = helper.make_graph(then_nodes, "then", [], [_vi("then_out")],
                               [_init("t", rng.normal(size=4).astype(np.float32))])
    else_g = helper.make_graph([helper.make_node("Mul", ["x", "s"], ["xs"]),
                                helper.make_node("Sub", ["a", "xs"], ["else_out"])], "else", [], [_vi("else_out")],
                               [_init("s", rng.normal(size=4).astype(np.float32))])
    nodes = [helper.make_node("Mul", ["x", "w"], ["a"]), *cond_nodes,
             helper.make_node("If", ["cond"], ["f"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Mul", ["f", "two"], ["y"])]
    inits += [_init("w", rng.normal(size=4).astype(np.float32)), _init("two", np.array(2, np.float32))]
    model = helper.make_model(helper.make_graph(nodes, "g", [_vi("x")], [_vi("y")], inits),
                              opset_imports=[helper.make_opsetid("", 18)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _ort_matches(path: Path, module: nn.Module, tol: float = 1e-6) -> None:
    x = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    (got,), (want,) = _torch(module, [x]), _ort(path, [x])
    assert got.shape == want.shape and np.abs(got - want).max() <= tol


@pytest.mark.parametrize("kind", ["initializer", "constant", "folded"])
@pytest.mark.parametrize("value", [True, False])
def test_if_with_a_constant_condition_runs_the_chosen_branch_inline(tmp_path, kind, value):
    path = _if_model(tmp_path / "if.onnx", kind, value)
    component = load_component(path)
    _ort_matches(path, component)
    # Mul, the chosen branch's two steps, Mul: the other branch is neither planned nor run.
    assert component.extra_repr().endswith("steps=4")


@pytest.mark.parametrize("value,inner", [(True, True), (True, False), (False, True)])
def test_nested_ifs_with_constant_conditions(tmp_path, value, inner):
    path = _if_model(tmp_path / "nested.onnx", "initializer", value, inner)
    _ort_matches(path, load_component(path))


@pytest.mark.parametrize("kind", ["data", "shape"])
def test_an_if_whose_condition_depends_on_the_data_is_refused_at_load(tmp_path, kind):
    path = _if_model(tmp_path / "data_if.onnx", kind, True)
    assert ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.ones((2, 4), np.float32)})[0].shape == (2, 4)
    with pytest.raises(FusekitError) as err:
        load_component(path)
    message = str(err.value)
    assert "\n" not in message and "data_if.onnx" in message and "op If" in message
    assert "condition depends on the data" in message and "static branch" in message
