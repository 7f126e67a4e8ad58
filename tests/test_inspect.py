"""fusekit.decompose.inspect: one model's layers and cut points, and the ops fuse could not run."""
from __future__ import annotations

import json

import torch

from fusekit.decompose.inspect import inspect_model, result_json
from tests import onnx_fixtures as F


def test_inspect_reports_the_ops_fusekit_cannot_run(tmp_path):
    x = (torch.randn(2, 8),)
    gru = inspect_model(F.export(F.gru_classifier(), x, tmp_path / "gru.onnx", False, ["x"], ["y"]))
    mlp = inspect_model(F.export(F.dense_mlp(), x, tmp_path / "mlp.onnx", False, ["x"], ["y"]))
    assert json.loads(result_json(gru))["unsupported_ops"] == ["GRU"]
    assert "unsupported: GRU" in gru.table() and "decompose refuses this model" in gru.table()
    assert json.loads(result_json(mlp))["unsupported_ops"] == []
    assert "unsupported" not in mlp.table()
