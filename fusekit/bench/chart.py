"""A bar chart of mean test AUC per method and task, with the seed spread as error bars."""
from __future__ import annotations

from pathlib import Path

from fusekit.bench.results import BenchResult


def write_chart(result: BenchResult, path: Path) -> Path:
    """One panel per (task set, task); the y axis is zoomed to the range of the values."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(s, t) for s in result.sets for t in s.tasks]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, 3.2 * len(panels)), squeeze=False)
    for ax, (task_set, task) in zip(axes[:, 0], panels):
        rows = [r for r in task_set.rows if r.mean(task) is not None]
        means = [r.mean(task) for r in rows]
        stds = [r.std(task) or 0.0 for r in rows]
        colors = {"single": "#999999", "ensemble": "#666666", "baseline": "#4c72b0", "emm": "#dd8452"}
        ax.bar(range(len(rows)), means, yerr=stds, capsize=3, color=[colors.get(r.kind, "#4c72b0") for r in rows])
        ax.set_xticks(range(len(rows)), [r.method for r in rows], rotation=30, ha="right", fontsize=8)
        if means:
            low, high = min(m - s for m, s in zip(means, stds)), max(m + s for m, s in zip(means, stds))
            pad = max((high - low) * 0.15, 1e-4)
            ax.set_ylim(low - pad, high + pad)
        ax.set_ylabel("test AUC")
        ax.set_title(f"{task} ({' + '.join(task_set.tasks)})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
