"""``fusekit decompose`` and ``fusekit inspect`` as a user runs them (subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests import onnx_fixtures as F

ROOT = Path(__file__).resolve().parents[1]


def _start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "fusekit", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=240)
    return proc.returncode, out, err


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli")
    args = F.embedding_mlp_inputs()
    x = (torch.randn(2, 8),)
    return {
        "a": F.export(F.embedding_mlp(widths=(16, 8)), args, root / "a.onnx", False, ["categorical", "dense"], ["p"]),
        "b": F.export(F.embedding_mlp(widths=(12, 16, 8), seed=1), args, root / "b.onnx", False,
                      ["categorical", "dense"], ["p"]),
        "d12": F.export(F.dense_mlp(widths=(12,)), x, root / "d12.onnx", False, ["x"], ["y"]),
        "d20": F.export(F.dense_mlp(widths=(20,), seed=1), x, root / "d20.onnx", False, ["x"], ["y"]),
    }


def test_decompose_json_and_inspect(models, tmp_path):
    out = tmp_path / "parts"
    decomp = _start("decompose", str(models["a"]), str(models["b"]), "-o", str(out), "--json")
    insp = _start("inspect", str(models["b"]))
    code, stdout, stderr = _finish(decomp)
    assert code == 0, stderr
    data = json.loads(stdout)
    assert data["levels"] == 2 and data["candidates"] == 2
    assert data["common_layers"][1]["indices"] == {"a": 2, "b": 3}
    assert data["verification"]["max_abs_diff"]["b"] <= 1e-5
    assert (out / "manifest.json").is_file() and (out / "b" / "level2.onnx").is_file()
    code, stdout, stderr = _finish(insp)
    assert code == 0, stderr
    assert "Linear(16->12)+Relu" in stdout and "cut points" in stdout
    assert "no: ends at the model output" in stdout


def test_bad_input_one_line_exit_2_nothing_written(models, tmp_path):
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(models["a"].read_bytes()[:300])
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "old.txt").write_text("keep me")
    a, b = str(models["a"]), str(models["b"])
    cases = {
        "missing": (["decompose", a, str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o1")], "does not exist"),
        "truncated": (["decompose", a, str(truncated), "-o", str(tmp_path / "o2")], "not a valid ONNX model"),
        "single": (["decompose", a, "-o", str(tmp_path / "o3")], "at least two models"),
        "inputs": (["decompose", a, str(models["d12"]), "-o", str(tmp_path / "o4")], "different inputs"),
        "busy": (["decompose", a, b, "-o", str(busy)], "not empty"),
        "no_common": (["decompose", str(models["d12"]), str(models["d20"]), "-o", str(tmp_path / "o6")],
                      "no layer is common"),
    }
    procs = {name: _start(*argv, "-q") for name, (argv, _) in cases.items()}  # -q: no progress lines
    for name, proc in procs.items():
        code, stdout, stderr = _finish(proc)
        lines = [ln for ln in stderr.splitlines() if ln.strip() and "torchvision" not in ln]
        assert code == 2, (name, stderr)
        assert len(lines) == 1 and lines[0].startswith("fusekit: error:"), (name, stderr)
        assert cases[name][1] in lines[0], (name, lines[0])
        assert "Traceback" not in stderr and stdout == ""
    for k in (1, 2, 3, 4, 6):
        assert not (tmp_path / f"o{k}").exists()
    assert [p.name for p in busy.iterdir()] == ["old.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


SAMPLES = sorted((ROOT / "fusekit" / "sample_models" / "census2").glob("*.onnx"))


def test_json_is_the_only_thing_on_stdout_and_progress_goes_to_stderr(tmp_path):
    assert len(SAMPLES) == 4
    decomp = _start("decompose", *map(str, SAMPLES), "-o", str(tmp_path / "parts"), "--json")
    quiet = _start("decompose", *map(str, SAMPLES), "-o", str(tmp_path / "quiet"), "--json", "-q", "--no-verify")
    insp = _start("inspect", str(SAMPLES[0]), "--json")
    code, stdout, stderr = _finish(decomp)
    assert code == 0, stderr
    data = json.loads(stdout)  # the whole of stdout is one JSON document
    assert [m["name"] for m in data["models"]] == [p.stem for p in SAMPLES] and data["levels"] >= 1
    progress = [ln for ln in stderr.splitlines() if ln.startswith("fusekit: ")]
    for sample in SAMPLES:
        for step in ("loaded", "analysed", "cut"):
            assert any(ln.startswith(f"fusekit: {step} {sample.stem}") for ln in progress), (step, stderr)
    code, stdout, stderr = _finish(quiet)
    assert code == 0 and json.loads(stdout)["levels"] == data["levels"]
    assert not [ln for ln in stderr.splitlines() if ln.startswith("fusekit: ")], stderr
    code, stdout, stderr = _finish(insp)
    assert code == 0, stderr
    layers = json.loads(stdout)["layers"]
    assert layers and all({"index", "signature", "cuttable"} <= set(layer) for layer in layers)


def test_a_long_table_is_cut_short_unless_verbose(tmp_path, capsys):
    from fusekit.cli.args import TABLE_ROWS
    from fusekit.cli.main import main

    x = (torch.randn(2, 8),)
    deep = [F.export(F.dense_mlp(widths=(8,) * 30, seed=s), x, tmp_path / f"deep{s}.onnx", False, ["x"], ["y"])
            for s in (0, 1)]
    assert main(["decompose", *map(str, deep), "-o", str(tmp_path / "p1"), "--no-verify", "-q"]) == 0
    short = capsys.readouterr().out
    assert main(["decompose", *map(str, deep), "-o", str(tmp_path / "p2"), "--no-verify", "-q", "--verbose"]) == 0
    full = capsys.readouterr().out

    def rows(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if ln[:3].strip().isdigit() and ln[3:5] == "  "]

    n_common = int(full.split(" common cuttable layers")[0].splitlines()[-1])
    assert n_common > TABLE_ROWS and len(rows(full)) == n_common
    assert len(rows(short)) == TABLE_ROWS
    more = [ln for ln in short.splitlines() if "more (use --verbose or --json)" in ln]
    assert more and sum(int(ln.split()[1]) for ln in more) == n_common - TABLE_ROWS
    # the ends of the levels are always shown
    assert short.count("<- end of level") == full.count("<- end of level") == 3
