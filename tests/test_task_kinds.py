"""How sources of each task kind are averaged: logit outputs in log space, exactly, at any size."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fusekit.task_kinds import TaskKind


def _log_mean_exp(logs: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log(sum_k w_k exp(logs[k])) in float64, stably."""
    top = logs.max(axis=0)
    return top + np.log(np.tensordot(weights, np.exp(logs - top), axes=1))


def _logit_of_average(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """log p - log(1 - p) of p = sum_k w_k sigmoid(logits[k]), in float64 (log sigmoid(x) = -log1p(exp(-x)))."""
    return _log_mean_exp(-np.logaddexp(0.0, -logits), weights) - _log_mean_exp(-np.logaddexp(0.0, logits), weights)


@pytest.mark.parametrize("weights", [[0.5, 0.5], [0.2, 0.3, 0.5]])
def test_binary_logits_mix_to_the_exact_logit_of_the_average_probability(weights):
    rng = np.random.default_rng(0)
    w = np.array(weights)
    logits = rng.normal(scale=25.0, size=(len(w), 200))
    logits[:, :4] = np.array([30.0, -30.0, 60.0, -45.0]) + np.arange(len(w))[:, None]  # every source sure
    kind = TaskKind("binary", output="logit", shape=(1,))
    mixed = kind.mix([torch.tensor(x, dtype=torch.float32).reshape(-1, 1) for x in logits],
                     torch.tensor(w, dtype=torch.float32))
    expected = _logit_of_average(logits.astype(np.float32).astype(np.float64), w)
    assert torch.isfinite(mixed).all()
    assert np.abs(expected).max() > 40  # far past the +-13.8 of a clamped probability
    np.testing.assert_allclose(mixed.double().numpy(), expected, rtol=1e-5, atol=1e-5)


def test_multiclass_logits_mix_to_the_log_of_the_average_probabilities():
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=20.0, size=(2, 50, 4))
    logits[:, 0] = [40.0, -40.0, 0.0, 5.0]  # class probabilities down to e-80: zero as probabilities
    kind = TaskKind("multiclass", classes=4, output="logit", shape=(4,))
    mixed = kind.mix([torch.tensor(x, dtype=torch.float32) for x in logits], torch.tensor([0.5, 0.5]))
    x = logits.astype(np.float32).astype(np.float64)
    log_softmax = x - np.logaddexp.reduce(x, axis=-1, keepdims=True)
    expected = _log_mean_exp(log_softmax, np.array([0.5, 0.5]))
    assert torch.isfinite(mixed).all()
    np.testing.assert_allclose(mixed.double().numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(torch.softmax(mixed, -1).sum(-1).numpy(), 1.0, atol=1e-6)


@pytest.mark.parametrize("kind", [TaskKind(), TaskKind("multiclass", 3, "probability", (3,)), TaskKind("regression",
                                                                                                     output="value")])
def test_probability_and_value_outputs_mix_as_before(kind):
    gen = torch.Generator().manual_seed(2)
    if kind.kind == "multiclass":
        outs = [torch.softmax(torch.randn(20, 3, generator=gen), -1) for _ in range(2)]
    elif kind.kind == "binary":
        outs = [torch.rand(20, generator=gen) for _ in range(2)]
    else:
        outs = [torch.randn(20, generator=gen) * 10 for _ in range(2)]
    w = torch.tensor([0.25, 0.75])
    expected = kind.from_mix_space(w[0] * kind.to_mix_space(outs[0]) + w[1] * kind.to_mix_space(outs[1]))
    assert torch.equal(kind.mix(outs, w), expected)
