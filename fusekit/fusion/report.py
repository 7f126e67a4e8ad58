"""What a fusion run learned, as JSON and plots: gate statistics and training curves."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from fusekit.data.dataset import Split
from fusekit.fusion.model import FusedModel

if TYPE_CHECKING:
    from matplotlib.figure import Figure


@torch.no_grad()
def gate_statistics(model: FusedModel, split: Split, batch_size: int = 16384) -> dict:
    """Per level and task: mean task-gate weight of each own model; mean fusion-gate weight of
    each other task and how often each is selected (top-1); mean attention on the own token."""
    model = model.cpu().eval()
    tasks = model.task_names
    sums: list[dict] = []
    n = 0
    for batch in split.input_batches(batch_size):  # a split held in memory or read from its file
        _, stats = model.forward_with_stats(*[torch.from_numpy(np.require(batch[name], requirements=["C", "W"]))
                                              for name in model.input_names])
        rows = stats[0]["task_gate"][0].shape[0]
        n += rows
        if not sums:
            sums = [{key: [torch.zeros(v.shape[1]) for v in vals] for key, vals in lvl.items()} for lvl in stats]
            for lvl, s in zip(stats, sums):
                if "fusion_gate" in lvl:
                    s["picked"] = [torch.zeros(f.shape[1]) for f in lvl["fusion_gate"]]
        for lvl, s in zip(stats, sums):
            for key, vals in lvl.items():
                for t, v in enumerate(vals):
                    s[key][t] += v.float().sum(0)
            if "fusion_gate" in lvl:
                for t, f in enumerate(lvl["fusion_gate"]):
                    s["picked"][t] += torch.bincount(f.argmax(1), minlength=f.shape[1]).float()
    levels = []
    for index, s in zip(model.fused_levels, sums):
        entry: dict = {"level": index + 1, "tasks": {}}
        for t, task in enumerate(tasks):
            models = model.task_models[task]
            others = [o for o in tasks if o != task]
            info: dict = {"task_gate": {m: float(w) for m, w in zip(models, s["task_gate"][t] / max(n, 1))}}
            if "fusion_gate" in s:
                info["fusion_gate_mean"] = {o: float(w) for o, w in zip(others, s["fusion_gate"][t] / max(n, 1))}
                info["selected_fraction"] = {o: float(w) for o, w in zip(others, s["picked"][t] / max(n, 1))}
                info["attention_on_own_token"] = float(s["attention"][t][0] / max(n, 1))
            entry["tasks"][task] = info
        levels.append(entry)
    return {"rows": n, "mode": model.options.mode, "levels": levels}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def derived_best_epoch(history: list[dict]) -> int | None:
    """The first epoch with the highest mean validation AUC: the epoch ``fit`` keeps (it only
    replaces the best on a strict improvement). None for an empty history."""
    if not history:
        return None
    best = max(r["mean_val_score"] for r in history)
    return next(r["epoch"] for r in history if r["mean_val_score"] == best)


def _grid(n_panels: int, max_cols: int = 3) -> tuple[int, int]:
    """(rows, cols) for ``n_panels`` small panels, at most ``max_cols`` side by side."""
    cols = min(max_cols, max(1, n_panels))
    return -(-n_panels // cols), cols


def _epoch_axis(ax, epochs: list[int]) -> None:
    """Whole-number epoch ticks over exactly the epochs run (one epoch would get fractional ticks)."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if epochs:
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)


