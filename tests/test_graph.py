"""fusekit.graph: loading, checking and classifying tensors (data / const / shape)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from fusekit.errors import FusekitError
from fusekit.decompose.graph import load_graph
from tests import onnx_fixtures as F


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def _model(nodes, inputs, outputs, inits=(), opset=17, domains=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, 1) for d in domains]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.fixture(scope="session")
def legacy_mlp(tmp_path_factory) -> Path:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("graph") / "mlp.onnx"
    return F.export(F.embedding_mlp(), F.embedding_mlp_inputs(), path, False, ["categorical", "dense"], ["p"])


def test_torch_export_kinds_and_networkx(legacy_mlp):
    g = load_graph(legacy_mlp)
    assert g.inputs == ["categorical", "dense"] and g.outputs == ["p"]
    kinds = {g.nodes[i].op_type: g.node_kind[i] for i in range(len(g.nodes))}
    assert kinds["Gemm"] == "data" and kinds["Constant"] == "const"
    table = next(n for n in g.initializers if n.startswith("table"))
    assert g.tensors[table].kind == "const" and g.tensors[table].shape == (15, 4)
    assert g.canonical_shape("dense") == ("batch", 4)
    nxg = g.to_networkx()
    gemm = next(i for i, n in enumerate(g.nodes) if n.op_type == "Gemm")
    assert nxg.has_edge(("tensor", g.nodes[gemm].input[0]), ("op", gemm))
    assert nxg.has_edge(("op", gemm), ("tensor", g.nodes[gemm].output[0]))


def test_constant_subgraphs_and_shape_paths(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    shape4 = numpy_helper.from_array(np.array([4], dtype=np.int64), "shape4")
    nodes = [
        helper.make_node("ConstantOfShape", ["shape4"], ["ones"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Add", ["x", "ones"], ["a"]),
        helper.make_node("Shape", ["a"], ["sa"]),
        helper.make_node("ConstantOfShape", ["sa"], ["zeros"]),
        helper.make_node("Add", ["a", "zeros"], ["y"]),
    ]
    g = load_graph(_save(_model(nodes, [x], [y], [shape4]), tmp_path / "m.onnx"))
    assert g.tensors["ones"].kind == "const"  # constant subgraph: a weight
    assert g.tensors["sa"].kind == "shape" and g.tensors["zeros"].kind == "shape"
    assert g.tensors["a"].kind == "data" and g.tensors["y"].kind == "data"


def test_missing_truncated_and_not_onnx(tmp_path, legacy_mlp):
    with pytest.raises(FusekitError, match="does not exist"):
        load_graph(tmp_path / "nope.onnx")
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(legacy_mlp.read_bytes()[:200])
    with pytest.raises(FusekitError, match="not a valid ONNX model"):
        load_graph(cut)
    text = tmp_path / "text.onnx"
    text.write_text("hello, I am not a model\n")
    with pytest.raises(FusekitError, match="not a valid ONNX model"):
        load_graph(text)


def test_old_opset_refused(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [x], [y], opset=12)
    with pytest.raises(FusekitError, match="opset 12"):
        load_graph(_save(model, tmp_path / "old.onnx"))


def test_op_shape_inference_cannot_handle(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MyOp", ["r"], ["m"], domain="example.custom"),
             helper.make_node("Relu", ["m"], ["y"])]
    model = _model(nodes, [x], [y], domains=["example.custom"])
    with pytest.raises(FusekitError, match="MyOp"):
        load_graph(_save(model, tmp_path / "custom.onnx"))


def test_external_data_is_read(tmp_path, legacy_mlp):
    model = onnx.load(str(legacy_mlp))
    onnx.save(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
              location="ext.data", size_threshold=0)
    g = load_graph(tmp_path / "ext.onnx")
    table = next(n for n in g.initializers if n.startswith("table"))
    assert numpy_helper.to_array(g.initializers[table]).shape == (15, 4)
    (tmp_path / "ext.data").unlink()
    with pytest.raises(FusekitError, match="external data missing"):
        load_graph(tmp_path / "ext.onnx")


def test_external_data_of_a_constant_inside_an_if_branch_is_read(tmp_path):
    # Weights can hide in attribute tensors of subgraphs: those are looked for too.
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    bias = numpy_helper.from_array(np.arange(4, dtype=np.float32), "bias")
    then_g = helper.make_graph([helper.make_node("Constant", [], ["c"], value=bias),
                                helper.make_node("Add", ["x", "c"], ["t"])], "then", [],
                               [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["n", 4])])
    else_g = helper.make_graph([helper.make_node("Neg", ["x"], ["e"])], "else", [],
                               [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["n", 4])])
    cond = numpy_helper.from_array(np.array(True), "cond")
    model = _model([helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g)], [x], [y], [cond])
    onnx.save(model, str(tmp_path / "if.onnx"), save_as_external_data=True, location="if.data", size_threshold=0,
              convert_attribute=True)
    stored = onnx.load(str(tmp_path / "if.onnx"), load_external_data=False)
    assert stored.graph.node[0].attribute[1].g.node[0].attribute[0].t.data_location == onnx.TensorProto.EXTERNAL
    g = load_graph(tmp_path / "if.onnx")
    then_branch = next(a.g for a in g.nodes[0].attribute if a.name == "then_branch")
    assert numpy_helper.to_array(then_branch.node[0].attribute[0].t).tolist() == [0, 1, 2, 3]


def test_an_embedding_bag_loop_output_is_the_batch_and_such_a_pool_decomposes(tmp_path):
    """The legacy exporter writes EmbeddingBag as a Loop whose scan output has an invented length;
    the Concat with the dense [batch, 8] shows it is the batch, so the layers after it are cuts.
    (Fusing such a pool: tests/test_fuse_bags.py.)"""
    from fusekit.decompose import decompose
    from fusekit.decompose.manifest import Manifest
    from fusekit.sample_models.make_bags import BagMLP

    ids, dense = torch.randint(0, 50, (4, 3), generator=torch.Generator().manual_seed(0)), torch.rand(4, 4)
    paths = []
    for task in ("a", "b"):
        for depth in (1, 2):
            torch.manual_seed(depth)
            path = tmp_path / f"{task}{depth}.onnx"
            torch.onnx.export(BagMLP(depth, "digit_ge5", n_ids=50, n_dense=4).eval(), (ids, dense), str(path), dynamo=False,
                              input_names=["ids", "dense"], output_names=[task],
                              dynamic_axes={"ids": {0: "batch"}, "dense": {0: "batch"}, task: {0: "batch"}})
            paths.append(path)
    graph = load_graph(paths[0])
    loop = next(n for n in graph.nodes if n.op_type == "Loop").output[0]
    assert not isinstance(graph.tensors[loop].shape[0], int) and graph.tensors[loop].shape[0] != "batch"
    assert graph.canonical_shape(loop) == ("batch", 8)
    decompose(paths, tmp_path / "parts", names=["a_1", "a_2", "b_1", "b_2"], levels="all")  # verified in onnxruntime
    assert [b.shape for b in Manifest.load(tmp_path / "parts").boundaries] == [["batch", 16]] * 2  # the bags, 1 hidden layer
