"""PLE (Tang et al., RecSys 2020): stacked CGC levels with task-specific and shared experts."""
from __future__ import annotations

import torch
from torch import nn

from fusekit.models.baselines.base import MultiTaskBaseline
from fusekit.models.baselines.blocks import ExpertBank, Gate, Tower, mix


class PLE(MultiTaskBaseline):
    """Progressive Layered Extraction.

    At each level every task unit has ``task_experts`` experts and the shared unit
    ``shared_experts``. Task t's gate (on task t's input) mixes its own and the shared experts;
    the shared gate (on the shared input) mixes all experts and exists below the top level only.
    Level 1 units all read the input features.
    """

    name = "ple"
    description = "PLE: stacked CGC, task-specific + shared experts, progressive routing"
    defaults = {"task_experts": 2, "shared_experts": 2, "levels": [[64], [32]], "tower": [32]}

    def build(self, in_dim: int) -> None:
        t, m, s = len(self.tasks), self.hparams["task_experts"], self.hparams["shared_experts"]
        levels = self.hparams["levels"]
        # Unit u's experts occupy a contiguous block; unit t < T is task t, unit T is shared.
        owner = [u for u in range(t) for _ in range(m)] + [t] * s
        self.register_buffer("owner", torch.tensor(owner, dtype=torch.int64), persistent=False)
        self.banks = nn.ModuleList()
        self.task_gates = nn.ModuleList()
        self.shared_gates = nn.ModuleList()
        width = in_dim
        for index, hidden in enumerate(levels):
            self.banks.append(ExpertBank(len(owner), width, hidden))
            self.task_gates.append(nn.ModuleList(Gate(width, m + s) for _ in range(t)))
            if index < len(levels) - 1:
                self.shared_gates.append(Gate(width, len(owner)))
            width = hidden[-1]
        self.towers = nn.ModuleList(Tower(width, self.hparams["tower"]) for _ in self.tasks)

    def task_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        t, m = len(self.tasks), self.hparams["task_experts"]
        units = x.unsqueeze(1).expand(-1, t + 1, -1)
        for index, bank in enumerate(self.banks):
            e = bank(units.index_select(1, self.owner)) if index else bank(x)
            shared = e[:, t * m:]
            outs = [
                mix(gate(units[:, i]), torch.cat([e[:, i * m:(i + 1) * m], shared], dim=1))
                for i, gate in enumerate(self.task_gates[index])
            ]
            if index < len(self.shared_gates):
                outs.append(mix(self.shared_gates[index](units[:, t]), e))
            units = torch.stack(outs, dim=1)
        return [tower(units[:, i]) for i, tower in enumerate(self.towers)]
