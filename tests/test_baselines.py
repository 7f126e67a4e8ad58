"""The multi-task baselines: interface, gradients, sizes, routing, and real learning on Census rows."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fusekit.models.baselines import BASELINES, build_baseline
from fusekit.errors import FusekitError

CARDS = [5, 9, 3, 7]
N_DENSE = 3
TASKS2 = ["income", "never_married"]
TASKS3 = ["income", "never_married", "education"]


def _batch(n: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CARDS], dim=1)
    return cat, torch.randn(n, N_DENSE, generator=g)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("tasks", [TASKS2, TASKS3], ids=["2tasks", "3tasks"])
@pytest.mark.parametrize("name", sorted(BASELINES))
def test_one_logit_vector_per_task_and_gradient_everywhere(name, tasks):
    torch.manual_seed(0)
    model = build_baseline(name, CARDS, N_DENSE, tasks)
    cat, dense = _batch(32)
    out = model(cat, dense)
    assert list(out) == tasks
    for logits in out.values():
        assert logits.shape == (32,) and logits.dtype == torch.float32
        assert torch.isfinite(logits).all()
    labels = torch.randint(0, 2, (32, len(tasks))).float()
    loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(out[t], labels[:, i]) for i, t in enumerate(tasks))
    loss.backward()
    for pname, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"
    # Rows are independent: a row's output does not depend on the rest of the batch.
    model.eval()
    with torch.no_grad():
        full = model(cat, dense)
        part = model(cat[:5], dense[:5])
    for t in tasks:
        torch.testing.assert_close(full[t][:5], part[t], rtol=1e-5, atol=1e-6)


def _linear(i: int, o: int) -> int:
    return i * o + o


def test_parameter_counts_match_the_architecture():
    in_dim = len(CARDS) * 4 + N_DENSE
    emb = sum(CARDS) * 4
    tower = _linear(32, 32) + _linear(32, 1)
    mmoe = build_baseline("mmoe", CARDS, N_DENSE, TASKS2, n_experts=5)
    expected = emb + 5 * (_linear(in_dim, 64) + _linear(64, 32)) + _linear(in_dim, 2 * 5) + 2 * tower
    assert mmoe.num_parameters() == expected == mmoe.num_parameters(trainable_only=True)
    sb = build_baseline("shared-bottom", CARDS, N_DENSE, TASKS3)
    assert sb.num_parameters() == emb + _linear(in_dim, 128) + _linear(128, 64) + 3 * (_linear(64, 32) + _linear(32, 1))
    ple = build_baseline("ple", CARDS, N_DENSE, TASKS2)  # 2 per task + 2 shared per level, widths 64 and 32
    experts = 6 * (_linear(in_dim, 64) + _linear(64, 32))
    gates = 2 * _linear(in_dim, 4) + _linear(in_dim, 6) + 2 * _linear(64, 4)  # the top level has no shared gate
    assert ple.num_parameters() == emb + experts + gates + 2 * tower


def test_adatt_sp_has_no_shared_experts_and_adatt_does():
    sp = build_baseline("adatt-sp", CARDS, N_DENSE, TASKS3)
    general = build_baseline("adatt", CARDS, N_DENSE, TASKS3)
    assert [b.n for b in sp.banks] == [3 * 3, 3 * 3]
    assert [b.n for b in general.banks] == [3 * 2 + 2, 3 * 2 + 2]
    # Every task unit's gate spans all experts of its level (task-to-task fusion).
    assert all(g.linear.out_features == 9 for gates in sp.gates for g in gates)
    # The shared unit fuses below the top level only; at the top it just supplies experts.
    assert [len(g) for g in general.gates] == [4, 3]
    with pytest.raises(ValueError, match="no shared experts"):
        build_baseline("adatt-sp", CARDS, N_DENSE, TASKS2, shared_experts=1)
    # The shared experts feed every task: perturbing them moves all outputs.
    cat, dense = _batch(8)
    general.eval()
    with torch.no_grad():
        before = general(cat, dense)
        general.banks[0].weights[0][-2:] += 0.5
        after = general(cat, dense)
    for t in TASKS3:
        assert not torch.allclose(before[t], after[t])


def test_adatt_native_expert_linear_is_a_residual_on_native_experts():
    model = build_baseline("adatt-sp", CARDS, N_DENSE, TASKS2, task_experts=2)
    v = model.native[0].detach()
    # Task 0 combines its own two experts linearly (1/m each) and nothing of task 1's.
    assert torch.allclose(v[0], torch.tensor([0.5, 0.5, 0.0, 0.0]))
    assert torch.allclose(v[1], torch.tensor([0.0, 0.0, 0.5, 0.5]))
    units = torch.randn(4, 2, model.input.out_features)
    weights = model.level_weights(0, units)
    # Gate (sums to 1 over all experts) + native weights (sum to 1 over own experts).
    torch.testing.assert_close(weights.sum(-1), torch.full((4, 2), 2.0))


def test_ple_shared_experts_feed_every_task_and_top_task_experts_only_their_task():
    torch.manual_seed(0)
    model = build_baseline("ple", CARDS, N_DENSE, TASKS3)
    model.eval()
    cat, dense = _batch(8)
    with torch.no_grad():
        before = model(cat, dense)
        model.banks[1].weights[0][-2:] += 0.5  # the shared experts of the top level
        shared = model(cat, dense)
        model.banks[1].weights[0][:2] += 0.5  # task 0's experts of the top level
        own = model(cat, dense)
    for t in TASKS3:
        assert not torch.allclose(before[t], shared[t]), "a shared expert does not reach every task"
    assert not torch.allclose(shared["income"], own["income"])
    torch.testing.assert_close(shared["never_married"], own["never_married"])
    torch.testing.assert_close(shared["education"], own["education"])


def test_cross_stitch_starts_near_independent_columns_and_aitm_transfers_forward_only():
    cs = build_baseline("cross-stitch", CARDS, N_DENSE, TASKS2)
    alpha = cs.stitches[0].detach()
    assert torch.allclose(alpha, torch.tensor([[0.9, 0.1], [0.1, 0.9]]))
    aitm = build_baseline("aitm", CARDS, N_DENSE, TASKS3)
    aitm.eval()
    cat, dense = _batch(8)
    with torch.no_grad():
        before = aitm(cat, dense)
        aitm.bottoms.weights[0][1] += 0.5  # the second task's bottom
        after = aitm(cat, dense)
    torch.testing.assert_close(before["income"], after["income"])  # earlier tasks do not see later ones
    assert not torch.allclose(before["never_married"], after["never_married"])
    assert not torch.allclose(before["education"], after["education"])  # transfer reaches the next task


def test_ml_mmoe_gates_read_the_raw_input():
    model = build_baseline("ml-mmoe", CARDS, N_DENSE, TASKS2)
    in_dim = model.input.out_features
    assert [(g.linear.in_features, g.g) for g in model.gates] == [(in_dim, 6), (in_dim, 2)]


def test_bad_names_and_hyperparameters_are_user_errors():
    with pytest.raises(FusekitError, match="unknown baseline 'nope'"):
        build_baseline("nope", CARDS, N_DENSE, TASKS2)
    with pytest.raises(FusekitError, match="unknown hyperparameter"):
        build_baseline("mmoe", CARDS, N_DENSE, TASKS2, experts=3)
    with pytest.raises(FusekitError, match="repeat"):
        build_baseline("mmoe", CARDS, N_DENSE, ["income", "income"])


@pytest.fixture(scope="module")
def census_small():
    from fusekit.data import load_dataset

    ds = load_dataset("census-income", TASKS2)
    rng = np.random.default_rng(0)
    train = ds.train.subset(np.sort(rng.choice(len(ds.train), 8000, replace=False)))
    val = ds.val.subset(np.sort(rng.choice(len(ds.val), 4000, replace=False)))
    return ds.spec, train, val


def test_mmoe_learns_both_tasks_from_a_few_thousand_real_rows(census_small):
    from fusekit.seeding import seed_everything
    from fusekit.train import TrainConfig, evaluate, fit

    spec, train, val = census_small
    seed_everything(0)
    model = build_baseline("mmoe", spec.cardinalities, len(spec.dense), TASKS2)
    untrained = evaluate(model, val, TASKS2)
    # About 90 steps: income, 6 % positives, needs a few dozen steps before its AUC passes 0.5.
    result = fit(model, train, val, TASKS2, TrainConfig(max_epochs=3, patience=3, seed=0, device="cpu",
                                                        progress=False, batch_size=256))
    auc = evaluate(model, val, TASKS2)
    assert auc["income"] > 0.8, auc
    assert auc["never_married"] > 0.9, auc
    assert auc["income"] > untrained["income"] + 0.05
    assert result.best_epoch >= 1
