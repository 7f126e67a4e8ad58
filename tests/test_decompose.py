"""fusekit.decompose end to end: census-like models, levels, manifest, errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from fusekit.decompose.pipeline import decompose
from fusekit.errors import FusekitError
from fusekit.io import sha256_file
from fusekit.decompose.manifest import Manifest
from fusekit.onnxio.interpreter import load_component
from tests import onnx_fixtures as F

CENSUS = {"income_a": (64, 32, 16), "income_b": (64, 64, 32, 16), "married_a": (64, 32, 16),
          "married_b": (64, 48, 32, 16)}


@pytest.fixture(scope="session")
def census(tmp_path_factory) -> dict[bool, list[Path]]:
    """Four census-like MLPs of different depth and width, for each exporter."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("census")
    args = F.embedding_mlp_inputs()
    out: dict[bool, list[Path]] = {}
    for dyn in (True, False):
        paths = []
        for seed, (name, widths) in enumerate(CENSUS.items()):
            path = F.export(F.embedding_mlp(widths=widths, seed=seed), args, root / f"{'dyn' if dyn else 'leg'}"
                            / f"{name}.onnx", dyn, ["categorical", "dense"], [name.split("_")[0]])
            model = onnx.load(str(path))
            helper.set_model_props(model, {"fusekit.task": name.split("_")[0], "fusekit.feature_spec": "{}"})
            onnx.save(model, str(path))
            paths.append(path)
        out[dyn] = paths
    return out


@pytest.fixture(scope="session")
def dense(tmp_path_factory):
    """Builder of legacy-exported dense MLPs (cheap), cached by (widths, seed)."""
    root = tmp_path_factory.mktemp("dense")
    cache: dict = {}

    def make(widths: tuple[int, ...], seed: int = 0, n_in: int = 8) -> Path:
        key = (widths, seed, n_in)
        if key not in cache:
            name = f"m{len(cache)}"
            cache[key] = F.export(F.dense_mlp(n_in, widths, seed), (torch.randn(2, n_in),), root / f"{name}.onnx",
                                  False, ["x"], ["y"])
        return cache[key]
    return make


