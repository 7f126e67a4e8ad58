"""Plots of a fusion run: training curves with the best epoch and the sources' average, gate heatmaps."""
from __future__ import annotations

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from torch import nn

from fusekit.data.dataset import Split
from fusekit.fusion.model import FusedModel, FusionOptions, SourceModel
from fusekit.fusion.report import (_gates_figure, _pyplot, _training_figure, derived_best_epoch, gate_statistics,
                                   plot_gates, plot_training)

plt = _pyplot()  # pyplot on the Agg backend, as the code under test uses it

TASKS = {"income": ["income_a", "income_b"], "never_married": ["nm_a"], "education": ["edu_a", "edu_b"]}


class _Level1(nn.Module):
    """(categorical ids, dense) -> [B, 6], the shape of a tabular model's first component."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4 + 3, 6)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(torch.cat([cat.float(), dense], 1)))


def _fused(use_mtm: bool = True) -> FusedModel:
    torch.manual_seed(0)
    sources = {m: SourceModel(m, [_Level1(), nn.Sequential(nn.Linear(6, 5), nn.ReLU())], ["categorical", "dense"])
               for ms in TASKS.values() for m in ms}
    return FusedModel(TASKS, sources, [6, 5], ["categorical", "dense"], FusionOptions(mode="paper", use_mtm=use_mtm))


def _split(rows: int = 300) -> Split:
    rng = np.random.default_rng(0)
    return Split.tabular(rng.integers(0, 5, (rows, 4)).astype(np.int64), rng.normal(size=(rows, 3)).astype(np.float32),
                 {t: rng.integers(0, 2, rows).astype(np.float32) for t in TASKS})


@pytest.fixture(scope="module")
def gates() -> dict:
    return gate_statistics(_fused(), _split(), batch_size=128)  # 3 batches: the sums must add up


def _history(tasks: list[str], means: list[float]) -> list[dict]:
    """Epoch records as fit() writes them: each task's AUC is the epoch's mean plus a task offset."""
    out = []
    for epoch, mean in enumerate(means, start=1):
        val = {t: mean + 0.001 * (i - (len(tasks) - 1) / 2) for i, t in enumerate(tasks)}
        out.append({"epoch": epoch, "train_loss": 0.5 / epoch, "val_score": val,
                    "mean_val_score": float(np.mean(list(val.values()))), "seconds": 0.1})
    return out


def _vertical_at(ax, x: float) -> bool:
    return any(len(set(line.get_xdata())) == 1 and np.isclose(line.get_xdata()[0], x) and
               len(line.get_xdata()) == 2 for line in ax.get_lines())


def _horizontal_at(ax, y: float) -> bool:
    return any(len(set(line.get_ydata())) == 1 and np.isclose(line.get_ydata()[0], y) and
               len(line.get_ydata()) == 2 for line in ax.get_lines())


def _read_png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return mpimg.imread(path)


# -- training curves -------------------------------------------------------------------------

MEANS = [0.940, 0.948, 0.951, 0.949, 0.951, 0.947]  # best at 3; epoch 5 ties and is not kept


def test_best_epoch_is_the_first_with_the_highest_mean_validation_auc():
    assert derived_best_epoch(_history(["a", "b"], MEANS)) == 3
    assert derived_best_epoch([]) is None


def test_training_figure_marks_the_best_epoch_and_the_sources_average_in_every_task_panel():
    tasks = ["income", "never_married"]
    reference = {"income": 0.9495, "never_married": 0.9503}
    fig = _training_figure(_history(tasks, MEANS), reference=reference)
    try:
        panels = {ax.get_title(): ax for ax in fig.axes if ax.get_visible() and ax.get_title()}
        assert set(panels) == {*tasks, "training loss (all tasks)"}
        for task in tasks:
            ax = panels[task]
            assert _vertical_at(ax, 3) and not _vertical_at(ax, 5)
            assert _horizontal_at(ax, reference[task])
            assert "validation AUC" in ax.get_ylabel() and "not from 0" in ax.get_ylabel()
            # Zoomed, yet the reference line and every epoch are inside the visible range.
            low, high = ax.get_ylim()
            values = [r["val_score"][task] for r in _history(tasks, MEANS)] + [reference[task]]
            assert 0.9 < low < min(values) and max(values) < high < 1.0
        assert _vertical_at(panels["training loss (all tasks)"], 3)
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert "sources' average" in labels and "best epoch" in labels
        assert "best epoch 3 = highest mean validation AUC" in fig.get_suptitle()
    finally:
        plt.close(fig)


def test_a_given_best_epoch_wins_and_tasks_without_a_reference_get_no_line():
    fig = _training_figure(_history(["a", "b"], MEANS), best_epoch=5, reference={"a": 0.9})
    try:
        panels = {ax.get_title(): ax for ax in fig.axes if ax.get_title()}
        assert _vertical_at(panels["a"], 5) and not _vertical_at(panels["a"], 3)
        assert _horizontal_at(panels["a"], 0.9)
        assert not any(_horizontal_at(panels["b"], y) for y in (0.9, *MEANS))
        assert "best epoch 5, whose weights were kept" in fig.get_suptitle()
    finally:
        plt.close(fig)


def test_five_tasks_get_a_panel_each_plus_the_loss_on_two_rows(tmp_path):
    tasks = [f"task{i}" for i in range(5)]
    path = plot_training(_history(tasks, MEANS), tmp_path / "curves.png", reference=dict.fromkeys(tasks, 0.95))
    height, width, _ = _read_png(path).shape
    assert width > 1000 and 600 < height < width  # three panels wide, two high
    fig = _training_figure(_history(tasks, MEANS))
    try:
        assert sum(1 for ax in fig.axes if ax.get_visible() and ax.get_title()) == 6
    finally:
        plt.close(fig)


def test_plot_training_keeps_its_old_call_and_survives_one_or_no_epochs(tmp_path):
    path = plot_training(_history(["a", "b"], [0.9]), tmp_path / "one.png")  # the call fuse.py makes today
    height, width, _ = _read_png(path).shape
    assert width > 800 and height > 250
    assert _read_png(plot_training([], tmp_path / "none.png")).shape[1] > 300


# -- gates -----------------------------------------------------------------------------------

def test_gate_heatmaps_show_every_weight_with_labels_and_a_colour_bar_per_gate(gates, tmp_path):
    assert gates["rows"] == 300 and len(gates["levels"]) == 2
    fig = _gates_figure(gates)
    try:
        titles = [ax.get_title() for ax in fig.axes]
        cbars = [ax.get_ylabel() for ax in fig.axes if not ax.get_title()]
        assert sorted(cbars) == ["mean selection probability", "mean task-gate weight"]
        for level in (1, 2):
            task_ax = fig.axes[titles.index(f"level {level} task gate:\nmean weight on each of a task's models")]
            fusion_ax = fig.axes[titles.index(f"level {level} fusion gate:\n"
                                              "mean probability of selecting each other task")]
            info = gates["levels"][level - 1]["tasks"]
            assert [t.get_text() for t in task_ax.get_yticklabels()] == list(TASKS)
            assert [t.get_text() for t in task_ax.get_xticklabels()] == [m for ms in TASKS.values() for m in ms]
            assert [t.get_text() for t in fusion_ax.get_xticklabels()] == list(TASKS)
            # One written value per (task, own model) pair; the other cells stay blank.
            cells = sorted(t.get_text() for t in task_ax.texts)
            assert cells == sorted(f"{w:.2f}" for t in TASKS for w in info[t]["task_gate"].values())
            cells = sorted(t.get_text() for t in fusion_ax.texts)
            assert cells == sorted(f"{p:.2f}\ntop-1 {info[t]['selected_fraction'][o]:.2f}"
                                   for t in TASKS for o, p in info[t]["fusion_gate_mean"].items())
        assert "mode paper" in fig.get_suptitle() and "300 rows" in fig.get_suptitle()
    finally:
        plt.close(fig)
    height, width, _ = _read_png(plot_gates(gates, tmp_path / "gates.png")).shape
    assert width > 800 and height > 400


def test_without_mtm_only_the_task_gate_is_drawn(tmp_path):
    gates = gate_statistics(_fused(use_mtm=False), _split(100))
    fig = _gates_figure(gates)
    try:
        assert not any("fusion gate" in ax.get_title() for ax in fig.axes)
        assert [ax.get_ylabel() for ax in fig.axes if not ax.get_title()] == ["mean task-gate weight"]
    finally:
        plt.close(fig)
    assert _read_png(plot_gates(gates, tmp_path / "gates.png")).shape[1] > 500
