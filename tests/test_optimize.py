"""Serving passes on the fused graph: same outputs in onnxruntime, fewer ops."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import pytest

from fusekit.onnxio.serving import drop_index_wraparound, merge_sibling_convs, optimize_for_serving
from fusekit.onnxio.sessions import session


def _run(model: onnx.ModelProto, tmp_path, name: str, ids: np.ndarray) -> list[np.ndarray]:
    path = tmp_path / name
    onnx.save(model, path)
    sess, _ = session(path, "cpu")
    return sess.run(None, {"ids": ids})


def _wraparound_graph(shift: int) -> onnx.ModelProto:
    """ids -> Where(ids < 0, ids + shift, ids) -> Reshape -> Gather from a 6-row table (torch's export)."""
    table = np.arange(18, dtype=np.float32).reshape(6, 3)
    inits = [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array(shift, np.int64), "rows"),
             numpy_helper.from_array(np.array([-1], np.int64), "flat")]
    nodes = [helper.make_node("Less", ["ids", "zero"], ["negative"]),
             helper.make_node("Add", ["ids", "rows"], ["shifted"]),
             helper.make_node("Where", ["negative", "shifted", "ids"], ["wrapped"]),
             helper.make_node("Reshape", ["wrapped", "flat"], ["flat_ids"]),
             helper.make_node("Gather", ["table", "flat_ids"], ["rows_out"], axis=0)]
    graph = helper.make_graph(nodes, "wrap", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 2])],
                              [helper.make_tensor_value_info("rows_out", TensorProto.FLOAT, ["n", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_the_wraparound_before_a_gather_goes_and_the_lookup_is_unchanged(tmp_path):
    model = _wraparound_graph(6)
    ids = np.array([[0, -1], [5, -6]], dtype=np.int64)
    before = _run(model, tmp_path, "before.onnx", ids)
    assert drop_index_wraparound(model) == 1
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["Reshape", "Gather"]
    assert {i.name for i in model.graph.initializer} == {"table", "flat"}
    assert np.array_equal(_run(model, tmp_path, "after.onnx", ids)[0], before[0])
    # Ids outside [-6, 6) are still refused, as they were.
    with pytest.raises(Exception, match="out of"):
        _run(model, tmp_path, "after2.onnx", np.array([[0, -7]], dtype=np.int64))


def test_a_wraparound_by_another_size_than_the_table_stays():
    model = _wraparound_graph(4)
    before = model.SerializeToString()
    assert drop_index_wraparound(model) == 0
    assert model.SerializeToString() == before


def test_optimize_for_serving_reports_each_pass_and_leaves_other_graphs_alone():
    wrapped = _wraparound_graph(6)
    assert optimize_for_serving(wrapped) == {"dropped_index_wraparounds": 1, "merged_convs": 0}
    other = _wraparound_graph(4)
    before = other.SerializeToString()
    assert optimize_for_serving(other) == {"dropped_index_wraparounds": 0, "merged_convs": 0}
    assert other.SerializeToString() == before


def _stems_graph() -> onnx.ModelProto:
    """image [B, 1, 6, 6] -> three stems Conv(3x3, pad 1) -> Relu -> MaxPool(2) of 2, 3 and 4 channels
    (the third stem's Relu output is also read by a ReduceMean, so its chain ends there), and a
    Conv of another kernel that reads the image too; every branch summed into one output."""
    rng = np.random.default_rng(0)
    inits, nodes = [], []
    outs = []
    for k, channels in enumerate((2, 3, 4)):
        inits += [numpy_helper.from_array(rng.normal(size=(channels, 1, 3, 3)).astype(np.float32), f"w{k}"),
                  numpy_helper.from_array(rng.normal(size=channels).astype(np.float32), f"b{k}")]
        nodes += [helper.make_node("Conv", ["image", f"w{k}", f"b{k}"], [f"c{k}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"c{k}"], [f"r{k}"]),
                  helper.make_node("MaxPool", [f"r{k}"], [f"p{k}"], kernel_shape=[2, 2], strides=[2, 2]),
                  helper.make_node("ReduceMean", [f"p{k}"], [f"m{k}"], axes=[1, 2, 3], keepdims=0)]
        outs.append(f"m{k}")
    inits.append(numpy_helper.from_array(rng.normal(size=(2, 1, 5, 5)).astype(np.float32), "w_other"))
    nodes += [helper.make_node("ReduceMean", ["r2"], ["also"], axes=[1, 2, 3], keepdims=0),
              helper.make_node("Conv", ["image", "w_other"], ["c_other"], kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
              helper.make_node("ReduceMean", ["c_other"], ["m_other"], axes=[1, 2, 3], keepdims=0),
              helper.make_node("Sum", outs + ["also", "m_other"], ["y"])]
    graph = helper.make_graph(nodes, "stems", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_convs_over_the_same_image_merge_into_one_with_their_relu_and_the_outputs_stay_bit_identical(tmp_path):
    model = _stems_graph()
    image = np.random.default_rng(1).normal(size=(5, 1, 6, 6)).astype(np.float32)

    def run(m, name, batch):
        path = tmp_path / name
        onnx.save(m, path)
        return session(path, "cpu", threads=1)[0].run(None, {"image": image[:batch]})[0]

    before = {b: run(model, "before.onnx", b) for b in (1, 5)}
    assert merge_sibling_convs(model) == 2
    onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in model.graph.node]
    # one Conv for the three stems, the 5x5 Conv apart; Relu merged (the third chain stops after it)
    assert ops.count("Conv") == 2 and ops.count("Relu") == 1 and ops.count("Split") == 1 and ops.count("MaxPool") == 3
    split = next(n for n in model.graph.node if n.op_type == "Split")
    assert list(split.output) == ["r0", "r1", "r2"]
    for batch in (1, 5):
        assert np.array_equal(run(model, f"after{batch}.onnx", batch), before[batch])