@pytest.mark.parametrize("dyn", [True, False], ids=["dynamo", "legacy"])
def test_four_census_models_give_three_levels(census, tmp_path, dyn):
    out = tmp_path / "parts"
    result = decompose(census[dyn], out)
    assert result.levels == 3 and len(result.common) == 3
    assert [c.shape for c in result.common] == [["batch", 16], ["batch", 64], ["batch", 16]]
    assert [c.indices for c in result.common] == [[0, 0, 0, 0], [1, 1, 1, 1], [3, 4, 3, 4]]
    assert max(result.worst_diff.values()) <= 1e-5 and set(result.worst_diff) == set(CENSUS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["levels"] == 3 and manifest["fusekit_version"]
    assert manifest["inputs"] == [{"name": "categorical", "shape": ["batch", 3], "dtype": "int64"},
                                  {"name": "dense", "shape": ["batch", 4], "dtype": "float32"}]
    assert [b["shape"] for b in manifest["boundaries"]] == [["batch", 16], ["batch", 64], ["batch", 16]]
    assert all(b["signature"] for b in manifest["boundaries"])
    for entry, path in zip(manifest["models"], census[dyn]):
        assert entry["name"] == path.stem and entry["sha256"] == sha256_file(path)
        assert entry["components"] == [f"{path.stem}/level{k}.onnx" for k in (1, 2, 3)]
        assert entry["metadata"]["fusekit.task"] == path.stem.split("_")[0]
        assert entry["outputs"] == [path.stem.split("_")[0]] and entry["inputs"] == ["categorical", "dense"]
        assert len(entry["boundary_tensors"]) == 3 and entry["layer_indices"] == [0, 1, 4 if "_b" in path.stem else 3]
        for rel, digest in zip(entry["components"], entry["component_sha256"]):
            model = onnx.load(str(out / rel))
            assert sha256_file(out / rel) == digest
            assert [o.name for o in model.graph.output] == ["y"]
        assert (out / entry["head"]).is_file()
    level2 = onnx.load(str(out / "income_b/level2.onnx"))
    assert [i.name for i in level2.graph.input] == ["x"]
    assert [d.dim_param or d.dim_value for d in level2.graph.input[0].type.tensor_type.shape.dim] == ["batch", 16]
    loaded = Manifest.load(out)
    assert loaded.levels == 3 and loaded.component_path("married_b", 2) == out / "married_b/level2.onnx"
    text = result.table()
    assert "income_a" in text and "3 common cuttable layers" in text and "worst max abs difference" in text
    assert json.loads(json.dumps(result.to_json()))["levels"] == 3


def test_load_manifest_detects_changes(census, tmp_path):
    out = tmp_path / "parts"
    decompose(census[False][:2], out, verify=False)
    Manifest.load(out)
    (out / "income_a/level2.onnx").write_bytes((out / "income_a/level2.onnx").read_bytes() + b"\0")
    with pytest.raises(FusekitError, match="changed since decompose"):
        Manifest.load(out)
    (out / "income_a/level2.onnx").unlink()
    with pytest.raises(FusekitError, match="missing"):
        Manifest.load(out)
    with pytest.raises(FusekitError, match="does not exist"):
        Manifest.load(tmp_path / "elsewhere")


def test_only_the_first_layer_shared(dense, tmp_path):
    result = decompose([dense((16, 32)), dense((16, 24), seed=1)], tmp_path / "p")
    assert result.levels == 1 and [c.indices for c in result.common] == [[0, 0]]
    assert result.common[0].shape == ["batch", 16]


def test_only_the_last_hidden_layer_shared(dense, tmp_path):
    result = decompose([dense((12, 16, 16)), dense((20, 24, 16, 16), seed=1)], tmp_path / "p")
    assert result.levels == 1 and [c.indices for c in result.common] == [[2, 3]]
    assert max(result.worst_diff.values()) <= 1e-5


def test_default_explicit_and_all_levels(dense, tmp_path):
    a, b = dense((16, 16, 16, 16, 16)), dense((16, 16, 16, 16, 16), seed=1)
    default = decompose([a, b], tmp_path / "d")
    assert len(default.common) == 5 and default.chosen == [1, 2, 4]
    assert "default min(3, 5 common layers)" in default.reason
    assert decompose([a, b], tmp_path / "two", levels=2).chosen == [2, 4]
    assert decompose([a, b], tmp_path / "all", levels="all").levels == 5
    with pytest.raises(FusekitError, match="use levels=5 or fewer"):
        decompose([a, b], tmp_path / "six", levels=6)
    assert not (tmp_path / "six").exists()


def test_three_models_of_different_depth(dense, tmp_path):
    paths = [dense((16, 16, 8)), dense((16, 32, 16, 8), seed=1), dense((16, 24, 16, 8, 8), seed=2)]
    result = decompose(paths, tmp_path / "p", names=["a", "b", "c"])
    # common: 8->16 and the 16->8 layer, in order, in all three
    assert [c.indices for c in result.common] == [[0, 0, 0], [2, 3, 3]]
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["a", "b", "c", "manifest.json"]


def test_no_common_layer_names_layer_kinds_and_nearest(dense, tmp_path):
    with pytest.raises(FusekitError) as info:
        decompose([dense((12,)), dense((20,), seed=1)], tmp_path / "p")
    message = str(info.value)
    assert "\n" not in message and "no layer is common" in message
    assert "Linear(8->12)+Relu" in message and "Linear(8->20)+Relu" in message and "nearest candidates" in message
    assert not (tmp_path / "p").exists()


def test_bad_inputs(dense, census, tmp_path):
    out = tmp_path / "p"
    with pytest.raises(FusekitError, match="different inputs"):
        decompose([dense((16,)), census[False][0]], out)
    with pytest.raises(FusekitError, match="different inputs"):
        decompose([dense((16,)), dense((16,), n_in=9)], out)
    with pytest.raises(FusekitError, match="at least two models"):
        decompose([dense((16,))], out)
    with pytest.raises(FusekitError, match="distinct names"):
        decompose([dense((16,)), dense((16,))], out)
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FusekitError, match="not empty"):
        decompose([dense((16,)), dense((16,), seed=1)], out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    decompose([dense((16,)), dense((16,), seed=1)], out, force=True)
    assert (out / "manifest.json").is_file() and not (out / "keep.txt").exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def _custom_op_model(path: Path) -> Path:
    """x -> com.example::FusedGelu -> y: valid for onnx.checker, unknown to everyone else."""
    node = helper.make_node("FusedGelu", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_a_pool_with_ops_fuse_cannot_run_is_refused_before_anything_is_written(dense, tmp_path):
    models = tmp_path / "models"
    grid = F.export(F.grid_sampler(), (torch.randn(2, 8),), models / "grid.onnx", False, ["x"], ["y"], opset=18)
    custom = _custom_op_model(models / "custom.onnx")
    mlp = dense((16,))
    # A valid model that onnxruntime runs, which fuse's interpreter could not load.
    session = ort.InferenceSession(str(grid), providers=["CPUExecutionProvider"])
    assert session.run(None, {"x": np.ones((3, 8), np.float32)})[0].shape == (3, 1)
    with pytest.raises(FusekitError, match="GridSample"):
        load_component(grid)
    out = tmp_path / "parts"
    with pytest.raises(FusekitError) as info:
        decompose([mlp, grid, custom], out)
    message = str(info.value)
    assert "\n" not in message and str(mlp) not in message
    assert f"{grid} uses GridSample; {custom} uses com.example::FusedGelu: ops" in message
    assert "re-export those models without them" in message
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["models"]


def test_models_whose_if_branches_read_a_cut(tmp_path):
    paths = [F.if_model(tmp_path / f"m{seed}.onnx", seed=seed) for seed in (0, 1)]
    result = decompose(paths, tmp_path / "p")
    assert result.levels == 2 and [c.indices for c in result.common] == [[0, 0], [1, 1]]
    assert max(result.worst_diff.values()) <= 1e-5
    level2 = onnx.load(str(tmp_path / "p" / "m1" / "level2.onnx"))
    assert [i.name for i in level2.graph.input] == ["x"] and "If" in {n.op_type for n in level2.graph.node}
    # What fuse does with the pool: every written component loads, and chained they are the source model.
    x = np.random.default_rng(2).normal(size=(7, 4)).astype(np.float32)
    for path, name in zip(paths, ("m0", "m1")):
        parts = [load_component(tmp_path / "p" / name / f"{part}.onnx") for part in ("level1", "level2", "head")]
        with torch.no_grad():
            h = torch.from_numpy(x)
            for part in parts:
                h = part(h)
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        assert np.abs(h.numpy() - want).max() <= 1e-5


def test_an_if_whose_condition_depends_on_the_data_is_refused_before_writing(tmp_path):
    models = tmp_path / "models"
    paths = [F.if_model(models / "const.onnx"), F.if_model(models / "data.onnx", data_condition=True)]
    x = np.ones((3, 4), np.float32)
    assert ort.InferenceSession(str(paths[1]), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0].shape == (3, 1)
    with pytest.raises(FusekitError, match="condition depends on the data"):
        load_component(paths[1])
    out = tmp_path / "parts"
    with pytest.raises(FusekitError) as info:
        decompose(paths, out)
    message = str(info.value)
    assert "\n" not in message and str(paths[0]) not in message
    assert f"{paths[1]} uses If (condition computed from the data): ops" in message
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == ["models"]


def test_a_fused_module_around_an_if_component_exports(tmp_path):
    from fusekit.onnxio.export import export_onnx

    paths = [F.if_model(tmp_path / f"m{seed}.onnx", seed=seed) for seed in (0, 1)]
    decompose(paths, tmp_path / "p")

    class Wrapped(torch.nn.Module):
        """A tiny fusion network: frozen level1 and level2 (the If) under a trainable linear head."""

        def __init__(self) -> None:
            super().__init__()
            self.parts = torch.nn.ModuleList(load_component(tmp_path / "p" / "m1" / f"level{k}.onnx") for k in (1, 2))
            self.head = torch.nn.Linear(6, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for part in self.parts:
                x = part(x)
            return torch.sigmoid(self.head(x))

    module = Wrapped().eval()
    example = [torch.randn(16, 4, generator=torch.Generator().manual_seed(0))]
    out = export_onnx(module, tmp_path / "fused.onnx", example, ["x"], ["p"], {}, "If component")
    assert "If" not in {n.op_type for n in onnx.load(str(out)).graph.node}  # the branch was chosen at load
    x = np.random.default_rng(3).normal(size=(5, 4)).astype(np.float32)
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    with torch.no_grad():
        assert np.abs(got - module(torch.from_numpy(x)).numpy()).max() <= 1e-6


def test_an_input_map_aligns_models_that_name_the_same_input_differently(tmp_path, capsys):
    """Two real torch exports of one architecture, one with its input called gpu_0/data_0."""
    import warnings

    import torch

    from fusekit.cli.main import main
    from fusekit.decompose.manifest import Manifest

    paths = []
    for k, name in enumerate(("data_0", "gpu_0/data_0")):
        torch.manual_seed(k)
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4), torch.nn.ReLU(),
                                    torch.nn.Linear(4, 1)).eval()
        path = tmp_path / f"m{k}.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (torch.randn(2, 6),), str(path), input_names=[name], output_names=["y"],
                              dynamo=False, dynamic_axes={name: {0: "batch"}, "y": {0: "batch"}})
        paths.append(path)
    before = [p.read_bytes() for p in paths]
    assert main(["decompose", *map(str, paths), "-o", str(tmp_path / "bad")]) == 2
    assert "inputs" in capsys.readouterr().err
    assert main(["decompose", *map(str, paths), "-o", str(tmp_path / "parts"), "--input-map", "gpu_0/data_0=data_0"]) == 0
    out = capsys.readouterr().out
    assert "m1: inputs renamed 'gpu_0/data_0' -> 'data_0'" in out
    assert Manifest.load(tmp_path / "parts").input_names == ["data_0"]
    assert [p.read_bytes() for p in paths] == before  # the input files are never touched
    assert main(["decompose", *map(str, paths), "-o", str(tmp_path / "none"), "--input-map", "nope=data_0"]) == 2
    assert "no model has an input named 'nope'" in capsys.readouterr().err


