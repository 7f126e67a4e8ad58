"""fusekit.onnxio.splice: a component with a data-driven Loop written into an exported file as its own graph."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from fusekit.errors import FusekitError
from fusekit.onnxio import splice
from fusekit.onnxio.export import export_onnx
from fusekit.onnxio.interpreter import load_component
from fusekit.onnxio.sessions import run, session

W = np.array([0.5, -1.0, 2.0], dtype=np.float32)


def _row_loop(path: Path, opset: int = 17, out_dim: str = "batch") -> Path:
    """x [batch, 3] -> (y [batch, 1]: one Loop iteration per row, sum(x[i] * w); x passed through).

    The body reads ``x`` and the weight ``w`` from the enclosing graph; the trip count is x's batch."""
    body = helper.make_graph(
        [helper.make_node("Gather", ["x", "i"], ["row"], axis=0),
         helper.make_node("Mul", ["row", "w"], ["prod"]),
         helper.make_node("ReduceSum", ["prod", "axes"], ["s"], keepdims=1),
         helper.make_node("Identity", ["cond"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [1])])
    nodes = [helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
             helper.make_node("Loop", ["n", ""], ["y"], body=body, name="rows")]
    graph = helper.make_graph(
        nodes, "rows", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [out_dim, 1]),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        initializer=[numpy_helper.from_array(W, "w"), numpy_helper.from_array(np.array(0, np.int64), "zero"),
                     numpy_helper.from_array(np.array([0], np.int64), "axes")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


class _Around(nn.Module):
    """Torch around two copies of the component, so the export holds two placeholders."""

    def __init__(self, path: Path):
        super().__init__()
        self.first = splice.spliceable(load_component(path), path)
        self.second = splice.spliceable(load_component(path), path)
        self.scale = nn.Linear(3, 3)

    def forward(self, x):
        y, through = self.first(x)
        z, _ = self.second(self.scale(through))
        return y * 2.0 + z, through + 1.0


def test_a_data_driven_loop_component_is_spliced_and_runs_at_every_batch_size(tmp_path):
    """The exported file holds the component's own Loop (no placeholder left), brought from opset 17
    to the export's; it gives torch's outputs at batch sizes other than the traced one."""
    path = _row_loop(tmp_path / "rows.onnx")
    assert splice.is_spliced(path)
    torch.manual_seed(0)
    module = _Around(path).eval()
    assert isinstance(module.first, splice.SplicedComponent)
    example = torch.randn(8, 3, generator=torch.Generator().manual_seed(1))
    out = export_onnx(module, tmp_path / "out.onnx", (example,), ["x"], ["y", "through"], {}, "test")
    proto = onnx.load(str(out))
    assert [n.op_type for n in proto.graph.node].count("Loop") == 2
    assert all(n.domain != splice.DOMAIN for n in proto.graph.node)
    assert splice.DOMAIN not in {o.domain for o in proto.opset_import}
    onnx.checker.check_model(proto, full_check=True)
    sess, _ = session(out, "cpu", threads=1)
    for batch in (1, 3, 17):
        x = np.random.default_rng(batch).normal(size=(batch, 3)).astype(np.float32)
        got = run(sess, {"x": x})
        with torch.no_grad():
            y, through = module(torch.from_numpy(x))
        np.testing.assert_allclose(got["y"], y.numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got["through"], through.numpy(), rtol=1e-6)
        # the component itself: sum over the row of x * w, once per row
        np.testing.assert_allclose(y.numpy()[:, 0], (x * W).sum(1) * 2 + (module.scale(torch.from_numpy(x))
                                                                             .detach().numpy() * W).sum(1), rtol=1e-5)


def test_a_component_without_a_data_driven_loop_is_not_wrapped(tmp_path):
    from tests import onnx_fixtures as F

    path = F.gemm_chain(tmp_path / "gemm.onnx", layers=2)
    component = load_component(path)
    assert not splice.is_spliced(path)
    assert splice.spliceable(component, path) is component


def test_a_loop_component_whose_output_size_no_input_gives_is_refused(tmp_path):
    path = _row_loop(tmp_path / "rows.onnx", out_dim="rows_out")
    with pytest.raises(FusekitError, match=r"rows.onnx: output 'y' axis 0 has a size that none of its inputs gives"):
        splice.is_spliced(path)


def test_the_placeholder_op_refuses_to_run_outside_an_export(tmp_path):
    path = _row_loop(tmp_path / "rows.onnx")
    with pytest.raises(FusekitError, match="outside fusekit's export"):
        torch.ops.fusekit.spliced([torch.zeros(2, 3)], 0)
    # in torch, outside an export, the wrapper runs the interpreter
    wrapped = splice.spliceable(load_component(path), path)
    y, _ = wrapped(torch.ones(2, 3))
    assert y[:, 0].tolist() == pytest.approx([W.sum()] * 2)
