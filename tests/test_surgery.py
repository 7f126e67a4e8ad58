"""fusekit.surgery: components cut out at every cut point run in onnxruntime and chain back to
the original model (and to torch), for both exporters."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from fusekit.decompose.align import analyse
from fusekit.errors import FusekitError
from fusekit.decompose.graph import load_graph
from fusekit.decompose.surgery import cut_component, verify_chain
from tests import onnx_fixtures as F

CASES = {
    "cnn": (F.small_cnn, lambda b: (torch.randn(b, 3, 8, 8),)),
    "residual": (F.residual_mlp, lambda b: (torch.randn(b, 8),)),
    "transformer": (F.small_transformer, lambda b: (torch.randn(b, 5, 6),)),
}


@pytest.fixture(scope="session")
def exported(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("surgery")
    out = {}
    for name, (build, args) in CASES.items():
        for dyn in (True, False):
            out[name, dyn] = F.export(build(), args(2), root / f"{name}_{dyn}.onnx", dyn, ["x"], ["y"])
    out["cnn_bn", False] = F.export(F.small_cnn(), (torch.randn(2, 3, 8, 8),), root / "cnn_bn.onnx", False, ["x"],
                                    ["y"], fold_constants=False)
    return out


def _cut_everywhere(path: Path, folder: Path) -> tuple[list[Path], Path, list[str]]:
    """Cut after every cuttable layer; return component files, head file and boundary tensors."""
    g = load_graph(path)
    a = analyse(g)
    cuts = a.candidates
    assert cuts, "expected at least one cut"
    files, start = [], -1
    for k, layer in enumerate(cuts):
        inputs, names = (list(g.inputs), list(g.inputs)) if k == 0 else ([cuts[k - 1].end], ["x"])
        model = cut_component(g, a.order[start + 1: layer.end_gap + 1], inputs, [layer.end], names, ["y"], f"l{k}")
        files.append(folder / f"level{k + 1}.onnx")
        onnx.save(model, str(files[-1]))
        start = layer.end_gap
    head = cut_component(g, a.order[start + 1:], [cuts[-1].end], list(g.outputs), ["x"], list(g.outputs), "head")
    onnx.save(head, str(folder / "head.onnx"))
    return files, folder / "head.onnx", [layer.end for layer in cuts]


@pytest.mark.parametrize("dyn", [True, False], ids=["dynamo", "legacy"])
@pytest.mark.parametrize("name", list(CASES))
def test_components_chain_back_to_the_model(exported, tmp_path, name, dyn):
    path = exported[name, dyn]
    files, head, boundaries = _cut_everywhere(path, tmp_path)
    for file in files + [head]:
        onnx.checker.check_model(onnx.load(str(file)), full_check=True)
    g = load_graph(path)
    assert verify_chain(g, files, head, boundaries) <= 1e-5
    # the chain also matches torch on a batch size the exporter never saw
    build, args = CASES[name]
    torch.manual_seed(5)
    (x,) = args(7)
    with torch.no_grad():
        expected = build()(x).numpy()
    value = {"x": x.numpy()}
    for file in files:
        value = {"x": ort.InferenceSession(str(file), providers=["CPUExecutionProvider"]).run(["y"], value)[0]}
    (out,) = ort.InferenceSession(str(head), providers=["CPUExecutionProvider"]).run(None, value)
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_cnn_with_batchnorm_chains_back(exported, tmp_path):
    path = exported["cnn_bn", False]
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(path)).graph.node}
    files, head, boundaries = _cut_everywhere(path, tmp_path)
    assert len(files) == 2
    assert "BatchNormalization" in {n.op_type for n in onnx.load(str(files[0])).graph.node}
    assert verify_chain(load_graph(path), files, head, boundaries) <= 1e-5


def test_shape_read_before_the_cut_is_rebuilt_from_the_component_input(exported, tmp_path):
    # The legacy transformer reads the batch size from the model input and reshapes with it at
    # the end: the head must take it from its own input instead.
    path = exported["transformer", False]
    _, head, _ = _cut_everywhere(path, tmp_path)
    model = onnx.load(str(head))
    assert [i.name for i in model.graph.input] == ["x"]
    shapes = [n for n in model.graph.node if n.op_type == "Shape"]
    assert shapes and all(list(n.input) == ["x"] for n in shapes)
    sess = ort.InferenceSession(str(head), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"x": np.ones((9, 16), np.float32)})
    assert y.shape == (9, 1)


def test_verification_detects_a_wrong_component(exported, tmp_path):
    path = exported["residual", False]
    files, head, boundaries = _cut_everywhere(path, tmp_path)
    model = onnx.load(str(files[0]))
    weight = next(t for t in model.graph.initializer if len(t.dims) == 2)
    arr = onnx.numpy_helper.to_array(weight).copy()
    arr[0, 0] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(arr, weight.name))
    onnx.save(model, str(files[0]))
    with pytest.raises(FusekitError, match="level 1 differs"):
        verify_chain(load_graph(path), files, head, boundaries)
