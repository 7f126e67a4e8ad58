"""Data held in memory as numpy arrays: splits (model inputs by name, labels by task) and datasets."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

from fusekit.data.features import FeatureSpec
from fusekit.data.splits import holdout_partition
from fusekit.errors import FusekitError
from fusekit.options import quote


@dataclass
class Split:
    """Rows of model inputs and task labels.

    ``inputs``: model input name -> array, batch first (fusekit's own tabular models take
    ``categorical`` int64 [N, C] ids, 0 = unseen, and ``dense`` float32 [N, D]);
    ``labels``: task name -> [N] array (float32 0/1 for binary tasks, int64 class indices for
    multiclass ones, float32 values for regression and counts).
    """

    inputs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inputs = dict(self.inputs)
        if not self.inputs:
            raise FusekitError("a split needs at least one model input")
        lengths = {name: len(a) for name, a in self.inputs.items()}
        lengths.update({f"label {t}": len(a) for t, a in self.labels.items()})
        if len(set(lengths.values())) > 1:
            shown = ", ".join(f"{k} {v}" for k, v in lengths.items())
            raise FusekitError(f"the arrays of one split have different lengths ({shown}); give one row per example")

    @classmethod
    def tabular(cls, cat: np.ndarray, dense: np.ndarray, labels: dict[str, np.ndarray] | None = None) -> "Split":
        """A split of fusekit's tabular convention (``categorical`` ids and ``dense`` features)."""
        return cls({"categorical": cat, "dense": dense}, dict(labels or {}))

    @property
    def cat(self) -> np.ndarray:
        """The ``categorical`` input of fusekit's tabular models."""
        return self.inputs["categorical"]

    @property
    def dense(self) -> np.ndarray:
        """The ``dense`` input of fusekit's tabular models."""
        return self.inputs["dense"]

    def arrays(self) -> dict[str, np.ndarray]:
        """The model inputs by name."""
        return self.inputs

    def __len__(self) -> int:
        return int(len(next(iter(self.inputs.values()))))

    @property
    def input_names(self) -> list[str]:
        """The model inputs it holds (as :class:`fusekit.data.batches.StreamedSplit` says it too)."""
        return list(self.inputs)

    def subset(self, idx: np.ndarray) -> "Split":
        """The rows at ``idx`` (a copy)."""
        return Split({k: v[idx] for k, v in self.inputs.items()}, {k: v[idx] for k, v in self.labels.items()})

    def sample(self, n: int | None, seed: int) -> "Split":
        """A seeded random subset of ``n`` rows in their original order (all rows when ``n`` is None or larger)."""
        if n is None or len(self) <= n:
            return self
        return self.subset(np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False)))

    def head(self, n: int) -> "Split":
        """The first ``n`` rows."""
        return self.subset(np.arange(min(n, len(self))))

    def input_batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """The model inputs in row order, ``batch_size`` rows at a time (views, no copy); a streamed split
        (:class:`fusekit.data.batches.StreamedSplit`) gives its rows the same way, read from its file."""
        for start in range(0, len(self), batch_size):
            yield {name: a[start:start + batch_size] for name, a in self.inputs.items()}


@dataclass
class TabularDataset:
    """An encoded dataset: the spec, the task names, the three splits and, when the data says,
    each task's kind (tasks it does not name are binary)."""

    spec: FeatureSpec | None
    tasks: list[str]
    train: Split
    val: Split
    test: Split
    kinds: dict = field(default_factory=dict)  # task -> fusekit.task_kinds.TaskKind
    report: object = None  # fusekit.data.named.DataReport: how files named after the inputs were read
    # How the training file was read: {"train": "streamed (why)" or "in memory (why)", "streamed": bool}.
    reading: dict = field(default_factory=dict)

    def holdout_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(source rows, holdout rows) of the training split; no holdout -> (all rows, all rows)."""
        n = len(self.train)
        if self.spec is None or not self.spec.holdout or float(self.spec.holdout.get("fraction", 0.0)) <= 0.0:
            everything = np.arange(n)
            return everything, everything
        return holdout_partition(n, float(self.spec.holdout["fraction"]), int(self.spec.holdout["seed"]))

    def source_rows(self) -> Split:
        """Training rows the single-task models learn from (all of train when there is no holdout)."""
        src, _ = self.holdout_indices()
        return self.train if len(src) == len(self.train) else self.train.subset(src)

    def fusion_rows(self) -> Split:
        """Training rows kept out of single-task training (all of train when there is no holdout)."""
        _, hold = self.holdout_indices()
        return self.train if len(hold) == len(self.train) else self.train.subset(hold)


def split_record(seed: int, rows: dict[str, int], val_idx: np.ndarray, test_idx: np.ndarray) -> dict:
    """What identifies a validation/test split: its seed, the rows of each split and a sha256 of the
    validation and test row indices (in their source file)."""
    import hashlib

    digest = hashlib.sha256()
    for idx in (val_idx, test_idx):
        digest.update(np.ascontiguousarray(idx, dtype="<i8").tobytes() + b"|")
    return {"seed": int(seed), "rows": {k: int(v) for k, v in rows.items()}, "sha256": digest.hexdigest()}


def keep_split(spec: FeatureSpec, record: dict, fitted: bool, where: str) -> None:
    """Record the split in a spec just fitted; for a spec that came with models, check that the data
    gives the split the models were trained with (FusekitError naming both seeds otherwise)."""
    if fitted:
        spec.split = dict(record)
        return
    if spec.split and spec.split != record:
        raise FusekitError(f"{where} gives another validation/test split (seed {record['seed']}, rows "
                           f"{record['rows']}) than the models were trained with (seed {spec.split['seed']}, rows "
                           f"{spec.split['rows']}); use split seed {spec.split['seed']} and the models' data")


def holdout_dict(fraction: float, seed: int) -> dict | None:
    """The spec's ``holdout`` field for a fraction (None for no holdout)."""
    if not 0.0 <= fraction < 1.0:
        raise FusekitError(f"{{holdout}} must be in [0, 1), got {quote(fraction)}", owner="load_dataset()")
    return {"fraction": float(fraction), "seed": int(seed)} if fraction > 0 else None
