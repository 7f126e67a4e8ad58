"""fusekit.surgery: components cut out at every cut point run in onnxruntime and chain back to
the original model (and to torch), for both exporters."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx.external_data_helper import uses_external_data

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


def test_a_cut_tensor_read_inside_an_if_branch_is_renamed_there(tmp_path):
    # The second component's input ``x`` is the model's ``r``, which both If branches read from
    # the outer scope: graphsurgeon renames it in every scope.
    path = F.if_model(tmp_path / "if.onnx")
    files, head, boundaries = _cut_everywhere(path, tmp_path)
    assert boundaries == ["r", "s"]
    level2 = onnx.load(str(files[1]))
    onnx.checker.check_model(level2, full_check=True)
    branch = next(n for n in level2.graph.node if n.op_type == "If")
    reads = {name for attr in branch.attribute for node in attr.g.node for name in node.input}
    assert reads == {"x"} and [i.name for i in level2.graph.input] == ["x"]
    assert [d.dim_param or d.dim_value for d in level2.graph.input[0].type.tensor_type.shape.dim] == ["batch", 6]
    assert {p.key: p.value for p in level2.metadata_props}["fusekit.component"] == "l1"
    assert [(o.domain, o.version) for o in level2.opset_import] == [("", 17)]
    assert verify_chain(load_graph(path), files, head, boundaries) <= 1e-5


def _attribute_bytes(attr: onnx.AttributeProto) -> bytes:
    attr = onnx.AttributeProto.FromString(attr.SerializeToString())
    if attr.HasField("t") and not attr.t.name:
        attr.t.ClearField("name")  # graphsurgeon writes an empty tensor name explicitly: same tensor
    return attr.SerializeToString()


def _node_set(model: onnx.ModelProto) -> list[tuple]:
    """The nodes, order aside: graphsurgeon's toposort may list independent ops otherwise."""
    return sorted((n.op_type, tuple(n.input), tuple(n.output), tuple(_attribute_bytes(a) for a in n.attribute))
                  for n in model.graph.node)


@pytest.mark.parametrize("name", list(CASES))
def test_graphsurgeon_and_protobuf_assemble_the_same_component(exported, name):
    g = load_graph(exported[name, False])
    a = analyse(g)
    start, k = -1, 0
    for k, layer in enumerate(a.candidates + [None]):
        end_gap = layer.end_gap if layer else len(a.order) - 1
        inputs, names = (list(g.inputs), list(g.inputs)) if start < 0 else ([a.candidates[k - 1].end], ["x"])
        outputs, out_names = ([layer.end], ["y"]) if layer else (list(g.outputs), list(g.outputs))
        args = (g, a.order[start + 1: end_gap + 1], inputs, outputs, names, out_names, f"c{k}")
        by_gs, by_proto = cut_component(*args, use_graphsurgeon=True), cut_component(*args, use_graphsurgeon=False)
        assert _node_set(by_gs) == _node_set(by_proto)
        assert by_gs.graph.input == by_proto.graph.input and by_gs.graph.output == by_proto.graph.output
        assert sorted(t.SerializeToString() for t in by_gs.graph.initializer) == sorted(
            t.SerializeToString() for t in by_proto.graph.initializer)
        assert by_gs.opset_import == by_proto.opset_import and by_gs.metadata_props == by_proto.metadata_props
        start = end_gap
    assert k == len(a.candidates)


@pytest.mark.parametrize("source", ["residual", "if"])
def test_components_of_a_model_with_external_data_hold_their_weights(exported, tmp_path, source):
    path = exported["residual", False] if source == "residual" else F.if_model(tmp_path / "src" / "if.onnx")
    ext = tmp_path / "ext" / "model.onnx"
    ext.parent.mkdir()
    onnx.save(onnx.load(str(path)), str(ext), save_as_external_data=True, location="model.data", size_threshold=0)
    parts = tmp_path / "parts"
    parts.mkdir()
    files, head, boundaries = _cut_everywhere(ext, parts)
    assert sorted(p.name for p in parts.iterdir()) == sorted(p.name for p in files + [head])
    for file in files + [head]:
        model = onnx.load(str(file), load_external_data=False)
        assert model.graph.initializer and not any(uses_external_data(t) for t in model.graph.initializer)
    assert verify_chain(load_graph(ext), files, head, boundaries) <= 1e-5


@pytest.mark.parametrize("use_graphsurgeon", [False, True], ids=["protobuf", "graphsurgeon"])
def test_inner_tensors_named_like_a_boundary_move_aside(tmp_path, use_graphsurgeon):
    g = load_graph(F.clashing_names_model(tmp_path / "m.onnx"))
    a = analyse(g)
    r, s = (layer.end for layer in a.candidates)
    assert (r, s) == ("r", "s")
    levels = [cut_component(g, a.order[:2], ["inp"], ["r"], ["inp"], ["y"], "l1", use_graphsurgeon=use_graphsurgeon),
              cut_component(g, a.order[2:4], ["r"], ["s"], ["x"], ["y"], "l2", use_graphsurgeon=use_graphsurgeon)]
    head = cut_component(g, a.order[4:], ["s"], ["out"], ["x"], ["out"], "head", use_graphsurgeon=use_graphsurgeon)
    assert [n.output[0] for n in levels[0].graph.node] == ["y__orig", "y"]
    assert [n.output[0] for n in levels[1].graph.node] == ["x__orig", "y"]
    files = []
    for k, model in enumerate(levels + [head]):
        files.append(tmp_path / f"c{k}.onnx")
        onnx.save(model, str(files[-1]))
    assert verify_chain(g, files[:2], files[2], ["r", "s"]) <= 1e-5
