"""Small building blocks shared by the baselines: MLPs, towers, a batched bank of experts."""
from __future__ import annotations

import math

import torch
from torch import nn


def mlp(in_dim: int, hidden: list[int], dropout: float = 0.0) -> nn.Sequential:
    """Linear + ReLU (+ dropout) per hidden width; empty ``hidden`` gives the identity."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        in_dim = width
    return nn.Sequential(*layers)


class Tower(nn.Module):
    """A task tower: an MLP and one output unit; returns logits of shape [B]."""

    def __init__(self, in_dim: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        self.body = mlp(in_dim, hidden, dropout)
        self.out = nn.Linear(hidden[-1] if hidden else in_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x)).squeeze(-1)


class ExpertBank(nn.Module):
    """``n`` independent MLP experts with the same widths, computed in one batched matmul per layer.

    Input: ``[B, in_dim]`` (every expert sees the same input) or ``[B, n, in_dim]`` (expert i sees
    row i). Output: ``[B, n, hidden[-1]]``. Batching keeps an epoch on CPU to seconds, where a
    Python loop over a dozen small ``nn.Linear`` experts is dominated by call overhead. Each
    expert is initialised like ``nn.Linear``.
    """

    def __init__(self, n: int, in_dim: int, hidden: list[int]):
        super().__init__()
        if n < 1 or not hidden:
            raise ValueError("an expert bank needs at least one expert and one hidden width")
        self.n = n
        self.out_features = hidden[-1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for width in hidden:
            bound = 1.0 / math.sqrt(in_dim)
            self.weights.append(nn.Parameter(torch.empty(n, in_dim, width).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n, width).uniform_(-bound, bound)))
            in_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            if i == 0 and h.dim() == 2:
                h = torch.einsum("bi,nio->bno", h, w)
            else:
                h = torch.einsum("bni,nio->bno", h, w)
            h = torch.relu(h + b)
        return h


class Gate(nn.Module):
    """A softmax gate: one linear layer from its input to ``n`` expert weights."""

    def __init__(self, in_dim: int, n: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x), dim=-1)


class GateBank(nn.Module):
    """``g`` softmax gates over ``n`` experts that read the same input: one linear layer for all,
    output ``[B, g, n]`` (one matmul instead of ``g`` small ones)."""

    def __init__(self, in_dim: int, g: int, n: int):
        super().__init__()
        self.g, self.n = g, n
        self.linear = nn.Linear(in_dim, g * n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.linear(x).view(-1, self.g, self.n), dim=-1)


def mix_all(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Every gate's mixture: ``[B, g, n]`` x ``[B, n, d]`` -> ``[B, g, d]``."""
    return torch.bmm(weights, experts)


def mix(weights: torch.Tensor, experts: torch.Tensor) -> torch.Tensor:
    """Weighted sum of experts: ``[B, n]`` x ``[B, n, d]`` -> ``[B, d]``."""
    return torch.einsum("bn,bnd->bd", weights, experts)
