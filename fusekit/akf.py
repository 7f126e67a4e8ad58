"""Adaptive Knowledge Fusion (EMM III-B): task gate, fusion gate, Multi-Task Merge.

All modules here work on vector component outputs ``[B, d]``. The gates of task t see the
concatenation of task t's component outputs at the level. The paper's gates read the raw input
x; at level 1 that is a row of categorical ids plus dense features, which is not a vector a
gate could read without an embedding of its own, so fusekit gates read what the components
made of x instead (the same information, already embedded by the trained models).
"""
from __future__ import annotations

import math

import torch
from torch import nn

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "elu": nn.ELU, "tanh": nn.Tanh}


def _activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def weighted_sum(weights: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """sum_k weights[:, k] * tokens[:, k]: weights [B, n], tokens [B, n, d] -> [B, d].

    Written as a product with a stack of identity matrices: onnxruntime runs that as one GEMM,
    about ten times faster than the ReduceSum over a middle axis that ``.sum(1)`` exports to.
    """
    n, d = tokens.shape[1], tokens.shape[2]
    summing = torch.eye(d, dtype=tokens.dtype, device=tokens.device).repeat(n, 1)  # [n*d, d]
    return (weights.unsqueeze(-1) * tokens).reshape(tokens.shape[0], n * d) @ summing


def row_dot(a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """scale * sum over the last axis of a * b: [B, n, d] x [B, 1 or n, d] -> [B, n] (a GEMM, as above)."""
    prod = a * b
    weights = torch.full((prod.shape[-1], 1), scale, dtype=prod.dtype, device=prod.device)
    return (prod.reshape(-1, prod.shape[-1]) @ weights).reshape(prod.shape[0], prod.shape[1])


class TaskGate(nn.Module):
    """Intra-task mixture of experts: softmax weights over the task's own components."""

    def __init__(self, in_dim: int, n_models: int):
        super().__init__()
        self.n_models = n_models
        self.linear = nn.Linear(in_dim, n_models)

    def forward(self, gate_input: torch.Tensor, stacked: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """gate_input [B, m*d], stacked [B, m, d] (the same values) -> (h_t = sum_k g_k h_k, g [B, m])."""
        weights = torch.softmax(self.linear(gate_input), dim=-1)
        return weighted_sum(weights, stacked), weights


class FusionGate(nn.Module):
    """Inter-task selection: softmax over the *other* tasks, keep the top-k.

    The selected outputs are multiplied by their gate value, so the gate receives gradients
    (a bare argmax would not). With two tasks the softmax has one entry and is constant: the
    gate only matters from three tasks on.
    """

    def __init__(self, in_dim: int, n_other: int, top_k: int = 1):
        super().__init__()
        if n_other < 1:
            raise ValueError("a fusion gate needs at least one other task")
        self.n_other = n_other
        self.top_k = max(1, min(top_k, n_other))
        # A softmax over a single task is the constant 1 and passes no gradient: no layer for it.
        self.linear = nn.Linear(in_dim, n_other) if n_other > 1 else None

    def forward(self, gate_input: torch.Tensor, others: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (selected tokens [B, k, d] weighted by their gate value, gate f [B, T-1], indices [B, k])."""
        stacked = torch.stack(others, dim=1)  # [B, T-1, d]
        if self.linear is None:
            gate = torch.ones(stacked.shape[0], 1, dtype=stacked.dtype, device=stacked.device)
            return stacked, gate, torch.zeros(stacked.shape[0], 1, dtype=torch.long, device=stacked.device)
        gate = torch.softmax(self.linear(gate_input), dim=-1)
        if self.top_k == self.n_other:
            # Every other task is kept: no selection op needed (and no topk in the exported graph).
            idx = torch.arange(self.n_other, device=gate.device).unsqueeze(0).expand(gate.shape[0], -1)
            return gate.unsqueeze(-1) * stacked, gate, idx
        values, idx = torch.topk(gate, self.top_k, dim=-1)
        picked = torch.gather(stacked, 1, idx.unsqueeze(-1).expand(-1, -1, stacked.shape[-1]))
        return values.unsqueeze(-1) * picked, gate, idx


class MultiTaskMerge(nn.Module):
    """Self-attention over the tokens (h_t, selected h_j); returns the output at t's own token.

    Q, K and V are small networks (Linear + activation); scores are <Q, K> / sqrt(d_att).
    V maps back to d so that z_t has the shape of h_t.
    """

    def __init__(self, dim: int, att_dim: int | None = None, activation: str = "relu"):
        super().__init__()
        att_dim = att_dim or dim
        self.att_dim = att_dim
        self.q = nn.Sequential(nn.Linear(dim, att_dim), _activation(activation))
        self.k = nn.Sequential(nn.Linear(dim, att_dim), _activation(activation))
        self.v = nn.Sequential(nn.Linear(dim, dim), _activation(activation))

    def forward(self, own: torch.Tensor, selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """own [B, d], selected [B, k, d] -> (z [B, d], attention of own token [B, 1+k])."""
        tokens = torch.cat([own.unsqueeze(1), selected], dim=1)  # [B, 1+k, d]
        query = self.q(own)  # only t's own token's output is used
        # Not batched matmuls: onnxruntime would run those as B tiny GEMMs, several times slower.
        scores = row_dot(self.k(tokens), query.unsqueeze(1), 1.0 / math.sqrt(self.att_dim))  # [B, 1+k]
        attn = torch.softmax(scores, dim=-1)
        return weighted_sum(attn, self.v(tokens)), attn


class AKFLevel(nn.Module):
    """One AKF module: per task a task gate, a fusion gate and an MTM.

    ``forward(outputs)`` takes, per task, the list of that task's component outputs [B, d] and
    returns per task z_t [B, d] plus the gate values of this batch (for statistics).
    """

    def __init__(self, dim: int, models_per_task: list[int], *, use_mtm: bool = True, top_k: int = 1,
                 activation: str = "relu", att_dim: int | None = None):
        super().__init__()
        n_tasks = len(models_per_task)
        if n_tasks < 2:
            raise ValueError("AKF needs at least two tasks")
        self.dim = dim
        self.use_mtm = use_mtm
        self.models_per_task = list(models_per_task)
        self.task_gates = nn.ModuleList(TaskGate(dim * m, m) for m in models_per_task)
        if use_mtm:
            self.fusion_gates = nn.ModuleList(FusionGate(dim * m, n_tasks - 1, top_k) for m in models_per_task)
            self.merges = nn.ModuleList(MultiTaskMerge(dim, att_dim, activation) for _ in models_per_task)

    def forward(self, outputs: list[list[torch.Tensor]]) -> tuple[list[torch.Tensor], dict[str, list[torch.Tensor]]]:
        """outputs[t][k]: component output of model k of task t -> (z per task, gate values)."""
        gate_inputs = [torch.cat(o, dim=-1) if len(o) > 1 else o[0] for o in outputs]
        fused, task_w = [], []
        for t, gate in enumerate(self.task_gates):
            # The concatenation viewed as [B, m, d]: the stack of the task's outputs without a copy.
            stacked = gate_inputs[t].reshape(gate_inputs[t].shape[0], len(outputs[t]), self.dim)
            h, w = gate(gate_inputs[t], stacked)
            fused.append(h)
            task_w.append(w)
        stats: dict[str, list[torch.Tensor]] = {"task_gate": task_w}
        if not self.use_mtm:
            return fused, stats
        z, fusion_w, attention = [], [], []
        for t in range(len(fused)):
            others = [fused[j] for j in range(len(fused)) if j != t]
            selected, f, _ = self.fusion_gates[t](gate_inputs[t], others)
            out, att = self.merges[t](fused[t], selected)
            z.append(out)
            fusion_w.append(f)
            attention.append(att)
        stats["fusion_gate"] = fusion_w
        stats["attention"] = attention
        return z, stats
