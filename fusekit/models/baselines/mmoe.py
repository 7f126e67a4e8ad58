"""MMoE (Ma et al., KDD 2018): shared experts mixed by one softmax gate per task."""
from __future__ import annotations

import torch
from torch import nn

from fusekit.models.baselines.base import MultiTaskBaseline
from fusekit.models.baselines.blocks import ExpertBank, GateBank, Tower, mix_all


class MMoE(MultiTaskBaseline):
    """f_t(x) = g_t(x)^T [e_1(x), ..., e_n(x)]; y_t = tower_t(f_t(x)) (AdaTT paper, eqs. 11-12)."""

    name = "mmoe"
    description = "MMoE: n shared experts, one softmax gate per task on the input"
    defaults = {"n_experts": 6, "expert": [64, 32], "tower": [32]}

    def build(self, in_dim: int) -> None:
        n = self.hparams["n_experts"]
        self.experts = ExpertBank(n, in_dim, self.hparams["expert"])
        self.gates = GateBank(in_dim, len(self.tasks), n)  # row t: task t's gate
        self.towers = nn.ModuleList(Tower(self.experts.out_features, self.hparams["tower"]) for _ in self.tasks)

    def task_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = mix_all(self.gates(x), self.experts(x))
        return [tower(f[:, i]) for i, tower in enumerate(self.towers)]
