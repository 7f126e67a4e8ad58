"""Library messages name arguments and option fields, never flags; the command line prints its flags."""
from __future__ import annotations

import ast
import re
from pathlib import Path

import onnx
import pytest
from onnx import helper

from fusekit.cli.main import main
from fusekit.decompose.pipeline import decompose
from fusekit.errors import FusekitError
from fusekit.fusion.fuse import fuse
from fusekit.io import check_output_dir
from tests import onnx_fixtures as F

PACKAGE = Path(__file__).resolve().parents[1] / "fusekit"
FLAG = re.compile(r"--[A-Za-z]|(^|\s)-o(\s|$)")


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("fusekit: error: "), err
    return err[-1]


@pytest.fixture()
def pair(tmp_path) -> list[Path]:
    """Two three-layer Gemm chains that share every layer, each carrying a task."""
    paths = []
    for name, task in (("a", "t1"), ("b", "t2")):
        path = F.gemm_chain(tmp_path / f"{name}.onnx", 3, seed=len(paths))
        model = onnx.load(str(path))
        helper.set_model_props(model, {"fusekit.task": task})
        onnx.save(model, str(path))
        paths.append(path)
    return paths


def test_output_dir_message_names_arguments_for_the_library_and_flags_for_the_cli(pair, tmp_path, capsys):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(FusekitError) as caught:
        check_output_dir(busy, force=False)
    assert str(caught.value) == (f"output directory {busy} exists and is not empty; choose another out_dir "
                                 "or pass force=True")
    assert main(["decompose", *map(str, pair), "-o", str(busy), "-q"]) == 2
    assert _error_line(capsys).endswith("is not empty; choose another -o or pass --force")


def test_decompose_levels_messages(pair, tmp_path, capsys):
    with pytest.raises(FusekitError) as caught:
        decompose(pair, tmp_path / "p", levels=9)
    message = str(caught.value)
    assert "--" not in message and message.startswith("levels=9 asks for more levels than the 3 common layers")
    assert message.endswith("use levels=3 or fewer")
    with pytest.raises(FusekitError, match=r"^levels must be a positive number or 'all', not 'some'$"):
        decompose(pair, tmp_path / "p", levels="some")
    assert main(["decompose", *map(str, pair), "-o", str(tmp_path / "p"), "--levels", "9", "-q"]) == 2
    line = _error_line(capsys)
    assert "error: --levels 9 asks for more levels" in line and line.endswith("use --levels 3 or fewer")
    assert main(["decompose", *map(str, pair), "-o", str(tmp_path / "p"), "--names", "x/y", "z", "-q"]) == 2
    assert _error_line(capsys).endswith("cannot be a folder name; give plain names in --names")
    assert not (tmp_path / "p").exists()


def test_a_model_in_two_tasks(pair, tmp_path, capsys):
    parts = tmp_path / "parts"
    decompose(pair, parts)
    with pytest.raises(FusekitError) as caught:
        fuse(parts, {"t1": ["a"], "t2": ["a", "b"]}, tmp_path / "none.csv", tmp_path / "out")
    assert str(caught.value) == "model a is in two tasks (t1 and t2); put each model in one task of tasks"
    argv = ["fuse", str(parts), "--tasks", "t1=a", "t2=a,b", "--data", str(tmp_path / "none.csv"),
            "-o", str(tmp_path / "out")]
    assert main(argv) == 2
    assert _error_line(capsys) == ("fusekit: error: model a is in two tasks (t1 and t2); put each model in one "
                                   "task of --tasks")


def test_function_owners_render_bare_names_and_on_off_flags():
    error = FusekitError("pass {verify=False} or fix {levels} ({levels=2})", owner="decompose()")
    assert str(error) == "pass verify=False or fix levels (levels=2)"
    flags = {"decompose().verify": ("--no-verify", False), "levels": ("--levels", None)}
    assert error.render(flags) == "pass --no-verify or fix --levels (--levels 2)"
    # Another owner's spelling of the same name is not borrowed.
    assert error.render({"fuse().verify": ("--other", None)}) == "pass verify=False or fix levels (levels=2)"


def flag_literals(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal that names a flag in a raise statement or in an
    ``...Error(`` call."""
    found: set[tuple[int, str]] = set()
    for node in ast.walk(ast.parse(source)):
        is_error_call = (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
                         and (getattr(node.func, "id", None) or getattr(node.func, "attr", "")).endswith("Error"))
        if isinstance(node, ast.Raise) or is_error_call:
            for inner in ast.walk(node):
                if isinstance(inner, ast.Constant) and isinstance(inner.value, str) and FLAG.search(inner.value):
                    found.add((inner.lineno, inner.value))  # a raised Error call is visited twice
    return sorted(found)


def test_the_scan_finds_flags_in_messages():
    source = ("def f(x):\n"
              "    if x:\n"
              "        raise FusekitError(f'bad {x}; pass --force')\n"
              "    raise _helper('choose another -o')\n"
              "    return errors.OptionError('use --levels 2', owner='A')\n"
              "    print('--verbose is fine here')\n")
    assert [line for line, _ in flag_literals(source)] == [3, 4, 5]


def test_no_library_message_names_a_flag():
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}: {text!r}"
                 for path in sorted(PACKAGE.rglob("*.py")) if "cli" not in path.relative_to(PACKAGE).parts
                 for line, text in flag_literals(path.read_text())]
    assert not offenders, "library messages naming flags:\n" + "\n".join(offenders)
