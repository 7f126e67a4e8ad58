"""fusekit.onnxio.optable: one table that the interpreter, decompose and fine-tuning agree on."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fusekit.onnxio import ops, optable

ROOT = Path(__file__).resolve().parents[1]


def _vi(name: str, shape=(None, 4)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(shape))


def _model(nodes: list, opset: int = 18, functions: tuple = (), extra_opsets: tuple = (),
           initializers: tuple = (), check: bool = True) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", [_vi("x")], [_vi("y")], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets],
                              functions=list(functions))
    if check:
        onnx.checker.check_model(model)
    return model


def test_the_table_and_the_interpreter_name_the_same_ops():
    assert set(optable.TABLE) == set(ops.OPS)
    assert set(ops.SHAPE_OPS) <= set(ops.OPS)


def test_an_implementation_of_an_op_the_table_lacks_fails_at_registration():
    with pytest.raises(RuntimeError, match="NotAnOnnxOp.*optable.py"):
        ops.register("NotAnOnnxOp")(lambda attrs, ctx: None)
    assert "NotAnOnnxOp" not in ops.OPS


def test_records_are_checked_when_written():
    with pytest.raises(ValueError, match="primary and norm ops only"):
        optable.OpInfo("plain", weight_inputs=(1,))
    with pytest.raises(ValueError, match="primary op needs"):
        optable.OpInfo("primary")
    with pytest.raises(ValueError, match="are weight_inputs"):
        optable.OpInfo("norm", weight_inputs=(1,), bias_inputs=(2,))
    assert optable.OpInfo("norm", weight_inputs=(1, 2), scale_inputs=(1,)).role == "norm"
    with pytest.raises(ValueError, match="weight and a host value"):
        optable.OpInfo("primary", weight_inputs=(1,), static_inputs=frozenset({1}))


def test_lookups_know_only_default_domain_ops_and_their_opsets():
    assert optable.supported("Gemm") and optable.supported("Gemm", "ai.onnx")
    assert not optable.supported("Gemm", "com.example")
    assert not optable.supported("Scan") and optable.lookup("Scan") is None
    assert optable.supported("GroupNormalization", opset=21) and not optable.supported("GroupNormalization", opset=18)
    assert optable.is_shape_only("Shape") and optable.is_shape_only("Size") and not optable.is_shape_only("Reshape")
    assert optable.foldable("Add") and not optable.foldable("RandomNormal")
    assert optable.weight_ops() == ["BatchNormalization", "Conv", "ConvTranspose", "Einsum", "GRU", "Gather", "Gemm",
                                    "GroupNormalization", "InstanceNormalization", "LSTM", "LayerNormalization",
                                    "MatMul", "RNN"]


def test_unsupported_ops_of_a_model_are_sorted_and_name_other_domains():
    model = _model([helper.make_node("Relu", ["x"], ["a"]),
                    helper.make_node("FusedGelu", ["a"], ["b"], domain="com.example"),
                    helper.make_node("NonMaxSuppression", ["b", "b"], ["c"]),
                    helper.make_node("Identity", ["c"], ["y"])],
                   extra_opsets=(helper.make_opsetid("com.example", 1),))
    assert optable.unsupported_ops(model) == ["NonMaxSuppression", "com.example::FusedGelu"]
    assert optable.unsupported_ops(model.graph.node[:1]) == []


def test_subgraph_bodies_are_searched():
    body = helper.make_graph([helper.make_node("Einsum", ["x", "x"], ["t"], equation="bi,bi->bi"),
                              helper.make_node("Unique", ["t"], ["out"])], "then",
                             [], [_vi("out")])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["out2"])], "else", [], [_vi("out2")])
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    model = _model([helper.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=other)],
                   initializers=(cond,))
    # A constant condition: the If itself runs, and both branches are searched.
    assert optable.unsupported_ops(model) == ["Unique"]


def _if(cond: str, name: str = "y", then_out: str = "x", else_out: str = "x") -> onnx.NodeProto:
    then_g = helper.make_graph([helper.make_node("Identity", [then_out], [f"{name}_t"])], "then", [],
                               [_vi(f"{name}_t")])
    else_g = helper.make_graph([helper.make_node("Identity", [else_out], [f"{name}_e"])], "else", [],
                               [_vi(f"{name}_e")])
    return helper.make_node("If", [cond], [name], then_branch=then_g, else_branch=else_g)


def test_an_if_counts_only_with_a_condition_known_without_data():
    assert optable.lookup("If").static_condition and "If" in ops.OPS
    cond = helper.make_tensor("cond", TensorProto.BOOL, [], [True])
    zero = onnx.numpy_helper.from_array(np.array(0, np.float32), "zero")
    constant = [helper.make_node("Constant", [], ["c"], value=cond), helper.make_node("Not", ["c"], ["cond"])]
    data = [helper.make_node("ReduceSum", ["x", ""], ["s"], keepdims=0),
            helper.make_node("Greater", ["s", "zero"], ["cond"])]
    shape = [helper.make_node("Size", ["x"], ["n"]), helper.make_node("Cast", ["n"], ["cond"], to=TensorProto.BOOL)]
    assert optable.unsupported_ops(_model([_if("cond")], initializers=(cond,))) == []
    assert optable.unsupported_ops(_model([*constant, _if("cond")])) == []
    # Out of order (onnx.checker refuses it, the interpreter sorts): still known to be constant.
    assert optable.unsupported_ops(_model([_if("cond"), *constant[::-1]], check=False)) == []
    assert optable.unsupported_ops(_model([*data, _if("cond")], initializers=(zero,))) == [optable.DATA_CONDITION]
    assert optable.unsupported_ops(_model([*shape, _if("cond")])) == [optable.DATA_CONDITION]
    assert optable.describe([optable.DATA_CONDITION]) == "If (condition computed from the data)"


def test_a_nested_if_sees_the_constants_of_its_scopes():
    outer = helper.make_tensor("outer", TensorProto.BOOL, [], [True])
    local = helper.make_tensor("local", TensorProto.BOOL, [], [False])

    def nested(cond: str) -> onnx.NodeProto:
        then_g = helper.make_graph([_if(cond, "inner")], "then", [], [_vi("inner")], [local])
        else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [_vi("e")])
        return helper.make_node("If", ["outer"], ["y"], then_branch=then_g, else_branch=else_g)

    assert optable.unsupported_ops(_model([nested("outer")], initializers=(outer,))) == []
    assert optable.unsupported_ops(_model([nested("local")], initializers=(outer,))) == []
    data = helper.make_graph([helper.make_node("ReduceSum", ["x", ""], ["s"], keepdims=0),
                              helper.make_node("Cast", ["s"], ["dc"], to=TensorProto.BOOL), _if("dc", "inner")],
                             "then", [], [_vi("inner")])
    node = helper.make_node("If", ["outer"], ["y"], then_branch=data,
                            else_branch=helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else",
                                                          [], [_vi("e")]))
    assert optable.unsupported_ops(_model([node], initializers=(outer,))) == [optable.DATA_CONDITION]


def test_outer_names_include_reads_of_nested_subgraphs_and_outputs():
    inner = _if("c", "z", then_out="a", else_out="b")
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), inner], "g", [], [_vi("z"), _vi("w")])
    names = optable.outer_names(g)
    assert names[:2] == ["x", "c"] and set(names[2:4]) == {"a", "b"} and names[4:] == ["w"]
    assert sorted(sub.name for sub in optable.subgraphs(inner)) == ["else", "then"]


def test_local_functions_count_by_their_bodies():
    def function(op: str) -> onnx.FunctionProto:
        return helper.make_function("local", "Act", ["a"], ["b"], [helper.make_node(op, ["a"], ["b"])],
                                    [helper.make_opsetid("", 18)])

    call = [helper.make_node("Act", ["x"], ["y"], domain="local")]
    local = (helper.make_opsetid("local", 1),)
    assert optable.unsupported_ops(_model(call, functions=(function("Relu"),), extra_opsets=local)) == []
    assert optable.unsupported_ops(_model(call, functions=(function("Unique"),), extra_opsets=local)) == ["Unique"]


def test_an_op_older_than_its_implementation_is_unsupported_and_says_so():
    nodes = [helper.make_node("GroupNormalization", ["x", "s", "s"], ["y"], num_groups=2)]
    s = onnx.numpy_helper.from_array(np.ones(4, np.float32), "s")
    # Unchecked: onnx.checker refuses the deprecated opset-18 form, yet such files exist.
    old = _model(nodes, opset=18, initializers=(s,), check=False)
    new = _model(nodes, opset=21, initializers=(s,))
    assert optable.unsupported_ops(old) == ["GroupNormalization"] and optable.unsupported_ops(new) == []
    assert optable.describe(["Scan", "GroupNormalization"]) == "Scan, GroupNormalization (before opset 21)"


def test_weight_positions_include_the_separate_bias_add_of_a_matmul_only():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Add", ["b", "h"], ["z"]),
             helper.make_node("Relu", ["z"], ["r"]), helper.make_node("Add", ["r", "c"], ["y"])]
    producers = {out: node for node in nodes for out in node.output}
    assert [optable.weight_positions(n, producers) for n in nodes] == [(0, 1), (0,), (), ()]


def test_weights_of_recurrent_and_normalisation_ops_are_their_matrices_scales_and_biases():
    node = lambda op, n: helper.make_node(op, [f"i{k}" for k in range(n)], ["y"])  # noqa: E731
    found = {op: optable.weight_positions(node(op, n), {}) for op, n in
             (("GRU", 6), ("LSTM", 8), ("RNN", 6), ("LayerNormalization", 3), ("BatchNormalization", 5), ("Conv", 3))}
    assert found == {"GRU": (1, 2, 3), "LSTM": (1, 2, 3, 7), "RNN": (1, 2, 3), "LayerNormalization": (1, 2),
                     "BatchNormalization": (1, 2), "Conv": (1, 2)}  # BatchNorm's statistics (3, 4) are no weights
    assert optable.lookup("LayerNormalization").scale_inputs == (1,) and optable.lookup("GRU").bias_inputs == (3,)
    assert optable.lookup("LayerNormalization").role == "norm"  # still joins the layer before it


def _loop(body_nodes: list) -> onnx.NodeProto:
    body = helper.make_graph(body_nodes, "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                                                  helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
                             [helper.make_tensor_value_info("c", TensorProto.BOOL, []), _vi("s")])
    return helper.make_node("Loop", ["n", "t"], ["y"], body=body)


def test_inside_a_loop_body_an_if_may_branch_on_data_and_unknown_ops_are_still_found():
    consts = (onnx.numpy_helper.from_array(np.array(2, np.int64), "n"),
              onnx.numpy_helper.from_array(np.array(True), "t"), onnx.numpy_helper.from_array(np.array(0, np.int64), "z"))
    data_if = [helper.make_node("Equal", ["i", "z"], ["first"]), _if("first", "s")]
    assert optable.unsupported_ops(_model([_loop(data_if)], initializers=consts, check=False)) == []
    assert optable.unsupported_ops(_model([*data_if[:1], _if("first", "y")], initializers=consts[2:],
                                          check=False)) == [optable.DATA_CONDITION]
    unknown = [helper.make_node("Unique", ["x"], ["s"])]
    assert optable.unsupported_ops(_model([_loop(unknown)], initializers=consts, check=False)) == ["Unique"]


def test_the_table_and_decompose_import_without_torch():
    code = ("import sys; import fusekit.onnxio.optable, fusekit.decompose.pipeline, fusekit.decompose.inspect; "
            "sys.exit('torch' in sys.modules)")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, timeout=120).returncode == 0


def _loop_model(trip_from_data: bool, body_decides: bool = False) -> onnx.ModelProto:
    """y = x + 1 added M times by a Loop; M is a constant 3, or the batch size of x; or the body
    goes on while the sum stays below 5 (as the dynamo exporter's EmbeddingBag Loop decides)."""
    cond = (helper.make_node("ReduceMax", ["acc_out"], ["top"], keepdims=0),
            helper.make_node("Less", ["top", "five"], ["cond_out"])) if body_decides else (
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),)
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "one"], ["acc_out"]), *cond],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []), _vi("acc_in")],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), _vi("acc_out")],
        [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]), helper.make_tensor("five", TensorProto.FLOAT, [], [5.0])])
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0)] if trip_from_data else []
    nodes.append(helper.make_node("Loop", ["batch" if trip_from_data else "three", "true", "x"], ["y"],
                                  name="repeat", body=body))
    inits = (helper.make_tensor("three", TensorProto.INT64, [], [3]), helper.make_tensor("zero", TensorProto.INT64, [], [0]),
             helper.make_tensor("true", TensorProto.BOOL, [], [True]))
    return _model(nodes, initializers=inits)


def test_a_loop_is_a_data_loop_only_when_its_trip_count_comes_from_the_data():
    assert optable.data_loops(_loop_model(trip_from_data=True)) == ["repeat"]
    assert optable.data_loops(_loop_model(trip_from_data=False)) == []
    assert optable.data_loops(_loop_model(trip_from_data=False, body_decides=True)) == ["repeat"]
