"""``fusekit bench-merge``: runs made in separate processes combine into one report."""
from __future__ import annotations

import json

import pytest
import torch

from fusekit.cli.main import main
from fusekit.bench import run_bench
from fusekit.bench.merge import load_result, merge_results
from fusekit.errors import FusekitError

TASKS2 = ["income", "never_married"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("merge")
    a = run_bench("census-income", TASKS2, 1, True, root / "a", methods=["shared-bottom"], three_tasks=None)
    b = run_bench("census-income", TASKS2, 1, True, root / "b", methods=["mmoe"], three_tasks=None)
    return root, a, b


def test_round_trip_and_merge_keep_every_number(two_runs, tmp_path, capsys):
    root, a, b = two_runs
    again = load_result(root / "a")
    assert again.sets[0].row("shared-bottom").auc == a.sets[0].row("shared-bottom").auc
    assert main(["bench-merge", str(root / "a"), str(root / "b"), "-o", str(tmp_path / "m")]) == 0
    assert "MMoE" in capsys.readouterr().out
    data = json.loads((tmp_path / "m" / "results.json").read_text())
    rows = {r["method"]: r["auc"] for r in data["sets"][0]["rows"]}
    assert rows["shared-bottom"] == a.sets[0].row("shared-bottom").auc
    assert rows["mmoe"] == b.sets[0].row("mmoe").auc
    assert (tmp_path / "m" / "auc.png").read_bytes()[:4] == b"\x89PNG"
    # Merged in the other order, the rows still come in the registry's order.
    merged = merge_results([b, a], tmp_path / "r")
    assert [r.method for r in merged.sets[0].rows] == ["shared-bottom", "mmoe"]


def test_runs_with_other_settings_do_not_merge(two_runs, tmp_path):
    root, a, b = two_runs
    b.budget = {**b.budget, "lr": 0.5}
    with pytest.raises(FusekitError, match="different budget"):
        merge_results([a, b], tmp_path / "m")
    assert main(["bench-merge", str(tmp_path / "missing"), "-o", str(tmp_path / "n")]) == 2
    assert not (tmp_path / "n").exists()
