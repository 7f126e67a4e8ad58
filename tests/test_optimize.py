"""Serving passes on the fused graph: same outputs in onnxruntime, fewer lookups."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fusekit.optimize import merge_shared_gathers, optimize_for_serving
from fusekit.runtime import session


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
    assert optimize_for_serving(model) == {"merged_gathers": 0}
    assert model.SerializeToString() == before
