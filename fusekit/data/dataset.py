"""Encoded tabular data held in memory as numpy arrays: splits and datasets."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fusekit.data.features import FeatureSpec
from fusekit.data.splits import holdout_partition
from fusekit.errors import FusekitError
from fusekit.options import quote


@dataclass
class Split:
    """Rows of encoded features and binary labels.

    ``cat``: int64 [N, C] category ids (0 = unseen); ``dense``: float32 [N, D];
    ``labels``: task name -> float32 [N] of 0/1.
    """

    cat: np.ndarray
    dense: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)

    def arrays(self) -> dict[str, np.ndarray]:
        """The model inputs of fusekit's tabular convention, by name."""
        return {"categorical": self.cat, "dense": self.dense}

    def __len__(self) -> int:
        return int(self.cat.shape[0])

    def subset(self, idx: np.ndarray) -> "Split":
        """The rows at ``idx`` (a copy)."""
        return Split(self.cat[idx], self.dense[idx], {k: v[idx] for k, v in self.labels.items()})

    def sample(self, n: int | None, seed: int) -> "Split":
        """A seeded random subset of ``n`` rows in their original order (all rows when ``n`` is None or larger)."""
        if n is None or len(self) <= n:
            return self
        return self.subset(np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False)))

    def head(self, n: int) -> "Split":
        """The first ``n`` rows."""
        return self.subset(np.arange(min(n, len(self))))


@dataclass
class TabularDataset:
    """An encoded dataset: the spec, the task names and the three splits."""

    spec: FeatureSpec
    tasks: list[str]
    train: Split
    val: Split
    test: Split

    def holdout_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """(source rows, holdout rows) of the training split; no holdout -> (all rows, all rows)."""
        n = len(self.train)
        if not self.spec.holdout or float(self.spec.holdout.get("fraction", 0.0)) <= 0.0:
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


def holdout_dict(fraction: float, seed: int) -> dict | None:
    """The spec's ``holdout`` field for a fraction (None for no holdout)."""
    if not 0.0 <= fraction < 1.0:
        raise FusekitError(f"{{holdout}} must be in [0, 1), got {quote(fraction)}", owner="load_dataset()")
    return {"fraction": float(fraction), "seed": int(seed)} if fraction > 0 else None
