"""Shared-Bottom (hard parameter sharing): one MLP for all tasks, one tower per task."""
from __future__ import annotations

import torch
from torch import nn

from fusekit.models.baselines.base import MultiTaskBaseline
from fusekit.models.baselines.blocks import Tower, mlp


class SharedBottom(MultiTaskBaseline):
    """x -> shared MLP -> tower_t, for each task t."""

    name = "shared-bottom"
    description = "Shared-Bottom: one shared MLP, one tower per task"
    defaults = {"bottom": [128, 64], "tower": [32]}

    def build(self, in_dim: int) -> None:
        self.bottom = mlp(in_dim, self.hparams["bottom"])
        width = self.hparams["bottom"][-1] if self.hparams["bottom"] else in_dim
        self.towers = nn.ModuleList(Tower(width, self.hparams["tower"]) for _ in self.tasks)

    def task_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = self.bottom(x)
        return [tower(h) for tower in self.towers]


class SingleTaskMLPs(MultiTaskBaseline):
    """Independent single-task MLPs side by side (no sharing beyond the input block's table).

    The embedding table is shared by construction of the input block, so this is the
    "no task interaction in the hidden layers" reference trained with the same loop.
    """

    name = "single-mlp"
    description = "Single-task MLPs: one independent MLP per task (no sharing in hidden layers)"
    defaults = {"hidden": [64, 32], "tower": [32]}

    def build(self, in_dim: int) -> None:
        self.bodies = nn.ModuleList(mlp(in_dim, self.hparams["hidden"]) for _ in self.tasks)
        width = self.hparams["hidden"][-1]
        self.towers = nn.ModuleList(Tower(width, self.hparams["tower"]) for _ in self.tasks)

    def task_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [tower(body(x)) for body, tower in zip(self.bodies, self.towers)]
