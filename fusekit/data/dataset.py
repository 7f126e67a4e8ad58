"""Encoded tabular data held in memory as numpy arrays."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Split:
    """Rows of encoded features and binary labels.

    ``cat``: int64 [N, C] category ids (0 = unseen); ``dense``: float32 [N, D];
    ``labels``: task name -> float32 [N] of 0/1.
    """

    cat: np.ndarray
    dense: np.ndarray
    labels: dict[str, np.ndarray] = field(default_factory=dict)

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
