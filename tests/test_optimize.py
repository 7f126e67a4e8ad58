"""Serving passes on the fused graph: same outputs in onnxruntime, fewer ops."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import pytest

from fusekit.onnxio.serving import drop_index_wraparound, optimize_for_serving
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
    assert optimize_for_serving(wrapped) == {"dropped_index_wraparounds": 1}
    other = _wraparound_graph(4)
    before = other.SerializeToString()
    assert optimize_for_serving(other) == {"dropped_index_wraparounds": 0}
    assert other.SerializeToString() == before
