"""AITM (Xi et al., KDD 2021): adaptive information transfer along a sequence of tasks."""
from __future__ import annotations

import math

import torch
from torch import nn

from fusekit.models.baselines.base import MultiTaskBaseline
from fusekit.models.baselines.blocks import ExpertBank, Tower


class AITM(MultiTaskBaseline):
    """Tasks in the given order form a chain. Task t's bottom (an MLP) gives p_t; for t > 0 the
    AIT module attends over the two tokens (p_t, q_{t-1}), q_{t-1} = transfer(z_{t-1}), with
    Q, K, V linear maps and scores <Q, K> / sqrt(d): z_t = sum_i w_i V(token_i). z_0 = p_0.
    The original's behavioural calibrator (a penalty when a later task's probability exceeds
    an earlier one's) assumes a conversion funnel, which Census tasks are not, so it is left out.
    """

    name = "aitm"
    description = "AITM: per-task bottoms, attention-based transfer from the previous task"
    defaults = {"bottom": [64, 32], "tower": [32]}

    def build(self, in_dim: int) -> None:
        t = len(self.tasks)
        self.bottoms = ExpertBank(t, in_dim, self.hparams["bottom"])
        d = self.bottoms.out_features
        self.transfer = nn.ModuleList(nn.Sequential(nn.Linear(d, d), nn.ReLU()) for _ in range(t - 1))
        self.query = nn.ModuleList(nn.Linear(d, d) for _ in range(t - 1))
        self.key = nn.ModuleList(nn.Linear(d, d) for _ in range(t - 1))
        self.value = nn.ModuleList(nn.Linear(d, d) for _ in range(t - 1))
        self.scale = 1.0 / math.sqrt(d)
        self.towers = nn.ModuleList(Tower(d, self.hparams["tower"]) for _ in self.tasks)

    def task_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        p = self.bottoms(x)
        z = [p[:, 0]]
        for i in range(1, len(self.tasks)):
            tokens = torch.stack([p[:, i], self.transfer[i - 1](z[-1])], dim=1)  # [B, 2, d]
            q, k, v = self.query[i - 1](tokens), self.key[i - 1](tokens), self.value[i - 1](tokens)
            # Each token attends; the AIT output is the attention-weighted sum of values.
            w = torch.softmax((q * k).sum(-1) * self.scale, dim=1)  # [B, 2]
            z.append(torch.einsum("bn,bnd->bd", w, v))
        return [tower(h) for tower, h in zip(self.towers, z)]
