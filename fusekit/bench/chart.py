"""The benchmark chart: mean test AUC per method and task, the seed spread, and the sources' average.

Why points and not bars: the methods differ in the 3rd-4th decimal of AUC, so bars from 0 (or from
0.5, the AUC of guessing) would all look equal, and bars on a zoomed axis make the length of a bar
meaningless (a bar twice as long is not twice as good). A point only claims a position, so a zoomed
axis is honest once the axis says it is zoomed; the sources' average is drawn as a reference line and
a second axis gives every position as a difference to it.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from fusekit.bench.results import BenchResult, Row, TaskSetResult

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

KIND_STYLE = {  # kind -> (colour, marker, legend text)
    "single": ("#8c8c8c", "s", "source model (single task)"),
    "ensemble": ("#3a3a3a", "D", "sources' average (untrained)"),
    "baseline": ("#4c72b0", "o", "multi-task baseline (trained)"),
    "emm": ("#dd8452", "o", "fused model (EMM)"),
}
OTHER_STYLE = ("#4c72b0", "o", "other")


def _reference(task_set: TaskSetResult, task: str) -> float | None:
    """The mean AUC of the plain average of the sources (the ``ensemble`` row), if measured."""
    row = next((r for r in task_set.rows if r.kind == "ensemble" and r.mean(task) is not None), None)
    return None if row is None else row.mean(task)


def _seeds(seeds: list[int]) -> str:
    return ("seed " if len(seeds) == 1 else "seeds ") + ", ".join(map(str, seeds))


def quick_note(result: BenchResult) -> str | None:
    """The warning a ``--quick`` result carries (None for a full run)."""
    if not result.quick:
        return None
    budget = result.budget or {}
    epochs, rows = budget.get("max_epochs"), budget.get("train_rows")
    how = ", ".join(part for part in (f"{epochs} epochs" if epochs else "",
                                      f"{rows:,} training rows" if isinstance(rows, int) else "") if part)
    return (f"QUICK RUN (--quick{': ' + how if how else ''}, {_seeds(result.seeds)}): "
            "a smoke test, not benchmark numbers")


def _panel(ax: Axes, task_set: TaskSetResult, task: str) -> None:
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    rows: list[Row] = [r for r in task_set.rows if r.mean(task) is not None]
    ref = _reference(task_set, task)
    shown: list[float] = []
    for y, row in enumerate(rows):
        colour, marker, label = KIND_STYLE.get(row.kind, OTHER_STYLE)
        mean, std, values = row.mean(task), row.std(task) or 0.0, row.auc[task]
        if len(values) > 1:
            ax.plot(values, [y] * len(values), ls="none", marker="o", ms=3.5, mfc="none", mec=colour,
                    alpha=0.7, label="each seed")
        ax.errorbar(mean, y, xerr=std if std else None, fmt=marker, ms=6, color=colour, capsize=3, label=label)
        shown += [mean - std, mean + std, *values]
    if ref is not None:
        ax.axvline(ref, color=KIND_STYLE["ensemble"][0], ls="--", lw=1, label="reference: sources' average")
        shown.append(ref)
        # Every position also as a gain over the reference, so nobody has to subtract by eye.
        top = ax.secondary_xaxis("top", functions=(lambda x: x - ref, lambda d: d + ref))
        top.set_xlabel("difference to sources' average", fontsize=8)
        top.tick_params(labelsize=7)
        top.xaxis.set_major_locator(MaxNLocator(nbins=4))
        top.xaxis.set_major_formatter(FuncFormatter(lambda d, _: "0" if abs(d) < 5e-9 else f"{d:+.4f}"))
    if shown:
        low, high = min(shown), max(shown)
        pad = max((high - low) * 0.08, 1e-4)
        ax.set_xlim(low - pad, high + pad)
    ax.set_yticks(range(len(rows)), [r.method for r in rows], fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first row at the top, in the order the tables list them
    ax.ticklabel_format(axis="x", useOffset=False, style="plain")
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel(f"test {task_set.score_label(task)} (zoomed: axis does not start at 0)", fontsize=8)
    ax.set_title(f"{task}\n(task set {' + '.join(task_set.tasks)})", fontsize=9)


def _chart_figure(result: BenchResult) -> Figure:
    """The figure :func:`write_chart` saves (returned so tests can inspect its artists)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_cols = max((len(s.tasks) for s in result.sets), default=1)
    n_rows = max(1, len(result.sets))
    n_methods = max((len(s.rows) for s in result.sets), default=1)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(4.4 * n_cols + 1.0, (0.24 * n_methods + 1.6) * n_rows + 1.2),
                             squeeze=False, layout="constrained")
    for i, task_set in enumerate(result.sets):
        for j in range(n_cols):
            if j < len(task_set.tasks):
                _panel(axes[i][j], task_set, task_set.tasks[j])
            else:
                axes[i][j].set_visible(False)

    handles: dict = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    if len(result.seeds) > 1:
        how = (f"filled marker: mean test AUC over {_seeds(result.seeds)}; bar: ±1 sample SD over seeds (hidden "
               "behind the marker when smaller); the sources and their average are fixed models, measured once")
    else:
        how = f"marker: test AUC of {_seeds(result.seeds)} (one seed, so no spread to show)"
    # The explanation is the legend's title: two separate bottom texts would overlap.
    fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=min(3, max(1, len(handles))),
               fontsize=8, title=how, title_fontsize=8)
    title = f"fusekit bench: {result.dataset}, test AUC per method and task"
    note = quick_note(result)
    if note:
        # In the title and in red: read before any number, and no panel can cover it.
        fig.suptitle(f"{note}\n{title}", fontsize=11, color="#c0392b", fontweight="bold")
    else:
        fig.suptitle(title, fontsize=11)
    return fig


def write_chart(result: BenchResult, path: Path) -> Path:
    """Per (task set, task) a dot plot of each method's mean test AUC with its seed spread, on an
    axis zoomed to the values (points, not bars: see the module docstring), with the sources' average
    as a reference line; a ``--quick`` result is labelled as such in red in the title."""
    import matplotlib.pyplot as plt

    fig = _chart_figure(result)
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)
    return Path(path)
