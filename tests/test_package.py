"""The package as users get it: the public API, package data, metadata and a light import."""
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import fusekit

REPO = Path(__file__).resolve().parents[1]


def test_every_public_name_resolves_to_its_owner():
    for name in fusekit.__all__:
        value = getattr(fusekit, name)
        if name != "__version__":
            assert value.__module__.startswith("fusekit"), name


def test_decompose_names_the_subpackage_whatever_was_imported_first():
    import fusekit.decompose

    assert fusekit.decompose.decompose.__module__ == "fusekit.decompose.pipeline"
    assert fusekit.DecomposeResult is fusekit.decompose.DecomposeResult


def test_import_fusekit_loads_neither_torch_nor_pandas():
    code = "import sys, fusekit; print(sorted(m for m in ('torch', 'pandas', 'onnx') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_declared_dependencies_name_one_onnxruntime_and_the_readme_the_gpu_switch():
    requires = metadata.requires("fusekit") or []
    names = [r.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower() for r in requires]
    # onnxruntime and onnxruntime-gpu overwrite each other's files: exactly one is declared.
    assert "onnxruntime" in names and "onnxruntime-gpu" not in names
    readme = (REPO / "README.md").read_text()
    assert "pip uninstall -y onnxruntime" in readme and "pip install onnxruntime-gpu" in readme


def test_license_file_is_shipped_and_declared():
    assert (REPO / "LICENSE").read_text().lstrip().startswith("Apache License")
    assert metadata.metadata("fusekit")["License"] == "Apache-2.0"


def test_no_top_level_cli_package_is_installed():
    top = (metadata.distribution("fusekit").read_text("top_level.txt") or "fusekit").split()
    assert top == ["fusekit"]
