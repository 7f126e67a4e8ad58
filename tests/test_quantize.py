"""Dynamic int8 quantisation: Gemm weights become int8 MatMuls, outputs stay close, metadata stays."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from fusekit.data import FeatureSpec
from fusekit.deploy.quantize import gemm_as_matmul, quantize_model
from fusekit.deploy.raw_inputs import export_model, raw_feeds, raw_inputs_of
from fusekit.errors import FusekitError
from fusekit.sample_models import sample_pool


def _run(model, feeds):
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.fixture(scope="module")
def source():
    return sample_pool("census2").paths[0]


@pytest.fixture(scope="module")
def encoded(census2):
    return {"categorical": census2.test.cat[:5000], "dense": census2.test.dense[:5000]}


def test_gemm_as_matmul_keeps_the_outputs(source, encoded):
    model = onnx.load(str(source))
    before = _run(model, encoded)[0]
    count = gemm_as_matmul(model)
    assert count == sum(n.op_type == "Gemm" for n in onnx.load(str(source)).graph.node) > 0
    assert not [n for n in model.graph.node if n.op_type == "Gemm"]
    np.testing.assert_allclose(_run(model, encoded)[0], before, atol=1e-6)


def test_quantised_model_has_int8_weights_and_keeps_the_auc(source, encoded, census2):
    from fusekit.metrics import roc_auc

    model = onnx.load(str(source))
    quantized = quantize_model(model)
    ops = {n.op_type for n in quantized.graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    gemms = sum(n.op_type == "Gemm" for n in model.graph.node)
    assert sum(n.op_type == "MatMulInteger" for n in quantized.graph.node) == gemms - 1  # all but the first layer
    int8 = {i.name for i in quantized.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    assert all(n.input[1] in int8 for n in quantized.graph.node if n.op_type == "MatMulInteger")
    assert {p.key: p.value for p in quantized.metadata_props} == {p.key: p.value for p in model.metadata_props}
    assert len(quantized.SerializeToString()) < 0.9 * len(model.SerializeToString())
    before, after = _run(model, encoded)[0], _run(quantized, encoded)[0]
    labels = census2.test.labels["income"][:5000]
    assert abs(roc_auc(labels, after) - roc_auc(labels, before)) < 0.002
    # The layers fed by the inputs stay float: quantising them too costs AUC at this batch size.
    first = [n for n in quantized.graph.node if n.op_type == "MatMul"]
    assert len(first) == 1 and first[0].input[0] not in {o for n in quantized.graph.node for o in n.output
                                                         if n.op_type in ("MatMul", "MatMulInteger")}
    everything = _run(quantize_model(model, first_layers_float=False), encoded)[0]
    assert abs(roc_auc(labels, everything) - roc_auc(labels, before)) > abs(roc_auc(labels, after) - roc_auc(labels, before))


def test_quantised_raw_input_export_checks_its_encoder_and_reports_the_change(source, tmp_path):
    result = export_model(source, tmp_path / "served.onnx", quantize="dynamic")
    assert result.quantized == "dynamic" and result.max_diff == 0.0 and 0 < result.quantization_diff < 0.2
    served = onnx.load(str(tmp_path / "served.onnx"))
    assert "MatMulInteger" in {n.op_type for n in served.graph.node}
    meta = {p.key: p.value for p in served.metadata_props}
    from fusekit.deploy.raw_inputs import synthesised_rows

    rows = synthesised_rows(FeatureSpec.from_json(meta["fusekit.feature_spec"]))
    out = _run(tmp_path / "served.onnx", raw_feeds(rows, raw_inputs_of(meta)))[0]
    assert out.shape == (len(rows),) and np.isfinite(out).all()


def test_quantisation_alone_keeps_the_encoded_inputs(source, tmp_path, encoded):
    result = export_model(source, tmp_path / "q.onnx", raw_inputs=False, quantize="dynamic")
    assert result.raw_inputs == [] and result.max_diff is None
    assert [i.name for i in onnx.load(str(tmp_path / "q.onnx")).graph.input] == ["categorical", "dense"]
    assert _run(tmp_path / "q.onnx", encoded)[0].shape == (5000,)


def test_unknown_method_is_refused(source):
    with pytest.raises(FusekitError, match="unknown quantisation"):
        quantize_model(onnx.load(str(source)), "static")
