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


# -- sums over a few tokens, written as GEMMs ------------------------------------------------------
# A task's tokens (its models' outputs, or the MTM tokens) are kept side by side in one flat
# [B, n*d] tensor, and sums over them are products with constant matrices. onnxruntime runs the
# exported graph as a few GEMMs: a reduction over a middle axis, or a batched matmul of B tiny
# matrices, costs ten times as much at large batch, and 3-D tensors cost extra Reshape and
# Unsqueeze ops that dominate the latency of one row.
def spread_matrix(n: int, d: int) -> torch.Tensor:
    """[n, n*d]: ``w @ spread_matrix(n, d)`` repeats each of the n weights d times."""
    return torch.eye(n).repeat_interleave(d, dim=1)


def fold_matrix(n: int, d: int, scale: float = 1.0) -> torch.Tensor:
    """[n*d, d]: ``flat @ fold_matrix(n, d)`` adds the n blocks of width d (times ``scale``)."""
    return torch.eye(d).repeat(n, 1) * scale


def block_sum_matrix(n: int, d: int, scale: float = 1.0) -> torch.Tensor:
    """[n*d, n]: ``flat @ block_sum_matrix(n, d)`` sums within each of the n blocks (times ``scale``)."""
    return torch.eye(n).repeat_interleave(d, dim=0) * scale


def weighted_sum(weights: torch.Tensor, flat: torch.Tensor, spread: torch.Tensor, fold: torch.Tensor) -> torch.Tensor:
    """sum_k weights[:, k] * block k of ``flat``: [B, n] x [B, n*d] -> [B, d]."""
    return ((weights @ spread) * flat) @ fold


