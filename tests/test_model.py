"""The fused model over frozen components: both modes, the ablations, what stays frozen."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from fusekit.errors import FusekitError
from fusekit.decompose.manifest import Boundary, Manifest
from fusekit.fusion.model import FusedModel, FusionOptions, DeployedOutputs, SourceModel


TASKS = {"a": ["a1", "a2"], "b": ["b1"], "c": ["c1", "c.v2"]}  # "." is not allowed in torch module keys


class Level1(nn.Module):
    """Embedding + Linear + ReLU over (categorical, dense), like a fusekit tabular model's first layer."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.table = nn.Embedding(20, 3)
        self.linear = nn.Linear(4 * 3 + 3, width)
        self.norm = nn.BatchNorm1d(width)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.norm(self.linear(torch.cat([self.table(cat).flatten(1), dense], 1))))


class Frozen(nn.Module):
    """A frozen component as fusekit.components makes them: eval semantics whatever the mode."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner.eval()
        for p in self.inner.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True):  # noqa: D102 - inference semantics always
        super().train(mode)
        self.inner.eval()
        return self

    def forward(self, *inputs):
        return self.inner(*inputs)


def _source(name: str, seed: int) -> SourceModel:
    torch.manual_seed(seed)
    first = Level1()
    first.norm.running_mean.uniform_(-0.5, 0.5)
    head = nn.Sequential(nn.Linear(6, 1), nn.Sigmoid(), nn.Flatten(0))
    return SourceModel(name, [Frozen(first), Frozen(nn.Sequential(nn.Linear(8, 6), nn.ReLU()))],
                       ["categorical", "dense"], head=Frozen(head))


def _sources(tasks=TASKS) -> dict[str, SourceModel]:
    return {m: _source(m, 10 + i) for i, m in enumerate(m for ms in tasks.values() for m in ms)}


def _inputs(batch: int = 32, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 20, (batch, 4), generator=gen), torch.randn(batch, 3, generator=gen)


def _source_prob(src: SourceModel, cat, dense) -> torch.Tensor:
    return src.head(src.components[1](src.components[0](cat, dense)))


def _model(mode: str = "residual", **kw) -> tuple[FusedModel, dict]:
    sources = _sources()
    return FusedModel(TASKS, sources, [8, 6], ["categorical", "dense"], FusionOptions(mode=mode, **kw)), sources


@pytest.mark.parametrize("fuse_at", ["last", "all"])
def test_residual_mode_starts_exactly_at_the_average_of_the_source_models(fuse_at):
    model, sources = _model("residual", fuse_at=fuse_at)
    cat, dense = _inputs()
    probs = DeployedOutputs(model)(cat, dense)
    for task, p in zip(model.task_names, probs):
        average = torch.stack([_source_prob(sources[m], cat, dense) for m in TASKS[task]]).mean(0)
        assert torch.allclose(p, average, atol=1e-6), task


def _train_steps(model: FusedModel, steps: int = 3) -> None:
    cat, dense = _inputs(64, seed=1)
    target = (dense[:, 0] > 0).float()
    opt = torch.optim.Adam(model.fusion_parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        logits = model(cat, dense)
        loss = sum(nn.functional.binary_cross_entropy_with_logits(v, target) for v in logits.values())
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("mode", ["residual", "paper"])
def test_training_moves_only_the_fusion_parameters(mode):
    model, _ = _model(mode)
    frozen_before = {k: v.clone() for k, v in model.components.state_dict().items()}
    cat, dense = _inputs()
    before = {k: v.detach().clone() for k, v in model(cat, dense).items()}
    _train_steps(model)
    model.eval()
    after = model(cat, dense)
    assert all(not torch.allclose(before[t], after[t]) for t in before)
    for key, value in model.components.state_dict().items():
        # Weights and BatchNorm statistics of the components did not move in train mode.
        assert torch.equal(value, frozen_before[key]), key
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith(("components.", "heads.")) for n in trainable)


def test_paper_mode_outputs_one_logit_per_task_from_new_towers():
    model, _ = _model("paper")
    cat, dense = _inputs(7)
    out = model(cat, dense)
    assert list(out) == ["a", "b", "c"] and all(v.shape == (7,) for v in out.values())
    assert not hasattr(model, "heads") and len(model.towers) == 3


def test_no_mtm_and_top_k_options_change_the_network():
    no_mtm, _ = _model(use_mtm=False)
    assert not hasattr(no_mtm.levels[0], "merges")
    top2, _ = _model(top_k=2)
    _, stats = top2.forward_with_stats(*_inputs(5))
    assert stats[0]["attention"][0].shape == (5, 3)  # own token + two selected tasks


def test_fuse_at_places_akf_modules_at_the_last_or_every_level():
    default, _ = _model("residual")
    assert default.fused_levels == [1] and [lv.dim for lv in default.levels] == [6]
    _, stats = default.forward_with_stats(*_inputs(5))
    assert len(stats) == 1
    every, _ = _model("residual", fuse_at="all")
    assert every.fused_levels == [0, 1] and [lv.dim for lv in every.levels] == [8, 6]
    assert len(every.fusion_parameters()) > len(default.fusion_parameters())
    paper, _ = _model("paper")
    assert paper.fused_levels == [0, 1]
    with pytest.raises(FusekitError, match="every level"):
        _model("paper", fuse_at="last")
    with pytest.raises(FusekitError, match="FusionOptions.fuse_at must be one of"):
        _model("residual", fuse_at="middle")


def test_residual_mode_needs_the_heads():
    sources = _sources()
    sources["b1"].head = None
    with pytest.raises(FusekitError, match="head"):
        FusedModel(TASKS, sources, [8, 6], ["categorical", "dense"], FusionOptions(mode="residual"))


def test_fewer_than_two_tasks_and_unknown_modes_are_refused():
    with pytest.raises(FusekitError, match="two tasks"):
        FusedModel({"a": ["a1", "a2"]}, _sources({"a": ["a1", "a2"]}), [8, 6], ["categorical", "dense"])
    with pytest.raises(FusekitError, match="mode"):
        _model("magic")


def test_feature_map_boundaries_are_refused_with_a_clear_error():
    boundaries = [Boundary(level=1, shape=["batch", 8], dtype="float32"),
                  Boundary(level=2, shape=["batch", 4, 16, 16], dtype="float32")]
    with pytest.raises(FusekitError, match="vector outputs"):
        Manifest(inputs=[], boundaries=boundaries, models=[]).boundary_dims()
    assert Manifest(inputs=[], boundaries=boundaries[:1], models=[]).boundary_dims() == [8]
