"""The data a benchmark produces: cells (one method, split and seed each) and the rows made from
them, grouped by task set."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class Row:
    """One method's results on one task set: the test score per task and cell (``auc``, named so
    before tasks had kinds: each task's kind's score, AUC for binary tasks; ``extra["cells"]``: the
    [split, seed] of each value, seed None for untrained rows), sizes, training time.

    ``kind`` is ``single`` (a source model), ``ensemble`` (plain average of sources, untrained),
    ``baseline`` (a multi-task model trained from scratch) or ``emm`` (a fused model).
    """

    method: str
    kind: str
    auc: dict[str, list[float]]
    parameters: int | None = None
    trainable: int | None = None
    seconds: list[float] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def mean(self, task: str) -> float | None:
        """Mean test AUC over cells (None when the row has no value for ``task``)."""
        values = self.auc.get(task) or []
        return float(np.mean(values)) if values else None

    def std(self, task: str) -> float | None:
        """Sample standard deviation over cells (0 with one cell; None without values)."""
        values = self.auc.get(task) or []
        if not values:
            return None
        return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0

    def display(self) -> str:
        """The name shown in tables."""
        return self.label or self.method


@dataclass
class TaskSetResult:
    """Table I (``rows``), the optional ablation (Table II) and fusion-gate statistics of one task set."""

    tasks: list[str]
    rows: list[Row] = field(default_factory=list)
    ablation: list[Row] = field(default_factory=list)
    gates: dict[str, Any] = field(default_factory=dict)
    sources: list[dict] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    cells: list[dict] = field(default_factory=list)  # fusekit.bench.protocol.Cell, JSON-ready
    kinds: dict[str, dict] = field(default_factory=dict)  # task -> TaskKind.to_dict(); absent: binary

    def score_label(self, task: str) -> str:
        """The name of ``task``'s score as tables print it (AUC, accuracy, R2: its kind's)."""
        from fusekit.task_kinds import SCORE, SCORE_LABEL

        return SCORE_LABEL[SCORE[self.kinds.get(task, {}).get("kind", "binary")]]

    def single_task_mean(self, task: str) -> float | None:
        """Mean test AUC of the task's single-task source models (the paper's gain reference)."""
        values = [r.mean(task) for r in self.rows if r.kind == "single" and r.mean(task) is not None]
        return float(np.mean(values)) if values else None

    def gain(self, row: Row, task: str) -> float | None:
        """``row``'s mean AUC minus the single-task mean for ``task``."""
        ref, value = self.single_task_mean(task), row.mean(task)
        return None if ref is None or value is None else value - ref

    def row(self, method: str) -> Row | None:
        """The Table I row of ``method`` (None when absent)."""
        return next((r for r in self.rows if r.method == method), None)


@dataclass
class BenchResult:
    """Everything ``run_bench`` measured and where it wrote it."""

    dataset: str
    seeds: list[int]
    quick: bool
    budget: dict[str, Any]
    hyperparameters: dict[str, Any]
    sets: list[TaskSetResult]
    out_dir: Path
    seconds: float = 0.0
    versions: dict[str, str] = field(default_factory=dict)
    threads: int | None = None  # torch and onnxruntime threads of the run (fusekit.threads)
    splits: list[int] = field(default_factory=lambda: [0])  # evaluation split seeds
    processes: int | None = 1  # processes of the run (torchrun), as fuse's metrics.json records them; None: merged runs differ

    def to_dict(self) -> dict:
        """JSON-ready form (means and standard deviations included for convenience)."""
        out = asdict(self)
        out["out_dir"] = str(self.out_dir)
        for set_dict, result in zip(out["sets"], self.sets):
            for key, rows in (("rows", result.rows), ("ablation", result.ablation)):
                for row_dict, row in zip(set_dict[key], rows):
                    row_dict["mean"] = {t: row.mean(t) for t in result.tasks}
                    row_dict["std"] = {t: row.std(t) for t in result.tasks}
                    row_dict["gain_vs_single_mean"] = {t: result.gain(row, t) for t in result.tasks}
        return out