# A softmax over two entries is the sigmoid of their difference. Written so, a two-way mix is
# three element-wise ops: onnxruntime's Softmax over a last axis of 2 costs as much as a 32x32
# Gemm at batch 4096, and the GEMM form of the sum moves twice the data. The weight is computed
# d times over (a Gemm to [B, d] costs what one to [B, 1] does): a Mul that broadcasts [B, 1]
# against [B, d] costs three times one of equal shapes.
def pair_mix(g: torch.Tensor, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """g * first + (1 - g) * second, for g [B, d] (g = softmax([a, b])[0] = sigmoid(a - b))."""
    return second + g * (first - second)


# Up to this width a block-diagonal GEMM over all tokens at once is cheapest: its wasted
# multiply-adds cost less than the two Reshapes of the other way. Wider, the waste dominates.
BLOCK_DIAGONAL_MAX_WIDTH = 32


def per_token(layer: nn.Sequential, flat: torch.Tensor, n: int) -> torch.Tensor:
    """``layer`` (Linear + activation) applied to each of the n blocks of ``flat``, kept flat."""
    linear, activation = layer[0], layer[1]
    if linear.in_features <= BLOCK_DIAGONAL_MAX_WIDTH:
        weight = torch.block_diag(*[linear.weight] * n)  # a constant in the exported graph: one Gemm
        return activation(nn.functional.linear(flat, weight, linear.bias.repeat(n)))
    rows = flat.reshape(flat.shape[0] * n, linear.in_features)
    return activation(linear(rows)).reshape(flat.shape[0], n * linear.out_features)


class TaskGate(nn.Module):
    """Intra-task mixture of experts: softmax weights over the task's own components."""

    def __init__(self, dim: int, n_models: int):
        super().__init__()
        self.n_models = n_models
        self.linear = nn.Linear(dim * n_models, n_models)
        self.register_buffer("spread", spread_matrix(n_models, dim), persistent=False)
        self.register_buffer("fold", fold_matrix(n_models, dim), persistent=False)

    def forward(self, outputs: torch.Tensor, parts: list[torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """outputs: the task's m component outputs side by side [B, m*d] (``parts``: the same, one by one)
        -> (h_t = sum_k g_k h_k, g [B, m])."""
        if self.n_models == 2:
            first, second = parts if parts is not None else outputs.chunk(2, dim=-1)
            weight, bias = self.linear.weight, self.linear.bias
            width = first.shape[-1]
            g = torch.sigmoid(nn.functional.linear(outputs, (weight[:1] - weight[1:]).expand(width, -1),
                                                   (bias[:1] - bias[1:]).expand(width)))
            return pair_mix(g, first, second), torch.cat([g[:, :1], 1 - g[:, :1]], dim=-1)
        weights = torch.softmax(self.linear(outputs), dim=-1)
        return weighted_sum(weights, outputs, self.spread, self.fold), weights


class FusionGate(nn.Module):
    """Inter-task selection: softmax over the *other* tasks, keep the top-k.

    The selected outputs are multiplied by their gate value, so the gate receives gradients
    (a bare argmax would not). With two tasks the softmax has one entry and is constant: the
    gate only matters from three tasks on.
    """

    def __init__(self, in_dim: int, dim: int, n_other: int, top_k: int = 1):
        super().__init__()
        if n_other < 1:
            raise ValueError("a fusion gate needs at least one other task")
        self.n_other = n_other
        self.dim = dim
        self.top_k = max(1, min(top_k, n_other))
        # A softmax over a single task is the constant 1 and passes no gradient: no layer for it.
        self.linear = nn.Linear(in_dim, n_other) if n_other > 1 else None
        self.register_buffer("spread", spread_matrix(self.top_k, dim), persistent=False)
        self.register_buffer("select_spread", spread_matrix(n_other, dim), persistent=False)
        self.register_buffer("select_fold", fold_matrix(n_other, dim), persistent=False)

    def forward(self, gate_input: torch.Tensor, others: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (the k selected outputs side by side [B, k*d], each times its gate value; gate f [B, T-1];
        indices [B, k])."""
        batch = others[0].shape[0]
        if self.linear is None:
            gate = torch.ones(batch, 1, dtype=others[0].dtype, device=others[0].device)
            return others[0], gate, torch.zeros(batch, 1, dtype=torch.long, device=others[0].device)
        gate = torch.softmax(self.linear(gate_input), dim=-1)
        if self.top_k == self.n_other:
            # Every other task is kept: no selection op needed (and no topk in the exported graph).
            idx = torch.arange(self.n_other, device=gate.device).unsqueeze(0).expand(batch, -1)
            return (gate @ self.spread) * torch.cat(others, dim=-1), gate, idx
        if self.top_k == 1:
            # The gate value of the first largest entry, zero elsewhere, then a weighted sum as GEMMs:
            # the same bits as topk + gather (every other term is an exact zero), without the
            # TopK, Expand and GatherElements (3-4 % of the mixed pool's fused graph at batch 4096).
            idx = gate.argmax(dim=-1, keepdim=True)
            mask = (idx == torch.arange(self.n_other, device=gate.device)).to(gate.dtype)
            return weighted_sum(gate * mask, torch.cat(others, dim=-1), self.select_spread, self.select_fold), gate, idx
        values, idx = torch.topk(gate, self.top_k, dim=-1)
        stacked = torch.stack(others, dim=1)  # [B, T-1, d]
        picked = torch.gather(stacked, 1, idx.unsqueeze(-1).expand(-1, -1, self.dim))
        return (values.unsqueeze(-1) * picked).reshape(batch, self.top_k * self.dim), gate, idx


class MultiTaskMerge(nn.Module):
    """Self-attention over the tokens (h_t, selected h_j); returns the output at t's own token.

    Q, K and V are small networks (Linear + activation); scores are <Q, K> / sqrt(d_att).
    V maps back to d so that z_t has the shape of h_t.
    """

    def __init__(self, dim: int, att_dim: int | None = None, activation: str = "relu", n_selected: int = 1):
        super().__init__()
        att_dim = att_dim or dim
        self.att_dim = att_dim
        self.n_tokens = 1 + n_selected
        self.q = nn.Sequential(nn.Linear(dim, att_dim), _activation(activation))
        self.k = nn.Sequential(nn.Linear(dim, att_dim), _activation(activation))
        self.v = nn.Sequential(nn.Linear(dim, dim), _activation(activation))
        n = self.n_tokens
        self.register_buffer("score", block_sum_matrix(n, att_dim, 1.0 / math.sqrt(att_dim)), persistent=False)
        self.register_buffer("pair_score", torch.full((att_dim, dim), 1.0 / math.sqrt(att_dim)), persistent=False)
        self.register_buffer("spread", spread_matrix(n, dim), persistent=False)
        self.register_buffer("fold", fold_matrix(n, dim), persistent=False)

    def forward(self, own: torch.Tensor, selected: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """own [B, d], selected [B, k*d] -> (z [B, d], attention of own token [B, 1+k])."""
        if self.n_tokens == 2:
            return self._pair(own, selected)
        tokens = torch.cat([own, selected], dim=-1)  # [B, (1+k)*d]
        keys = per_token(self.k, tokens, self.n_tokens)  # [B, (1+k)*a]
        # Only t's own token's query is used, once per key: a Linear with its weights repeated
        # computes the repeated query directly (the activation works element by element).
        linear, activation = self.q[0], self.q[1]
        queries = activation(nn.functional.linear(own, linear.weight.repeat(self.n_tokens, 1),
                                                  linear.bias.repeat(self.n_tokens)))
        attn = torch.softmax((keys * queries) @ self.score, dim=-1)  # [B, 1+k]
        return weighted_sum(attn, per_token(self.v, tokens, self.n_tokens), self.spread, self.fold), attn

    def _pair(self, own: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Two tokens: the attention of the own token is sigmoid(<q, k_own - k_other> / sqrt(a))."""
        a = torch.sigmoid(((self.k(own) - self.k(other)) * self.q(own)) @ self.pair_score)
        return pair_mix(a, self.v(own), self.v(other)), torch.cat([a[:, :1], 1 - a[:, :1]], dim=-1)


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
        self.task_gates = nn.ModuleList(TaskGate(dim, m) for m in models_per_task)
        if use_mtm:
            self.fusion_gates = nn.ModuleList(FusionGate(dim * m, dim, n_tasks - 1, top_k) for m in models_per_task)
            k = self.fusion_gates[0].top_k
            self.merges = nn.ModuleList(MultiTaskMerge(dim, att_dim, activation, k) for _ in models_per_task)

    def forward(self, outputs: list[list[torch.Tensor]]) -> tuple[list[torch.Tensor], dict[str, list[torch.Tensor]]]:
        """outputs[t][k]: component output of model k of task t -> (z per task, gate values)."""
        gate_inputs = [torch.cat(o, dim=-1) if len(o) > 1 else o[0] for o in outputs]
        fused, task_w = [], []
        for t, gate in enumerate(self.task_gates):
            h, w = gate(gate_inputs[t], outputs[t])
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
