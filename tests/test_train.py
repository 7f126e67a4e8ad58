import numpy as np
import pytest
import torch
from torch import nn

from fusekit.errors import FusekitError
from fusekit.models.tabular_input import TabularInput
from fusekit.train import CHECKPOINT_NAME, TrainConfig, evaluate, fit, resolve_device

TASKS = ["income", "never_married"]


class SmallMLP(nn.Module):
    def __init__(self, spec, nan_after: int | None = None):
        super().__init__()
        self.inp = TabularInput([len(c.vocab) + 1 for c in spec.categorical], len(spec.dense))
        self.body = nn.Sequential(nn.Linear(self.inp.out_features, 16), nn.ReLU())
        self.out = nn.Linear(16, 2)
        self.nan_after = nan_after
        self.calls = 0

    def forward(self, cat, dense):
        self.calls += self.training
        o = self.out(self.body(self.inp(cat, dense)))
        if self.nan_after is not None and self.calls > self.nan_after:
            o = o * float("nan")
        return {"income": o[:, 0], "never_married": o[:, 1]}


@pytest.fixture(scope="module")
def small(census2):
    rng = np.random.default_rng(0)
    train = census2.train.subset(rng.choice(len(census2.train), 8000, replace=False))
    val = census2.val.head(4000)
    return census2.spec, train, val


def cardinalities_ok(spec, split):
    return all(split.cat[:, j].max() <= len(c.vocab) for j, c in enumerate(spec.categorical))


def build(spec, seed=0, **kw):
    torch.manual_seed(seed)
    return SmallMLP(spec, **kw)


def test_learns_real_census_tasks(small):
    spec, train, val = small
    assert cardinalities_ok(spec, train)
    model = build(spec)
    result = fit(model, train, val, TASKS, TrainConfig(max_epochs=4, batch_size=128, lr=3e-3, progress=False))
    auc = evaluate(model, val, TASKS)
    assert auc["income"] > 0.85 and auc["never_married"] > 0.95
    assert result.best_val_score == pytest.approx(auc)
    assert result.device == "cpu" and result.amp is False


def test_resume_continues_exactly_where_it_stopped(small, tmp_path):
    spec, train, val = small
    cfg = dict(batch_size=512, progress=False, checkpoint_dir=tmp_path, patience=100)
    straight = build(spec)
    full = fit(straight, train, val, TASKS, TrainConfig(max_epochs=4, **{**cfg, "checkpoint_dir": None}))
    first = build(spec)
    fit(first, train, val, TASKS, TrainConfig(max_epochs=2, **cfg))
    assert (tmp_path / CHECKPOINT_NAME).exists()
    resumed_model = build(spec, seed=123)  # different init: everything must come from the checkpoint
    resumed = fit(resumed_model, train, val, TASKS, TrainConfig(max_epochs=4, resume=True, **cfg))
    assert [r.epoch for r in resumed.history] == [1, 2, 3, 4]
    assert [r.train_loss for r in resumed.history] == pytest.approx([r.train_loss for r in full.history], abs=1e-6)
    for a, b in zip(straight.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)


def test_frozen_parameters_do_not_move(small):
    spec, train, val = small
    model = build(spec)
    model.body.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit(model, train, val, TASKS, TrainConfig(max_epochs=1, progress=False))
    after = model.state_dict()
    assert torch.equal(before["body.0.weight"], after["body.0.weight"])
    assert not torch.equal(before["out.weight"], after["out.weight"])


def test_early_stopping_keeps_best_epoch(small):
    spec, train, val = small
    model = build(spec)
    result = fit(model, train, val, TASKS, TrainConfig(max_epochs=20, patience=2, lr=0.0, progress=False))
    # with lr 0 nothing improves after epoch 1: stop after `patience` more epochs
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_patience_counts_only_after_the_warmup(small):
    """lr 0: no epoch after the first is better. Without a warm-up, patience 2 stops after epoch 3;
    with a warm-up of 4 epochs, patience counts from epoch 5 and stops after epoch 6."""
    from fusekit.errors import OptionError

    spec, train, val = small
    plain = fit(build(spec), train, val, TASKS, TrainConfig(max_epochs=20, patience=2, lr=0.0, progress=False))
    warm = fit(build(spec), train, val, TASKS,
               TrainConfig(max_epochs=20, patience=2, warmup_epochs=4, lr=0.0, progress=False))
    assert (len(plain.history), len(warm.history)) == (3, 6)
    assert warm.stopped_early and warm.best_epoch == 1
    with pytest.raises(OptionError, match="warmup_epochs=5"):
        TrainConfig(max_epochs=5, warmup_epochs=5)


def test_fuse_paper_mode_warms_up_by_default_below_the_epoch_budget():
    from fusekit.fusion.fuse import training_config
    from fusekit.fusion.options import PAPER_WARMUP_EPOCHS, FuseOptions, FusionOptions

    paper = FusionOptions(mode="paper")
    assert training_config(FuseOptions(fusion=paper)).warmup_epochs == PAPER_WARMUP_EPOCHS
    assert training_config(FuseOptions(fusion=paper, training=TrainConfig(max_epochs=3))).warmup_epochs == 2
    assert training_config(FuseOptions(fusion=paper, training=TrainConfig(warmup_epochs=0))).warmup_epochs == 0
    assert training_config(FuseOptions()).warmup_epochs is None  # residual: no warm-up


def test_nan_loss_stops_and_keeps_last_good_checkpoint(small, tmp_path):
    spec, train, val = small
    model = build(spec, nan_after=len(train) // 1024 + 3)  # epoch 2 goes NaN
    with pytest.raises(FusekitError, match="epoch 2.*checkpoint"):
        fit(model, train, val, TASKS, TrainConfig(max_epochs=5, progress=False, checkpoint_dir=tmp_path))
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_resume_without_checkpoint_is_a_clear_error(small, tmp_path):
    spec, train, val = small
    with pytest.raises(FusekitError, match="no checkpoint"):
        fit(build(spec), train, val, TASKS, TrainConfig(resume=True, checkpoint_dir=tmp_path, progress=False))


def test_device_choice():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(FusekitError, match="no CUDA"):
            resolve_device("cuda")
    with pytest.raises(FusekitError, match="TrainConfig.device must be one of auto, cpu, cuda"):
        resolve_device("tpu")


def test_epoch_lines_go_to_stderr_and_bars_only_to_a_terminal(small, capsys):
    spec, train, val = small
    fit(build(spec), train, val, TASKS, TrainConfig(max_epochs=2, batch_size=512, progress=True))
    out, err = capsys.readouterr()
    assert out == ""  # stdout is for results only
    lines = err.splitlines()
    assert [ln.split(":")[0] for ln in lines] == ["epoch 1", "epoch 2"], err
    assert "validation: income AUC" in lines[0] and "\r" not in err  # captured stderr is no terminal: no bar
    fit(build(spec), train, val, TASKS, TrainConfig(max_epochs=1, batch_size=512, progress=False))
    assert capsys.readouterr() == ("", "")
