"""``fusekit bench``: the quick run's tables, seeded repeatability, and bad input."""
from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib.image as mpimg
import pytest
import torch

from fusekit.cli.main import main
from fusekit.models.baselines import BASELINES
from fusekit.bench import run_bench
from fusekit.errors import FusekitError

TASKS2 = ["income", "never_married"]
TASKS3 = ["income", "never_married", "education"]
COMMITTED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "census"


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _check_auc(value) -> None:
    assert isinstance(value, float) and math.isfinite(value) and 0.5 < value <= 1.0, value


@pytest.fixture(scope="module")
def quick_bench(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("bench") / "out"
    result = run_bench("census-income", TASKS2, 1, True, out, three_tasks=TASKS3)
    return result, out


def test_quick_bench_writes_table_one_two_and_the_three_task_table(quick_bench):
    result, out = quick_bench
    assert sorted(p.name for p in out.iterdir()) == ["auc.png", "cells", "protocol.json", "results.json", "tables.md"]
    assert (out / "auc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((out / "results.json").read_text())
    assert data["quick"] is True and data["seeds"] == [0]
    assert [s["tasks"] for s in data["sets"]] == [TASKS2, TASKS3]
    for set_data in data["sets"]:
        tasks = set_data["tasks"]
        rows = {r["method"]: r for r in set_data["rows"]}
        singles = [r for r in set_data["rows"] if r["kind"] == "single"]
        assert len(singles) == 2 * len(tasks)
        assert sorted({next(iter(r["auc"])) for r in singles}) == sorted(tasks)
        assert set(BASELINES) | {"average", "emm", "emm-paper"} <= set(rows)
        for row in set_data["rows"]:
            for task, values in row["auc"].items():
                assert len(values) == 1  # one seed
                for v in values:
                    _check_auc(v)
            if row["kind"] != "single":
                assert set(row["auc"]) == set(tasks)
                for task in tasks:
                    assert isinstance(row["gain_vs_single_mean"][task], float)
            assert row["parameters"] > 0
        for name in BASELINES:
            assert rows[name]["trainable"] == rows[name]["parameters"]  # trained from scratch
        for name in ("emm", "emm-paper"):
            # Only the fusion network trains; the source components inside are frozen.
            assert 0 < rows[name]["trainable"] < rows[name]["parameters"]
        assert rows["average"]["trainable"] == 0
    assert data["sets"][1]["ablation"] == []  # Table II is for the first task set only
    gates = data["sets"][1]["gates"]["emm-paper"]
    assert len(gates["levels"]) >= 1
    for level in gates["levels"]:
        assert set(level["tasks"]) == set(TASKS3)
        for task, info in level["tasks"].items():
            assert set(info["selected_fraction"]) == set(TASKS3) - {task}
            assert sum(info["selected_fraction"].values()) == pytest.approx(1.0, abs=1e-6)
    text = (out / "tables.md").read_text()
    for heading in ("### Table I: income, never_married", "### Table II", "### Table I, 3 tasks",
                    "#### Gates of emm-paper", "### Hyperparameters"):
        assert heading in text
    assert "0.94108 / 0.99467" in text  # the paper's EMM figures beside ours


def test_quick_bench_ablation_has_the_papers_four_variants(quick_bench):
    result, out = quick_bench
    ablation = result.sets[0].ablation
    assert [r.method for r in ablation] == ["baseline", "baseline+mtm", "baseline+p", "full"]
    assert [(r.extra["fusion"]["pretrained"], r.extra["fusion"]["use_mtm"]) for r in ablation] == [
        (False, False), (False, True), (True, False), (True, True)]
    for row in ablation:
        assert "error" not in row.extra, row.extra.get("error")
        for task in TASKS2:
            _check_auc(row.auc[task][0])
    # The full variant is the paper network of Table I, trained once.
    assert ablation[-1].auc == result.sets[0].row("emm-paper").auc
    # Variants without trained components train their whole structure.
    assert ablation[0].trainable > ablation[2].trainable



def _chart_panels(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible() and ax.get_yticklabels()]


def _close(fig) -> None:
    import matplotlib.pyplot as plt  # after the chart code has chosen the Agg backend

    plt.close(fig)


def test_the_quick_runs_chart_says_it_is_quick(quick_bench):
    from fusekit.bench.chart import _chart_figure

    result, _ = quick_bench
    fig = _chart_figure(result)
    try:
        assert fig.get_suptitle().startswith("QUICK RUN (--quick: 2 epochs, 10,000 training rows, seed 0)")
        assert len(_chart_panels(fig)) == len(TASKS2) + len(TASKS3)
    finally:
        _close(fig)


def test_the_committed_benchmark_chart_draws_points_against_the_sources_average(tmp_path):
    """On the committed census results: points with seed spread (no bars), a zoomed axis that says
    so, the sources' average as a vertical reference line in every panel, no quick note."""
    from matplotlib.container import BarContainer

    from fusekit.bench.chart import _chart_figure, write_chart
    from fusekit.bench.merge import load_result

    result = load_result(COMMITTED)
    fig = _chart_figure(result)
    try:
        panels = _chart_panels(fig)
        expected = [(s, t) for s in result.sets for t in s.tasks]
        assert len(panels) == len(expected) == 5
        for ax, (task_set, task) in zip(panels, expected):
            rows = [r for r in task_set.rows if r.mean(task) is not None]
            assert [t.get_text() for t in ax.get_yticklabels()] == [r.method for r in rows]
            assert not any(isinstance(c, BarContainer) for c in ax.containers)
            reference = task_set.row("average").mean(task)
            assert any(list(line.get_xdata()) == [reference, reference] for line in ax.get_lines())
            assert "does not start at 0" in ax.get_xlabel()
            low, high = ax.get_xlim()
            assert low <= min(r.mean(task) - r.std(task) for r in rows)
            assert high >= max(r.mean(task) + r.std(task) for r in rows)
            assert [child.get_xlabel() for child in ax.child_axes] == ["difference to sources' average"]
        assert "QUICK" not in fig.get_suptitle()
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert "reference: sources' average" in labels and "each seed" in labels
    finally:
        _close(fig)
    image = mpimg.imread(write_chart(result, tmp_path / "auc.png"))
    assert image.shape[0] > 800 and image.shape[1] > 1000


def test_same_seed_gives_identical_numbers_through_the_api_and_the_cli(tmp_path, capsys):
    first = run_bench("census-income", TASKS2, [0, 1], True, tmp_path / "a", methods=["mmoe"], three_tasks=None)
    row = first.sets[0].row("mmoe")
    assert row.auc["income"][0] != row.auc["income"][1]  # the seed matters
    for task in TASKS2:
        for v in row.auc[task]:
            _check_auc(v)
    code = main(["bench", "census-income", "--quick", "--methods", "mmoe", "--no-three-tasks", "--seeds", "1",
                 "-o", str(tmp_path / "b")])
    assert code == 0
    assert "### Table I: income, never_married" in capsys.readouterr().out
    again = json.loads((tmp_path / "b" / "results.json").read_text())["sets"][0]["rows"][0]
    assert again["method"] == "mmoe"
    assert again["auc"] == {t: [row.auc[t][0]] for t in TASKS2}


def test_bad_input_is_refused_and_nothing_is_written(tmp_path, capsys):
    with pytest.raises(FusekitError, match="unknown bench method"):
        run_bench("census-income", TASKS2, 1, True, tmp_path / "x", methods=["mmoe", "nope"])
    with pytest.raises(FusekitError, match="two or more distinct tasks"):
        run_bench("census-income", ["income"], 1, True, tmp_path / "x", methods=["mmoe"])
    with pytest.raises(FusekitError, match="give a folder of models in models_dir"):
        run_bench("census-income", TASKS2, 1, True, tmp_path / "x", methods=["average"], three_tasks=None,
                  models_dir=tmp_path / "no-models")
    assert not (tmp_path / "x").exists()
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(FusekitError, match="not empty"):
        run_bench("census-income", TASKS2, 1, True, busy, methods=["mmoe"])
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert main(["bench", "census-income", "--quick", "--methods", "mmoe,nope", "-o", str(tmp_path / "y")]) == 2
    assert "fusekit: error: unknown bench method(s) nope" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".x", ".y", "y"))]


