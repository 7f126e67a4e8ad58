"""The typed manifest of a parts directory and the one rule for which models belong to which task.

Real files throughout: small MLPs exported to ONNX with a ``fusekit.task`` each, decomposed by
``fusekit.decompose``; the manifest is then read, rewritten, damaged and checked.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
import torch
from onnx import helper

from fusekit.bench.sources import find_sources
from fusekit.decompose.manifest import (MANIFEST, Manifest, check_task_mapping, relative_source_path,
                                        task_groups)
from fusekit.decompose.pipeline import decompose
from fusekit.deploy.evaluate import model_info, tasks_of
from fusekit.errors import FusekitError
from tests import onnx_fixtures as F

# File order differs from task order on purpose: groups keep the models' own order.
MODELS = {"b_one": "beta", "a_two": "alpha", "b_three": "beta"}


def _export(path: Path, seed: int, task: str | None) -> Path:
    F.export(F.dense_mlp(8, (16, 16, 16), seed), (torch.randn(2, 8),), path, False, ["x"], ["y"])
    if task is not None:
        model = onnx.load(str(path))
        helper.set_model_props(model, {"fusekit.task": task})
        onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Three exported models, each naming its task in its metadata."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("project") / "models"
    return {name: _export(folder / f"{name}.onnx", seed, task) for seed, (name, task) in enumerate(MODELS.items())}


@pytest.fixture(scope="module")
def parts(models) -> Path:
    """The models decomposed beside their folder: project/parts next to project/models."""
    out = next(iter(models.values())).parent.parent / "parts"
    decompose(list(models.values()), out, verify=False)
    return out


@pytest.fixture
def copy(parts, tmp_path) -> Path:
    """A copy of the parts this test may damage."""
    return Path(shutil.copytree(parts, tmp_path / "parts"))


def _one_line_error(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert message and "\n" not in message, message
    return message


# -- the format ------------------------------------------------------------------------------------
def test_round_trip_through_write_and_load_keeps_the_file_and_the_typed_entries(parts, tmp_path):
    text = (parts / MANIFEST).read_text()
    manifest = Manifest.load(parts)
    assert manifest.to_dict() == json.loads(text)
    assert Manifest.from_dict(json.loads(text), parts) == manifest
    assert manifest.names == list(MODELS) and manifest.input_names == ["x"]
    assert manifest.levels == len(manifest.boundaries) == 3 and manifest.boundary_dims() == [16, 16, 16]
    assert manifest.component_path("a_two", 3) == parts / "a_two" / "level3.onnx"
    assert all(p.is_file() for m in manifest.names for p in manifest.component_paths(m) + [manifest.head_path(m)])
    assert manifest.model("b_three").task == "beta" and manifest.feature_spec() is None
    # Written elsewhere (with the components beside it), the same file comes back byte for byte.
    other = tmp_path / "other"
    shutil.copytree(parts, other)
    (other / MANIFEST).unlink()
    assert manifest.write(other) == other / MANIFEST and manifest.root == other
    assert (other / MANIFEST).read_text() == text
    again = Manifest.load(other)
    assert again.to_dict() == json.loads(text) and again.root == other
    with pytest.raises(FusekitError, match="no model named 'nobody'"):
        manifest.model("nobody")


def _drop_key(data: dict) -> None:
    del data["models"][1]["head_sha256"]


def _drop_top_key(data: dict) -> None:
    del data["boundaries"]


def _more_levels(data: dict) -> None:
    data["levels"] = 4


def _fewer_components(data: dict) -> None:
    data["models"][0]["components"].pop()


def _one_model(data: dict) -> None:
    data["models"] = data["models"][:1]


def _same_name(data: dict) -> None:
    data["models"][1]["name"] = data["models"][0]["name"]


@pytest.mark.parametrize("damage, expected", [
    (_drop_key, "a model entry lacks 'head_sha256'"),
    (_drop_top_key, "lacks 'boundaries'"),
    (_more_levels, "says 4 levels but describes 3 boundaries"),
    (_fewer_components, "lists 2 components for model b_one but 3 levels"),
    (_one_model, "fewer than two models"),
    (_same_name, "lists model b_one twice"),
])
def test_an_inconsistent_manifest_is_refused_in_one_line(copy, damage, expected):
    data = json.loads((copy / MANIFEST).read_text())
    damage(data)
    (copy / MANIFEST).write_text(json.dumps(data))
    with pytest.raises(FusekitError) as exc:
        Manifest.load(copy)
    message = _one_line_error(exc)
    assert expected in message and str(copy / MANIFEST) in message and "decompose again" in message


def test_changed_or_missing_component_files_are_refused_in_one_line(copy):
    component = copy / "a_two" / "level1.onnx"
    component.write_bytes(component.read_bytes() + b"\0")
    with pytest.raises(FusekitError) as exc:
        Manifest.load(copy)
    assert f"component {component} changed since decompose" in _one_line_error(exc)
    assert Manifest.load(copy, check_files=False).names == list(MODELS)  # the JSON itself is fine
    (copy / "b_three" / "head.onnx").unlink()
    component.write_bytes(component.read_bytes()[:-1])
    with pytest.raises(FusekitError) as exc:
        Manifest.load(copy)
    assert "head.onnx is missing" in _one_line_error(exc)


def test_a_missing_or_unreadable_manifest_is_refused_in_one_line(copy, tmp_path):
    with pytest.raises(FusekitError) as exc:
        Manifest.load(tmp_path / "nowhere")
    assert "manifest.json does not exist" in _one_line_error(exc)
    (copy / MANIFEST).write_text("{not json")
    with pytest.raises(FusekitError) as exc:
        Manifest.load(copy)
    assert "is not valid JSON" in _one_line_error(exc)


def test_source_paths_are_recorded_relative_to_the_parts_never_absolute(models, parts, tmp_path):
    text = (parts / MANIFEST).read_text()
    manifest = Manifest.load(parts)
    assert [m.path for m in manifest.models] == [f"../models/{name}.onnx" for name in MODELS]
    assert all(manifest.source_path(m).resolve() == models[m].resolve() for m in MODELS)
    assert str(parts.parent) not in text
    # Parts far from the models: only the file name (the sha256 still identifies the file).
    far = tmp_path / "deep" / "er" / "parts"
    decompose(list(models.values()), far, verify=False)
    assert [m.path for m in Manifest.load(far).models] == [f"{name}.onnx" for name in MODELS]
    assert str(parts.parent) not in (far / MANIFEST).read_text()
    # Within the folder that holds the parts: relative (the two move together); further: the name.
    assert relative_source_path(tmp_path / "parts" / "m.onnx", tmp_path / "parts") == "m.onnx"
    assert relative_source_path(tmp_path / "a" / "b" / "m.onnx", tmp_path / "parts") == "../a/b/m.onnx"
    assert relative_source_path(tmp_path / "a" / "m.onnx", tmp_path / "x" / "parts") == "m.onnx"


# -- which models belong to which task -------------------------------------------------------------
def test_task_groups_keep_the_models_order_from_the_manifest_and_from_files(models, parts):
    expected = {"beta": ["b_one", "b_three"], "alpha": ["a_two"]}
    groups = Manifest.load(parts).task_groups()
    assert groups == expected and list(groups) == ["beta", "alpha"]
    assert task_groups(list(models.values())) == expected
    assert list(task_groups([models["a_two"], models["b_one"]])) == ["alpha", "beta"]
    assert tasks_of(model_info(models["a_two"])) == ["alpha"]


def test_the_bench_finds_its_sources_by_the_same_rule(models):
    folder = models["a_two"].parent
    found = find_sources(folder, ["beta", "alpha"])
    assert [(s.name, s.task) for s in found] == [("b_one", "beta"), ("b_three", "beta"), ("a_two", "alpha")]
    with pytest.raises(FusekitError) as exc:
        find_sources(folder, ["alpha", "gamma"])
    assert "no single-task model for task(s) gamma" in _one_line_error(exc)


def test_a_model_without_a_task_is_named(models, tmp_path):
    anon = _export(tmp_path / "anon.onnx", 7, None)
    with pytest.raises(FusekitError) as exc:
        task_groups([models["a_two"], anon])
    assert f"{anon} has no fusekit.task metadata" in _one_line_error(exc)
    parts = tmp_path / "parts"
    decompose([models["a_two"], anon], parts, verify=False)
    with pytest.raises(FusekitError) as exc:
        Manifest.load(parts).task_groups()
    assert "model anon" in _one_line_error(exc) and "fusekit.task" in str(exc.value)


@pytest.mark.parametrize("tasks, expected", [
    ({"alpha": ["a_two"], "beta": ["b_one", "nobody"]}, "task beta names unknown model 'nobody'"),
    ({"alpha": ["a_two", "b_one"], "beta": ["b_one"]}, "model b_one is in two tasks (alpha and beta)"),
    ({"alpha": ["a_two", "b_one", "b_three"]}, "at least two tasks"),
    ({"alpha": ["a_two"], "beta": []}, "task beta names no model"),
])
def test_an_explicit_task_mapping_is_checked_against_the_models(parts, tasks, expected):
    manifest = Manifest.load(parts)
    with pytest.raises(FusekitError) as exc:
        manifest.check_tasks(tasks)
    message = _one_line_error(exc)
    assert expected in message and "--tasks" not in message


def test_a_valid_mapping_may_regroup_the_models_and_comes_back_as_plain_lists(parts):
    manifest = Manifest.load(parts)
    mapping = manifest.check_tasks({"left": ("b_three", "a_two"), "right": ("b_one",)}, ignore_metadata=True)
    assert mapping == {"left": ["b_three", "a_two"], "right": ["b_one"]}
    assert check_task_mapping({"x": ["m"], "y": ["n"]}, ["m", "n", "o"]) == {"x": ["m"], "y": ["n"]}
