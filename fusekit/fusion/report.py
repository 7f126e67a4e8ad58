"""What a fusion run learned, as JSON and plots: gate statistics and training curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fusekit.data.dataset import Split
from fusekit.fusion.model import FusedModel


@torch.no_grad()
def gate_statistics(model: FusedModel, split: Split, batch_size: int = 16384) -> dict:
    """Per level and task: mean task-gate weight of each own model; mean fusion-gate weight of
    each other task and how often each is selected (top-1); mean attention on the own token."""
    model = model.cpu().eval()
    tasks = model.task_names
    sums: list[dict] = []
    n = 0
    cat, dense = torch.as_tensor(split.cat), torch.as_tensor(split.dense)
    for start in range(0, len(split), batch_size):
        _, stats = model.forward_with_stats(cat[start:start + batch_size], dense[start:start + batch_size])
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


def plot_training(history: list[dict], path: Path) -> Path:
    """Training loss, then validation AUC of each task in its own panel (tasks differ in scale)."""
    plt = _pyplot()
    tasks = list(history[0]["val_auc"]) if history else []
    fig, axes = plt.subplots(1, 1 + len(tasks), figsize=(4 * (1 + len(tasks)), 3.5), squeeze=False)
    epochs = [r["epoch"] for r in history]
    axes[0][0].plot(epochs, [r["train_loss"] for r in history], marker="o")
    axes[0][0].set(xlabel="epoch", ylabel="training loss (sum of task BCE)", title="loss")
    for ax, task in zip(axes[0][1:], tasks):
        ax.plot(epochs, [r["val_auc"][task] for r in history], marker="o", color="tab:orange")
        ax.set(xlabel="epoch", ylabel="validation AUC", title=task)
        ax.ticklabel_format(axis="y", useOffset=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_gates(gates: dict, path: Path) -> Path:
    """One panel per level: task-gate weights (bars per task) and, with MTM, the selection shares."""
    plt = _pyplot()
    levels = gates["levels"]
    has_fusion = any("selected_fraction" in info for lvl in levels for info in lvl["tasks"].values())
    rows = 2 if has_fusion else 1
    fig, axes = plt.subplots(rows, len(levels), figsize=(4 * len(levels), 3.2 * rows), squeeze=False)
    for j, lvl in enumerate(levels):
        ax = axes[0][j]
        for i, (task, info) in enumerate(lvl["tasks"].items()):
            weights = list(info["task_gate"].values())
            offsets = np.linspace(-0.3, 0.3, len(weights)) if len(weights) > 1 else [0.0]
            bars = ax.bar([i + o for o in offsets], weights, width=0.6 / max(1, len(weights)))
            for bar, name in zip(bars, info["task_gate"]):
                ax.text(bar.get_x() + bar.get_width() / 2, 0.02, name, rotation=90, ha="center", va="bottom",
                        fontsize=7, color="white")
        ax.set_xticks(range(len(lvl["tasks"])), list(lvl["tasks"]))
        ax.set(ylim=(0, 1), title=f"level {lvl['level']}: task gate", ylabel="mean weight per source")
        if has_fusion:
            ax = axes[1][j]
            tasks = list(lvl["tasks"])
            grid = np.zeros((len(tasks), len(tasks)))
            for i, task in enumerate(tasks):
                for other, share in lvl["tasks"][task].get("selected_fraction", {}).items():
                    grid[i, tasks.index(other)] = share
            ax.imshow(grid, vmin=0, vmax=1, cmap="viridis")
            ax.set_xticks(range(len(tasks)), tasks)
            ax.set_yticks(range(len(tasks)), tasks)
            ax.set(title="selected task (share of rows)", xlabel="selected", ylabel="task")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