@pytest.mark.slow
def test_full_path_fuses_through_fuse_and_scores_fused_onnx(tmp_path):
    """The non-quick path: the EMM row comes from ``fusekit.fuse.fuse`` (all rows, 1 epoch here)."""
    out = tmp_path / "out"
    result = run_bench("census-income", TASKS2, [0], False, out, methods=["average", "emm"], three_tasks=None,
                       max_epochs=1, patience=1)
    row = result.sets[0].row("emm")
    assert "error" not in row.extra and row.extra.get("path") != "in-process"
    for task in TASKS2:
        _check_auc(row.auc[task][0])
    assert row.parameters > row.trainable > 0
    assert set(row.extra["restored_average"]) == set(TASKS2)
    assert not (out / "work").exists()  # fused models are large and reproducible: not kept
    assert result.sets[0].gates["emm"]["levels"]


def test_a_variant_may_set_fuse_options_beside_fusion_options():
    """The all-rows variants set FuseOptions.train_rows; the rest goes to FusionOptions."""
    from fusekit.bench.budget import Budget
    from fusekit.bench.methods import EMM_VARIANTS
    from fusekit.bench.runner import _fuse_options

    options = _fuse_options(EMM_VARIANTS["emm-finetune-all-rows"][1], 3, Budget(), False)
    assert (options.train_rows, options.fusion.finetune, options.fusion.seed) == ("all", "all", 3)
    assert _fuse_options(EMM_VARIANTS["emm"][1], 3, Budget(), False).train_rows == "holdout"
