"""fusekit.fusion.finetune: the layer weights fine-tuning and from-scratch training make trainable."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from fusekit.fusion.finetune import TrainableComponent, deployable_copy, reinitialised_copy, trainable_copy
from fusekit.onnxio.interpreter import load_component
from tests.fusion_pool import TASKS


def _files(parts: Path, name: str) -> list[Path]:
    entry = next(m for m in json.loads((parts / "manifest.json").read_text())["models"] if m["name"] == name)
    return [parts / c for c in entry["components"]] + [parts / entry["head"]]


def test_the_pool_models_trained_parameters_are_exactly_the_weights_found(pool):
    spec = pool["ds"].spec
    n_in = len(spec.cardinalities) * 3 + len(spec.dense)
    # tests/fusion_pool.SingleTask: an embedding table, Linear(n_in, 16), Linear(16, 8), Linear(8, 1).
    expected = sorted([(3, sum(spec.cardinalities)), (16, n_in), (16,), (8, 16), (8,), (1, 8), (1,)])
    for name in sum(TASKS.values(), []):  # income_a comes from the dynamo exporter, the others from TorchScript
        shapes = []
        for path in _files(pool["parts"], name):
            copy = trainable_copy(load_component(path), str(path))
            shapes += [tuple(sorted(w.shape)) for w in copy.weights]
        assert sorted(shapes) == expected, name


def test_from_scratch_re_initialises_the_same_weights(pool):
    shapes = {}
    for path in _files(pool["parts"], "income_b"):
        component = load_component(path)
        trained, fresh = trainable_copy(component, str(path)), reinitialised_copy(component, str(path), seed=0)
        assert fresh.names == trained.names
        assert not any(torch.equal(a, b) for a, b in zip(trained.weights, fresh.weights))
        shapes.update({tuple(w.shape): w.detach() for w in fresh.weights})
    table = shapes[(sum(pool["ds"].spec.cardinalities), 3)]
    assert 0 < table.std() < 1e-3  # embeddings restart small
    biases = [w for shape, w in shapes.items() if len(shape) == 1]
    assert len(biases) == 3 and all(torch.count_nonzero(b) == 0 for b in biases)


def _matmul_block(path: Path) -> Path:
    """x @ W + b -> Relu -> + c -> Einsum with V: W, b and V are weights; c (after Relu) is not."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
             for name, shape in (("W", (4, 5)), ("b", (5,)), ("c", (5,)), ("V", (5, 3)))]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Add", ["b", "h"], ["z"]),
             helper.make_node("Relu", ["z"], ["r"]), helper.make_node("Add", ["r", "c"], ["s"]),
             helper.make_node("Einsum", ["s", "V"], ["y"], equation="bi,ij->bj")]
    graph = helper.make_graph(nodes, "block", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_a_separate_bias_add_and_an_einsum_weight_are_found_but_not_a_later_constant(tmp_path):
    path = _matmul_block(tmp_path / "block.onnx")
    component = load_component(path)
    copy = trainable_copy(component, str(path))
    assert isinstance(copy, TrainableComponent)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    found = [w.detach().numpy() for w in copy.weights]
    assert len(found) == 3 and not any(np.array_equal(w, inits["c"]) for w in found)
    for name in ("W", "b", "V"):
        assert any(np.array_equal(w, inits[name]) for w in found), name
    x = torch.randn(6, 4)
    with torch.no_grad():
        assert torch.allclose(copy(x), component(x))
        copy.weights[0].add_(1.0)
        frozen = deployable_copy(torch.nn.Sequential(copy))[0]
    assert not isinstance(frozen, TrainableComponent) and list(frozen.parameters()) == []
    assert torch.allclose(frozen(x), copy(x))
