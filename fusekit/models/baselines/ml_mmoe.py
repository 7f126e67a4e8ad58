"""Multi-level MMoE (AdaTT paper, section 4.1): MMoE stacked; every gate sees the raw input."""
from __future__ import annotations

import torch
from torch import nn

from fusekit.models.baselines.base import MultiTaskBaseline
from fusekit.models.baselines.blocks import ExpertBank, GateBank, Tower, mix_all


class MultiLevelMMoE(MultiTaskBaseline):
    """Levels of ``n_experts`` experts. Below the top level there is one gate per expert of the
    next level (expert i of level l+1 reads its own mixture of level l); at the top, one gate per
    task. All gates are conditioned on the raw input, as the AdaTT paper describes ML-MMoE."""

    name = "ml-mmoe"
    description = "Multi-level MMoE: stacked expert levels, all gates on the raw input"
    defaults = {"n_experts": 6, "levels": [[64], [32]], "tower": [32]}

    def build(self, in_dim: int) -> None:
        n = self.hparams["n_experts"]
        levels = self.hparams["levels"]
        self.banks = nn.ModuleList()
        self.gates = nn.ModuleList()
        width = in_dim
        for index, hidden in enumerate(levels):
            self.banks.append(ExpertBank(n, width, hidden))
            n_gates = n if index < len(levels) - 1 else len(self.tasks)
            self.gates.append(GateBank(in_dim, n_gates, n))
            width = hidden[-1]
        self.towers = nn.ModuleList(Tower(width, self.hparams["tower"]) for _ in self.tasks)

    def task_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = x
        for bank, gates in zip(self.banks, self.gates):
            h = mix_all(gates(x), bank(h))
        return [tower(h[:, i]) for i, tower in enumerate(self.towers)]
