"""AKF building blocks: task gate, fusion gate, Multi-Task Merge, one level."""
from __future__ import annotations

import math

import pytest
import torch

from fusekit.fusion.akf import (AKFLevel, FusionGate, MultiTaskMerge, TaskGate, block_sum_matrix, fold_matrix, per_token,
                         spread_matrix, weighted_sum)


def _vectors(n: int, batch: int = 5, dim: int = 4, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, dim, generator=gen) for _ in range(n)]


@pytest.mark.parametrize("models", [2, 3])  # two models take the sigmoid path, more the softmax one
def test_task_gate_mixes_the_task_outputs_with_softmax_weights(models):
    torch.manual_seed(0)
    outs = _vectors(models, batch=64)
    gate = TaskGate(4, models)
    with torch.no_grad():  # gates far from uniform, so that a wrong weight shows
        gate.linear.weight.mul_(8)
    h, w = gate(torch.cat(outs, 1))
    expected_w = torch.softmax(gate.linear(torch.cat(outs, 1)), dim=1)
    assert torch.allclose(w, expected_w, atol=1e-6)
    expected = sum(expected_w[:, k:k + 1] * outs[k] for k in range(models))
    assert torch.allclose(h, expected, atol=1e-6)
    assert torch.allclose(gate(torch.cat(outs, 1), outs)[0], h, atol=1e-7)
    # Pushing the gate towards the last model makes the mix approach its output.
    with torch.no_grad():
        gate.linear.weight.zero_()
        gate.linear.bias.copy_(torch.tensor([0.0] * (models - 1) + [30.0]))
    h, _ = gate(torch.cat(outs, 1))
    assert torch.allclose(h, outs[-1], atol=1e-5)


def test_fusion_gate_selects_the_top_task_weighted_by_its_gate_and_gets_gradients():
    torch.manual_seed(1)
    others = _vectors(3, seed=1)
    gate = FusionGate(4, 4, n_other=3, top_k=1)
    gate_input = torch.randn(5, 4)
    selected, f, idx = gate(gate_input, others)
    assert selected.shape == (5, 4)
    assert torch.equal(idx[:, 0], f.argmax(1))
    for row in range(5):
        j = int(idx[row, 0])
        assert torch.allclose(selected[row], f[row, j] * others[j][row], atol=1e-6)
    selected.sum().backward()
    # Not a bare argmax: the gate's own weights receive a gradient.
    assert gate.linear.weight.grad is not None and gate.linear.weight.grad.abs().sum() > 0


def test_fusion_gate_top_one_is_topk_and_gather_bit_for_bit_ties_to_the_first():
    torch.manual_seed(6)
    others = _vectors(3, batch=64, seed=6)
    gate = FusionGate(4, 4, n_other=3, top_k=1)
    gate_input = torch.randn(64, 4)
    with torch.no_grad():
        gate.linear.weight[2] = gate.linear.weight[1]  # tasks 1 and 2 tie on every row
        gate.linear.bias[2] = gate.linear.bias[1]
    selected, f, idx = gate(gate_input, others)
    values, top = torch.topk(f, 1, dim=1)
    picked = torch.stack(others, 1).gather(1, top.unsqueeze(-1).expand(-1, -1, 4)).squeeze(1)
    assert torch.equal(selected, values * picked)
    assert set(idx[:, 0].tolist()) <= {0, 1}  # a tie goes to the first of the tied tasks


def test_flat_token_helpers_match_their_reductions():
    gen = torch.Generator().manual_seed(7)
    weights, tokens = torch.rand(6, 3, generator=gen), torch.randn(6, 3, 5, generator=gen)
    flat = tokens.reshape(6, 15)
    expected = (weights.unsqueeze(-1) * tokens).sum(1)
    assert torch.allclose(weighted_sum(weights, flat, spread_matrix(3, 5), fold_matrix(3, 5)), expected, atol=1e-6)
    assert torch.allclose(flat @ block_sum_matrix(3, 5, 0.5), tokens.sum(-1) / 2, atol=1e-6)
    layer = torch.nn.Sequential(torch.nn.Linear(5, 2), torch.nn.ReLU())
    assert torch.allclose(per_token(layer, flat, 3), layer(tokens).reshape(6, 6), atol=1e-6)
    wide = torch.nn.Sequential(torch.nn.Linear(40, 3), torch.nn.ReLU())  # past the block-diagonal width
    wide_tokens = torch.randn(6, 2, 40, generator=gen)
    assert torch.allclose(per_token(wide, wide_tokens.reshape(6, 80), 2), wide(wide_tokens).reshape(6, 6), atol=1e-6)


