"""fusekit.decompose.inspect: one model's layers and cut points, and the ops fuse could not run."""
from __future__ import annotations

import json

import torch

from fusekit.decompose.inspect import inspect_model, result_json
from tests import onnx_fixtures as F


def test_inspect_reports_the_ops_fusekit_cannot_run(tmp_path):
    x = (torch.randn(2, 8),)
    grid = inspect_model(F.export(F.grid_sampler(), x, tmp_path / "grid.onnx", False, ["x"], ["y"], opset=18))
    mlp = inspect_model(F.export(F.dense_mlp(), x, tmp_path / "mlp.onnx", False, ["x"], ["y"]))
    assert json.loads(result_json(grid))["unsupported_ops"] == ["GridSample"]
    assert "unsupported: GridSample" in grid.table() and "decompose refuses this model" in grid.table()
    assert json.loads(result_json(mlp))["unsupported_ops"] == []
    assert "unsupported" not in mlp.table()


def test_a_long_inspect_table_is_cut_short_unless_verbose(tmp_path, capsys):
    from fusekit.cli.args import TABLE_ROWS
    from fusekit.cli.main import main

    model = F.gemm_chain(tmp_path / "chain.onnx", 40)
    assert main(["inspect", str(model)]) == 0
    short = capsys.readouterr().out
    assert main(["inspect", str(model), "--verbose"]) == 0
    full = capsys.readouterr().out
    assert main(["inspect", str(model), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)

    def rows(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if ln[:3].strip().isdigit() and ln[3:5] == "  "]

    def cut_lines(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if ln.startswith("  after op")]

    n_layers, n_cuts = len(data["layers"]), len(data["cut_points"])
    assert n_layers == 41 and n_cuts > TABLE_ROWS  # 40 Gemm+Relu layers and the output Gemm
    assert len(rows(full)) == n_layers and len(cut_lines(full)) == n_cuts
    assert len(rows(short)) == TABLE_ROWS and len(cut_lines(short)) == TABLE_ROWS
    more = [ln for ln in short.splitlines() if "more (use --verbose or --json)" in ln]
    assert sum(int(ln.split()[1]) for ln in more) == n_layers - TABLE_ROWS + n_cuts - TABLE_ROWS
    # the first layer and the head are always shown
    assert rows(short)[0] == rows(full)[0] and rows(short)[-1] == rows(full)[-1]
    # the library's table is complete unless asked for a limit
    assert len(rows(inspect_model(model).table())) == n_layers