class _RaggedBags(torch.nn.Module):
    """nn.EmbeddingBag over 1-D ids with offsets: ids [n] for all rows together, offsets [batch]."""

    def __init__(self, depth: int):
        super().__init__()
        self.bag = torch.nn.EmbeddingBag(20, 4, mode="sum")
        self.top = torch.nn.Sequential(*[m for _ in range(depth) for m in (torch.nn.Linear(4, 4), torch.nn.ReLU())],
                                       torch.nn.Linear(4, 1))

    def forward(self, ids, offsets):
        return torch.sigmoid(self.top(self.bag(ids, offsets))[:, 0])


def test_inputs_that_are_not_one_row_per_example_are_refused_with_the_fixed_size_bag_form(tmp_path):
    ids, offsets = torch.tensor([1, 2, 3, 4, 5, 6, 7]), torch.tensor([0, 2, 5])
    paths = []
    for depth in (1, 2):
        torch.manual_seed(depth)
        path = tmp_path / f"m{depth}.onnx"
        torch.onnx.export(_RaggedBags(depth).eval(), (ids, offsets), str(path), dynamo=False,
                          input_names=["ids", "offsets"], output_names=["p"],
                          dynamic_axes={"ids": {0: "n"}, "offsets": {0: "batch"}, "p": {0: "batch"}})
        paths.append(path)
    with pytest.raises(FusekitError, match=r"model m1: output 'p' has 'batch' rows, which input 'offsets' gives, but "
                                           r"input 'ids' is \[n\]: fusekit takes every input batch first.*ids \[batch, bag\]"):
        decompose(paths, tmp_path / "parts")
    assert not (tmp_path / "parts").exists()