def test_fusion_gate_over_one_other_task_is_the_constant_one_without_a_layer():
    other = _vectors(1, seed=5)
    gate = FusionGate(4, 4, n_other=1, top_k=1)
    assert gate.linear is None and not list(gate.parameters())
    selected, f, idx = gate(torch.randn(5, 4), other)
    assert torch.equal(selected, other[0])
    assert torch.equal(f, torch.ones(5, 1)) and torch.equal(idx, torch.zeros(5, 1, dtype=torch.long))


def test_fusion_gate_top_k_and_keep_all():
    others = _vectors(3, seed=2)
    gate_input = torch.randn(5, 4)
    two = FusionGate(4, 4, n_other=3, top_k=2)
    selected, f, idx = two(gate_input, others)
    assert selected.shape == (5, 8)
    assert torch.equal(idx, torch.topk(f, 2, dim=1).indices)
    row = 0
    for slot in range(2):
        j = int(idx[row, slot])
        assert torch.allclose(selected[row, 4 * slot:4 * slot + 4], f[row, j] * others[j][row], atol=1e-6)
    everything = FusionGate(4, 4, n_other=3, top_k=7)  # more than there are: keeps all
    selected, f, _ = everything(gate_input, others)
    assert selected.shape == (5, 12)
    assert torch.allclose(selected[:, 4:8], f[:, 1:2] * others[1], atol=1e-6)


@pytest.mark.parametrize("selected", [1, 2])  # two tokens take the sigmoid path, more the softmax one
def test_multi_task_merge_is_scaled_dot_product_attention_for_the_own_token(selected):
    torch.manual_seed(3)
    mtm = MultiTaskMerge(4, att_dim=6, n_selected=selected)
    with torch.no_grad():  # attention far from uniform, so that a wrong weight shows
        mtm.k[0].weight.mul_(6)
    own, *others = _vectors(1 + selected, batch=64, seed=3)
    z, att = mtm(own, torch.cat(others, 1))
    assert z.shape == own.shape and att.shape == (64, 1 + selected)
    tokens = torch.stack([own, *others], 1)
    q, k, v = mtm.q(tokens), mtm.k(tokens), mtm.v(tokens)
    scores = (q[:, 0:1] @ k.transpose(1, 2)) / math.sqrt(6)
    assert torch.allclose(att, torch.softmax(scores, -1).squeeze(1), atol=1e-6)
    expected = (torch.softmax(scores, -1) @ v).squeeze(1)
    assert torch.allclose(z, expected, atol=1e-6)


@pytest.mark.parametrize("use_mtm", [True, False])
def test_akf_level_gives_one_vector_per_task_of_the_task_shape(use_mtm):
    torch.manual_seed(4)
    level = AKFLevel(4, [2, 1, 3], use_mtm=use_mtm)
    outputs = [_vectors(2, seed=10), _vectors(1, seed=11), _vectors(3, seed=12)]
    z, stats = level(outputs)
    assert [t.shape for t in z] == [(5, 4)] * 3
    assert [w.shape for w in stats["task_gate"]] == [(5, 2), (5, 1), (5, 3)]
    if use_mtm:
        assert [f.shape for f in stats["fusion_gate"]] == [(5, 2)] * 3
    else:
        # Without MTM each task keeps its gated mix: task 1's single model passes through unchanged.
        assert "fusion_gate" not in stats
        assert torch.allclose(z[1], outputs[1][0])


def test_akf_level_refuses_a_single_task():
    with pytest.raises(ValueError):
        AKFLevel(4, [2])
