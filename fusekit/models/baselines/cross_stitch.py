"""Cross-stitch networks (Misra et al., CVPR 2016): one column per task, linearly mixed per layer."""
from __future__ import annotations

import torch
from torch import nn

from fusekit.models.baselines.base import MultiTaskBaseline
from fusekit.models.baselines.blocks import ExpertBank, Tower


class CrossStitch(MultiTaskBaseline):
    """Each task has its own MLP column; after every layer a cross-stitch unit replaces task t's
    hidden vector by ``sum_s alpha[t, s] h_s`` with learnt ``alpha`` (initialised to
    ``self_weight`` on the diagonal, the rest spread evenly, as the original paper suggests)."""

    name = "cross-stitch"
    description = "Cross-stitch: per-task columns mixed linearly after every layer"
    defaults = {"levels": [[64], [32]], "tower": [32], "self_weight": 0.9}

    def build(self, in_dim: int) -> None:
        t = len(self.tasks)
        self.columns = nn.ModuleList()
        self.stitches = nn.ParameterList()
        off = (1.0 - self.hparams["self_weight"]) / (t - 1) if t > 1 else 0.0
        width = in_dim
        for hidden in self.hparams["levels"]:
            self.columns.append(ExpertBank(t, width, hidden))
            alpha = torch.full((t, t), off)
            alpha.fill_diagonal_(self.hparams["self_weight"] if t > 1 else 1.0)
            self.stitches.append(nn.Parameter(alpha))
            width = hidden[-1]
        self.towers = nn.ModuleList(Tower(width, self.hparams["tower"]) for _ in self.tasks)

    def task_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = x
        for column, alpha in zip(self.columns, self.stitches):
            h = torch.einsum("ts,bsd->btd", alpha, column(h))
        return [tower(h[:, i]) for i, tower in enumerate(self.towers)]
