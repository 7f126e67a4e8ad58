"""fusekit.layers: grouping into layers and structural signatures that exporters cannot fool."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper, numpy_helper

from fusekit.decompose.align import analyse
from fusekit.decompose.graph import load_graph
from fusekit.decompose.layers import layer_graph, same_structure
from tests import onnx_fixtures as F


def _signatures(path: Path) -> list[str]:
    return [layer.signature for layer in analyse(load_graph(path)).layers]


@pytest.fixture(scope="session")
def mlps(tmp_path_factory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("layers")
    args = F.embedding_mlp_inputs()
    out = {}
    for dyn in (True, False):
        tag = "dyn" if dyn else "legacy"
        out[f"a_{tag}"] = F.export(F.embedding_mlp(widths=(16, 8), seed=0), args, root / f"a_{tag}.onnx", dyn,
                                   ["categorical", "dense"], ["p"])
        out[f"b_{tag}"] = F.export(F.embedding_mlp(widths=(16, 8), seed=7), args, root / f"b_{tag}.onnx", dyn,
                                   ["categorical", "dense"], ["p"])
    out["wide"] = F.export(F.embedding_mlp(widths=(16, 12), seed=0), args, root / "wide.onnx", False,
                           ["categorical", "dense"], ["p"])
    return out


def _run(path: Path) -> np.ndarray:
    cat, dense = F.embedding_mlp_inputs(batch=5, seed=3)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {"categorical": cat.numpy(), "dense": dense.numpy()})[0]


def test_layers_of_an_embedding_mlp(mlps):
    layers = analyse(load_graph(mlps["a_dyn"])).layers
    assert [layer.kind for layer in layers] == ["Add+Embedding+Reshape+Concat", "Linear+Relu", "Linear+Relu",
                                                "Linear+Sigmoid+Reshape"]
    assert [layer.shape for layer in layers[:3]] == [("batch", 16), ("batch", 16), ("batch", 8)]
    assert [layer.cuttable for layer in layers] == [True, True, True, False]  # the output layer is the head


def test_same_architecture_other_weights_same_signature(mlps):
    for tag in ("dyn", "legacy"):
        assert _signatures(mlps[f"a_{tag}"]) == _signatures(mlps[f"b_{tag}"])
    wide, narrow = _signatures(mlps["wide"]), _signatures(mlps["a_legacy"])
    assert wide[:2] == narrow[:2] and wide[2] != narrow[2]  # 16->12 is not 16->8


def test_renamed_initializers_and_inserted_identities(mlps, tmp_path):
    model = onnx.load(str(mlps["a_dyn"]))
    rename = {t.name: f"w{k}_{t.name[::-1]}" for k, t in enumerate(model.graph.initializer)}
    for t in model.graph.initializer:
        t.name = rename[t.name]
    nodes = []
    for node in model.graph.node:
        for k, name in enumerate(node.input):
            if name in rename:
                alias = rename[name] + "_alias"
                nodes.append(helper.make_node("Identity", [rename[name]], [alias]))
                node.input[k] = alias
        if node.op_type == "Relu":  # an Identity on the data path too
            out = node.output[0]
            node.output[0] = out + "_pre"
            nodes += [node, helper.make_node("Identity", [out + "_pre"], [out])]
            continue
        nodes.append(node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    path = tmp_path / "renamed.onnx"
    onnx.save(model, str(path))
    np.testing.assert_allclose(_run(path), _run(mlps["a_dyn"]), atol=1e-6)
    assert _signatures(path) == _signatures(mlps["a_dyn"])


def test_gemm_and_matmul_add_have_the_same_signature(mlps, tmp_path):
    model = onnx.load(str(mlps["a_dyn"]))
    inits = {t.name: t for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type != "Gemm":
            nodes.append(node)
            continue
        w = numpy_helper.to_array(inits[node.input[1]])
        wt = numpy_helper.from_array(np.ascontiguousarray(w.T), node.input[1] + "_t")
        model.graph.initializer.append(wt)
        mm = node.output[0] + "_mm"
        nodes.append(helper.make_node("MatMul", [node.input[0], wt.name], [mm]))
        nodes.append(helper.make_node("Add", [node.input[2], mm], [node.output[0]]))  # bias first, like torch
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    path = tmp_path / "matmul.onnx"
    onnx.save(model, str(path))
    assert "Gemm" not in {n.op_type for n in onnx.load(str(path)).graph.node}
    np.testing.assert_allclose(_run(path), _run(mlps["a_dyn"]), atol=1e-5)
    assert _signatures(path) == _signatures(mlps["a_dyn"])


def test_legacy_shared_weights_become_identities_but_blocks_still_match(tmp_path):
    # LayerNorm weights are all ones at init: the legacy exporter deduplicates them into one
    # initializer read through Identity nodes; identical blocks must still get one signature.
    path = F.export(F.small_transformer(blocks=2), (torch.randn(2, 5, 6),), tmp_path / "t.onnx", False, ["x"], ["y"])
    assert "Identity" in {n.op_type for n in onnx.load(str(path)).graph.node}
    layers = analyse(load_graph(path)).layers
    assert layers[1].signature == layers[3].signature  # attention blocks
    assert layers[1].signature != layers[2].signature  # attention is not MLP


def test_an_einsum_starts_a_layer_only_when_it_holds_a_weight(tmp_path):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 6)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(6, 2)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Einsum", ["x", "w1"], ["h"], equation="bi,ij->bj"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Einsum", ["r", "r"], ["sq"], equation="bi,bi->bi"),  # data only: no layer
             helper.make_node("Einsum", ["sq", "w2"], ["y"], equation="bi,ij->bj")]
    graph = helper.make_graph(nodes, "einsum", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["b", 4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["b", 2])], inits)
    path = tmp_path / "einsum.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    layers = analyse(load_graph(path)).layers
    assert [layer.kind for layer in layers] == ["Einsum+Relu+Einsum", "Einsum"]
    assert [layer.cuttable for layer in layers] == [True, False]


def _first_layer(path: Path):
    return analyse(load_graph(path)).layers[0]


def test_reordered_branches_are_confirmed_by_the_graph_matcher(tmp_path):
    # Exporters list parallel branches in either order: same hash, and the matcher, which does
    # not care about the listing order, confirms what the exact structures cannot.
    a = _first_layer(F.branch_model(tmp_path / "a.onnx", ["Relu", "Sigmoid"], "Add", ("Relu", "Sigmoid")))
    b = _first_layer(F.branch_model(tmp_path / "b.onnx", ["Sigmoid", "Relu"], "Add", ("Relu", "Sigmoid"), seed=1))
    assert a.kind == "Linear+Relu+Sigmoid+Add" and b.kind == "Linear+Sigmoid+Relu+Add"
    assert a.signature == b.signature and a.structure != b.structure
    assert same_structure(a, b) and same_structure(b, a)
    graph = layer_graph(a.structure)
    assert sorted(d["op"] for _, d in graph.nodes(data=True)) == ["Add", "Linear", "Relu", "Sigmoid", "end", "input"]
    assert graph.edges[0, 1]["wires"] == ((0, 0),) and graph.edges[1, 3]["wires"] == ((0, 0),)


def test_a_hash_collision_never_aligns_different_layers(tmp_path):
    # Sub(relu(h), h) and Sub(h, relu(h)): the same ops, weights and shapes, wired differently.
    a = _first_layer(F.branch_model(tmp_path / "a.onnx", ["Relu"], "Sub", ("Relu", "h")))
    b = _first_layer(F.branch_model(tmp_path / "b.onnx", ["Relu"], "Sub", ("h", "Relu")))
    assert a.kind == b.kind == "Linear+Relu+Sub" and a.shape == b.shape
    assert a.signature != b.signature and not same_structure(a, b)
    collided = dataclasses.replace(b, signature=a.signature)  # as if blake2b had collided
    assert not same_structure(a, collided) and not same_structure(collided, a)
    twin = _first_layer(F.branch_model(tmp_path / "twin.onnx", ["Relu"], "Sub", ("Relu", "h"), seed=3))
    assert same_structure(a, twin)
