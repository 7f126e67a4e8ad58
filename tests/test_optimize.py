"""Serving passes on the fused graph: same outputs in onnxruntime, fewer lookups."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import pytest

from fusekit.onnxio.serving import drop_index_wraparound, merge_shared_gathers, optimize_for_serving
from fusekit.onnxio.sessions import session


def _lookup_graph() -> onnx.ModelProto:
    """Embedding lookups: t_a, t_b (10 rows) and t_c (12 rows) of the same ids, t_small of other
    ids, and one lookup in a computed table."""
    rng = np.random.default_rng(0)
    tables = {"t_a": (10, 3), "t_b": (10, 5), "t_c": (12, 2), "t_small": (10, 2)}
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), k) for k, shape in tables.items()]
    inits += [numpy_helper.from_array(np.array([-1, 20], dtype=np.int64), "flat"),
              numpy_helper.from_array(np.array(7, dtype=np.int64), "seven")]
    nodes = [
        helper.make_node("Gather", ["t_a", "ids"], ["e_a"], axis=0),
        helper.make_node("Gather", ["t_c", "ids"], ["e_c"], axis=0),
        helper.make_node("Gather", ["t_b", "ids"], ["e_b"], axis=0),
        helper.make_node("Mod", ["ids", "seven"], ["ids_mod"]),
        helper.make_node("Gather", ["t_small", "ids_mod"], ["e_small"], axis=0),
        helper.make_node("Relu", ["t_a"], ["t_relu"]),  # not a constant: its lookup stays as it is
        helper.make_node("Gather", ["t_relu", "ids"], ["e_relu"], axis=0),
        helper.make_node("Reshape", ["e_b", "flat"], ["b_flat"]),
    ]
    graph = helper.make_graph(
        nodes, "lookups", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in (
            ("e_a", ["batch", 4, 3]), ("e_c", ["batch", 4, 2]), ("b_flat", ["batch", 20]),
            ("e_small", ["batch", 4, 2]), ("e_relu", ["batch", 4, 3]))],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model: onnx.ModelProto, tmp_path, name: str, ids: np.ndarray) -> list[np.ndarray]:
    path = tmp_path / name
    onnx.save(model, path)
    sess, _ = session(path, "cpu")
    return sess.run(None, {"ids": ids})


def test_lookups_of_the_same_ids_in_same_height_tables_become_one(tmp_path):
    model = _lookup_graph()
    ids = np.array([[0, 3, 9, -1], [5, 5, 2, -10]], dtype=np.int64)  # negative ids wrap, as in Gather
    before = _run(model, tmp_path, "before.onnx", ids)
    optimized = onnx.ModelProto()
    optimized.CopyFrom(model)
    assert merge_shared_gathers(optimized) == 1
    onnx.checker.check_model(optimized, full_check=True)
    gathers = [n for n in optimized.graph.node if n.op_type == "Gather"]
    assert len(gathers) == 4  # t_a + t_b merged; t_c (12 rows), t_small (other ids), t_relu untouched
    inits = {i.name for i in optimized.graph.initializer}
    assert "t_b" not in inits and {"t_a", "t_c", "t_small"} <= inits  # t_a still feeds the Relu
    after = _run(optimized, tmp_path, "after.onnx", ids)
    for a, b in zip(before, after):
        assert np.array_equal(a, b)


def test_a_graph_without_shared_lookups_is_left_unchanged():
    model = _lookup_graph()
    for pos in (7, 2):  # t_b's lookup and its Reshape gone: nothing left to merge
        del model.graph.node[pos]
    del model.graph.output[2]
    before = model.SerializeToString()
    assert optimize_for_serving(model) == {"dropped_index_wraparounds": 0, "merged_gathers": 0}
    assert model.SerializeToString() == before


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