def _training_figure(history: list[dict], *, best_epoch: int | None = None,
                     reference: dict[str, float] | None = None,
                     reference_label: str = "sources' average", title: str | None = None) -> Figure:
    """The figure :func:`plot_training` saves (returned so tests can inspect its artists)."""
    plt = _pyplot()
    tasks = list(history[0]["val_score"]) if history else []
    best = best_epoch if best_epoch is not None else derived_best_epoch(history)
    reference = reference or {}
    rows, cols = _grid(len(tasks) + 1)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.6 * rows + 0.6), squeeze=False,
                             layout="constrained")
    panels = list(axes.flat)
    for ax in panels[len(tasks) + 1:]:
        ax.set_visible(False)
    epochs = [r["epoch"] for r in history]
    by_epoch = {r["epoch"]: r for r in history}

    for ax, task in zip(panels, tasks):
        values = [r["val_score"][task] for r in history]
        ax.plot(epochs, values, marker="o", ms=4, color="tab:blue", label="fused model (validation AUC)")
        ref = reference.get(task)
        if ref is not None:
            ax.axhline(ref, color="tab:gray", ls="--", lw=1.2, label=reference_label)
            # Its value as a tick on the right edge: text inside the panel would cover the curve.
            right = ax.secondary_yaxis("right")
            right.set_yticks([ref], [f"{ref:.5f}"], fontsize=8, color="dimgray")
        if best in by_epoch:
            value = by_epoch[best]["val_score"][task]
            ax.axvline(best, color="tab:red", ls=":", lw=1.2, label="best epoch")
            ax.plot([best], [value], marker="o", ms=9, mfc="none", mec="tab:red")
            gain = f" ({value - ref:+.5f})" if ref is not None else ""
            # Beside the marker, on the side with more room, so the vertical line does not cross it.
            late = len(epochs) > 1 and best > (epochs[0] + epochs[-1]) / 2
            ax.annotate(f"{value:.5f}{gain}", (best, value), xytext=(-7 if late else 7, 6),
                        textcoords="offset points", ha="right" if late else "left", fontsize=8, color="tab:red")
        # Zoomed on the data and the reference: AUCs of interest differ in the 3rd-4th decimal,
        # so the axis label says it is not from 0 rather than the plot hiding the differences.
        shown = values + ([ref] if ref is not None else [])
        if shown:
            low, high = min(shown), max(shown)
            pad = max((high - low) * 0.12, 2e-4)
            ax.set_ylim(low - pad, high + 2 * pad)  # the extra top room holds the best-epoch value
        _epoch_axis(ax, epochs)
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")
        ax.set(title=task, xlabel="epoch", ylabel="validation AUC (zoomed, not from 0)")
        ax.grid(alpha=0.3)

    ax = panels[len(tasks)]
    ax.plot(epochs, [r["train_loss"] for r in history], marker="o", ms=4, color="tab:purple", label="training loss")
    if best in by_epoch:
        ax.axvline(best, color="tab:red", ls=":", lw=1.2)
    ax.set(title="training loss (all tasks)", xlabel="epoch", ylabel="sum of task BCE, mean over batches")
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    _epoch_axis(ax, epochs)
    ax.grid(alpha=0.3)
    if not history:
        ax.text(0.5, 0.5, "no epochs recorded", transform=ax.transAxes, ha="center", va="center")
    # One legend for all panels: each panel draws the same kinds of line.
    handles = {}
    for panel in panels[:len(tasks) + 1]:
        for handle, label in zip(*panel.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles), fontsize=9)

    default = "Fusion training: validation AUC per task and training loss"
    if best is not None:
        default += (f"; best epoch {best}, whose weights were kept" if best_epoch is not None
                    else f"; best epoch {best} = highest mean validation AUC")
    fig.suptitle(title or default, fontsize=11)
    return fig


