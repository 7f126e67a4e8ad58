"""AdaTT (Li et al., KDD 2023): adaptive task-to-task fusion, with and without shared experts."""
from __future__ import annotations

import torch
from torch import nn

from fusekit.models.baselines.base import MultiTaskBaseline
from fusekit.models.baselines.blocks import ExpertBank, Gate, Tower


class AdaTT(MultiTaskBaseline):
    """General AdaTT (AdaTT paper, section 3.2): task-specific fusion units plus a shared unit.

    Per fusion level l, unit u computes its native experts E_u from its own input f_u^{l-1};
    E^l stacks every unit's experts. Task unit t outputs
    ``f_t^l = (pad(v_t) + softmax(W_t f_t^{l-1}))^T E^l`` (eq. 10): a gate over all experts plus
    a learnt linear combination v_t of its native experts (NativeExpertLinear, a residual; with
    one native expert v_t is fixed at 1 as in the paper; with several it starts at 1/m).
    The shared unit fuses the same way below the top level; at the top it only supplies experts.
    ``shared_experts = 0`` gives AdaTT-sp (section 3.1).
    """

    name = "adatt"
    description = "AdaTT: task-specific + shared fusion units, native linear + gate over all experts"
    defaults = {"task_experts": 2, "shared_experts": 2, "levels": [[64], [32]], "tower": [32]}

    def build(self, in_dim: int) -> None:
        t, m, s = len(self.tasks), self.hparams["task_experts"], self.hparams["shared_experts"]
        if m < 1:
            raise ValueError("AdaTT needs at least one task-specific expert per task")
        levels = self.hparams["levels"]
        n_units = t + (1 if s else 0)
        owner = [u for u in range(t) for _ in range(m)] + [t] * s
        self.register_buffer("owner", torch.tensor(owner, dtype=torch.int64), persistent=False)
        n_all = len(owner)
        self.banks = nn.ModuleList()
        self.gates = nn.ModuleList()
        self.native = nn.ParameterList()
        width = in_dim
        for index, hidden in enumerate(levels):
            top = index == len(levels) - 1
            fusing = t if (top or not s) else n_units
            self.banks.append(ExpertBank(n_all, width, hidden))
            self.gates.append(nn.ModuleList(Gate(width, n_all) for _ in range(fusing)))
            sizes = [m] * t + ([s] if fusing > t else [])
            # v_u for every fusing unit, one row per unit, laid out over all experts (the "pad").
            v = torch.zeros(fusing, n_all)
            for u, size in enumerate(sizes):
                start = u * m
                v[u, start:start + size] = 1.0 / size
            self.native.append(nn.Parameter(v, requires_grad=max(m, s) > 1))
            mask = (v != 0).float()
            self.register_buffer(f"native_mask{index}", mask, persistent=False)
            width = hidden[-1]
        self.n_units = n_units
        self.towers = nn.ModuleList(Tower(width, self.hparams["tower"]) for _ in self.tasks)

    def level_weights(self, index: int, units: torch.Tensor) -> torch.Tensor:
        """Combination weights [B, fusing units, all experts] at level ``index`` (gate + native)."""
        gates = torch.stack([gate(units[:, u]) for u, gate in enumerate(self.gates[index])], dim=1)
        native = self.native[index] * getattr(self, f"native_mask{index}")
        return gates + native.unsqueeze(0)

    def task_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        units = x.unsqueeze(1).expand(-1, self.n_units, -1)
        for index, bank in enumerate(self.banks):
            e = bank(units.index_select(1, self.owner)) if index else bank(x)
            units = torch.einsum("bun,bnd->bud", self.level_weights(index, units), e)
        return [tower(units[:, i]) for i, tower in enumerate(self.towers)]


class AdaTTSp(AdaTT):
    """AdaTT-sp (AdaTT paper, section 3.1): task-specific fusion units only, no shared experts."""

    name = "adatt-sp"
    description = "AdaTT-sp: task-specific fusion units only"
    defaults = {"task_experts": 3, "shared_experts": 0, "levels": [[64], [32]], "tower": [32]}

    def build(self, in_dim: int) -> None:
        if self.hparams["shared_experts"]:
            raise ValueError("AdaTT-sp has no shared experts; use 'adatt' for shared experts")
        super().build(in_dim)