def plot_training(history: list[dict], path: Path, *, best_epoch: int | None = None,
                  reference: dict[str, float] | None = None,
                  reference_label: str = "sources' average", title: str | None = None) -> Path:
    """Per task the validation AUC per epoch, and the training loss, each in its own panel.

    ``best_epoch``: the epoch whose weights were kept, marked by a vertical line; when None it is
    derived as the first epoch with the highest ``mean_val_score`` (what ``fit`` keeps).
    ``reference``: per task the AUC of the plain average of the sources **on the same validation
    rows**, drawn as a dashed horizontal line labelled ``reference_label``.
    """
    plt = _pyplot()
    fig = _training_figure(history, best_epoch=best_epoch, reference=reference,
                           reference_label=reference_label, title=title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def _heatmap(ax, grid: np.ndarray, rows: list[str], cols: list[str], cmap: str,
             notes: dict[tuple[int, int], str] | None = None):
    """Cells coloured 0..1 with their value written in (and ``notes[i, j]`` below it); NaN
    cells (no such pair) are left blank."""
    image = ax.imshow(np.ma.masked_invalid(grid), vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto")
    # Hatched, not a colour: any flat grey could be mistaken for a value of the map.
    ax.patch.set(facecolor="white", hatch="///", edgecolor="#c8c8c8")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    notes = notes or {}
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            if np.isfinite(grid[i, j]):
                text = f"{grid[i, j]:.2f}" + (f"\n{notes[i, j]}" if (i, j) in notes else "")
                # Dark text on the light end of the map, white on the dark end.
                ax.text(j, i, text, ha="center", va="center", fontsize=9,
                        color="black" if grid[i, j] > 0.55 else "white")
    return image


def _gates_figure(gates: dict, title: str | None = None) -> Figure:
    """The figure :func:`plot_gates` saves (returned so tests can inspect it)."""
    plt = _pyplot()
    levels = gates["levels"]
    has_fusion = any("fusion_gate_mean" in info for lvl in levels for info in lvl["tasks"].values())
    n_rows, n_cols = (2 if has_fusion else 1), max(1, len(levels))
    tasks = list(levels[0]["tasks"]) if levels else []
    models = [m for t in tasks for m in levels[0]["tasks"][t]["task_gate"]]
    width = max(4.0, 0.7 * len(models) + 2.0)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(width * n_cols + 1.2, (0.55 * len(tasks) + 2.4) * n_rows),
                             squeeze=False, layout="constrained")
    image = fusion_image = None
    for j, lvl in enumerate(levels):
        infos = lvl["tasks"]
        grid = np.full((len(tasks), len(models)), np.nan)
        for i, task in enumerate(tasks):
            for model, weight in infos[task]["task_gate"].items():
                grid[i, models.index(model)] = weight
        image = _heatmap(axes[0][j], grid, tasks, models, "viridis")
        axes[0][j].set(title=f"level {lvl['level']} task gate:\nmean weight on each of a task's models",
                       xlabel="source model", ylabel="task")
        if has_fusion:
            # Rows: the task whose gate it is; columns: the task it may select (never itself).
            grid, top1 = np.full((len(tasks), len(tasks)), np.nan), {}
            for i, task in enumerate(tasks):
                for other, prob in infos[task].get("fusion_gate_mean", {}).items():
                    grid[i, tasks.index(other)] = prob
                # A mean of 0.5 may be every row undecided or half the rows sure of each task; the top-1
                # share tells the two apart.
                for other, share in infos[task].get("selected_fraction", {}).items():
                    top1[i, tasks.index(other)] = f"top-1 {share:.2f}"
            fusion_image = _heatmap(axes[1][j], grid, tasks, tasks, "magma", top1)
            axes[1][j].set(title=f"level {lvl['level']} fusion gate:\nmean probability of selecting each other task",
                           xlabel="selected task", ylabel="task")
    if image is not None:
        fig.colorbar(image, ax=list(axes[0]), label="mean task-gate weight", shrink=0.9)
    if fusion_image is not None:
        fig.colorbar(fusion_image, ax=list(axes[1]), label="mean selection probability", shrink=0.9)
    blank = "hatched cells: no such weight (a task's gate weighs only its own models"
    blank += "; a task never selects itself)" if has_fusion else ")"
    if has_fusion:
        blank += ".  top-1: share of rows on which the task is the gate's first choice"
    # A figure label, so the layout makes room for it; wrapped to the figure's width (~15 characters an inch).
    fig.supxlabel(textwrap.fill(blank, int(fig.get_figwidth() * 15)), fontsize=8, color="dimgray")
    rows = gates.get("rows")
    default = f"Gates of the fused model (mode {gates.get('mode', '?')}"
    default += f", mean over {rows:,} rows)" if isinstance(rows, int) else ")"
    fig.suptitle(title or default, fontsize=11)
    return fig


def plot_gates(gates: dict, path: Path, *, title: str | None = None) -> Path:
    """Per fused level a heatmap of the mean task-gate weights (task x source model) and, with
    MTM, of the mean fusion-gate probabilities (task x selected task), as ``gate_statistics``
    returns them; one colour bar per gate kind, values written in the cells."""
    plt = _pyplot()
    fig = _gates_figure(gates, title)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
