"""``fuse`` end to end on a small pool trained on real Census-Income rows.

The pool: four single-task models (two per task) trained briefly with fusekit.train on the
source rows of a 4,000-row sample of the Census-Income training file, exported to ONNX (one
with the dynamo exporter, the others with TorchScript), decomposed with fusekit.decompose.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fusekit.decompose.manifest import Manifest
from fusekit.errors import FusekitError
from tests.fusion_pool import LABELS, TASKS, load_sample


def quick_options(**kw):
    """Small, fast fuse options (2 epochs, no progress bar, CPU)."""
    from fusekit.fusion.fuse import FuseOptions
    from fusekit.fusion.model import FusionOptions
    from fusekit.train import TrainConfig

    fusion = FusionOptions(**{k: kw.pop(k) for k in list(kw) if k in FusionOptions.__dataclass_fields__})
    own = set(TrainConfig.__dataclass_fields__) - set(FuseOptions.__dataclass_fields__)  # resume is fuse's
    training = TrainConfig(**{"max_epochs": 2, "patience": 5, "batch_size": 256, "progress": False, "device": "cpu",
                              **{k: kw.pop(k) for k in list(kw) if k in own}})
    return FuseOptions(**{"fusion": fusion, "training": training, "labels": dict(LABELS), **kw})


# -- tests ----------------------------------------------------------------------------------------
def test_residual_model_over_real_parts_starts_at_the_source_ensemble(pool):
    from fusekit.fusion.fuse import build_model
    from fusekit.fusion.model import FusionOptions, DeployedOutputs
    from fusekit.onnxio.sessions import run, session

    manifest = Manifest.load(pool["parts"])
    model = build_model(manifest, TASKS, FusionOptions(mode="residual")).eval()
    test = pool["ds"].test
    with torch.no_grad():
        fused = DeployedOutputs(model)(torch.as_tensor(test.cat), torch.as_tensor(test.dense))
    for task, probs in zip(model.task_names, fused):
        # The untrained fused model is the plain average of the original ONNX models (run by onnxruntime).
        sources = [run(session(pool["models"][m], "cpu")[0], test)[task] for m in TASKS[task]]
        assert np.abs(probs.numpy() - np.mean(sources, axis=0)).max() <= 1e-5


def test_interrupted_fuse_resumes_from_the_saved_epoch(pool, tmp_path):
    from fusekit.fusion.fuse import fuse, work_dir_for

    out = tmp_path / "fused"
    seen = []

    def interrupt_after_first(record):
        seen.append(record)
        raise KeyboardInterrupt

    with pytest.raises(FusekitError, match="resume"):
        fuse(pool["parts"], TASKS, pool["csv"], out, quick_options(max_epochs=3, on_epoch=interrupt_after_first))
    assert not out.exists()  # nothing half-written where the result goes
    state = torch.load(work_dir_for(out) / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    result = fuse(pool["parts"], TASKS, pool["csv"], out, quick_options(max_epochs=3, resume=True))
    history = result.metrics["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[0]["train_loss"] == pytest.approx(seen[0].train_loss)  # epoch 1 was not trained again
    assert not work_dir_for(out).exists()
    # A changed configuration cannot silently resume someone else's run.
    with pytest.raises(FusekitError, match="nothing to resume"):
        fuse(pool["parts"], TASKS, pool["csv"], tmp_path / "other", quick_options(resume=True))


def test_fuse_refuses_data_encoded_with_another_feature_specification(pool, tmp_path):
    from fusekit.fusion.fuse import fuse

    other = load_sample(pool["csv"], spec=pool["ds"].spec)
    other.spec = load_sample(pool["csv"], holdout=0.0).spec  # refit encoding...
    other.spec.dense[0].mean += 1.0  # ...that scales a column differently
    with pytest.raises(FusekitError, match="feature specification"):
        fuse(pool["parts"], TASKS, other, tmp_path / "out", quick_options())
    assert not (tmp_path / "out").exists()


def test_from_scratch_components_are_trainable_copies_with_fresh_weights(pool):
    from fusekit.fusion.fuse import build_model
    from fusekit.fusion.model import FusionOptions

    manifest = Manifest.load(pool["parts"])
    pretrained = build_model(manifest, TASKS, FusionOptions(mode="paper")).eval()
    scratch = build_model(manifest, TASKS, FusionOptions(mode="paper", pretrained=False)).eval()
    names = {n for n, p in scratch.named_parameters() if n.startswith("components.")}
    assert names and not any(n.startswith("components.") for n, _ in pretrained.named_parameters())
    cat, dense = torch.as_tensor(pool["ds"].test.cat[:8]), torch.as_tensor(pool["ds"].test.dense[:8])
    a = pretrained.components[pretrained.mkey["income_a"]][0](cat, dense)
    b = scratch.components[scratch.mkey["income_a"]][0](cat, dense)
    assert a.shape == b.shape and not torch.allclose(a, b)
    b.sum().backward()
    grads = [p.grad for n, p in scratch.named_parameters() if n.startswith(f"components.{scratch.mkey['income_a']}.0")]
    assert grads and all(g is not None for g in grads)


@pytest.mark.parametrize("finetune", ["heads", "last", "all"])
def test_finetuning_trains_the_chosen_source_weights_slower_and_starts_at_the_ensemble(pool, finetune):
    from fusekit.fusion.fuse import build_model
    from fusekit.fusion.model import FusionOptions, DeployedOutputs
    from fusekit.train import TrainConfig, fit

    manifest = Manifest.load(pool["parts"])
    frozen = build_model(manifest, TASKS, FusionOptions()).eval()
    model = build_model(manifest, TASKS, FusionOptions(finetune=finetune, finetune_lr=0.5)).eval()
    trainable = {n.split(".")[0] + "." + n.split(".")[2] for n, p in model.named_parameters()
                 if p.requires_grad and n.startswith(("components.", "heads."))}
    last = str(len(model.dims) - 1)
    expected = {"heads": {"heads.weights"}, "last": {"heads.weights", f"components.{last}"},
                "all": {"heads.weights"} | {f"components.{i}" for i in range(len(model.dims))}}[finetune]
    assert trainable == expected
    groups = model.optimizer_groups()
    assert [g["lr_scale"] for g in groups] == [1.0, 0.5]
    assert {id(p) for p in groups[1]["params"]}.isdisjoint(id(p) for p in groups[0]["params"])
    test = pool["ds"].test
    inputs = (torch.as_tensor(test.cat[:64]), torch.as_tensor(test.dense[:64]))
    with torch.no_grad():  # trainable copies of the trained weights: the same function at the start
        for a, b in zip(DeployedOutputs(frozen)(*inputs), DeployedOutputs(model)(*inputs)):
            assert torch.allclose(a, b, atol=1e-6)
    head = next(p for n, p in model.named_parameters() if n.startswith("heads."))
    before = head.detach().clone()
    fit(model, pool["ds"].train.head(512), pool["ds"].val.head(256), list(TASKS),
        TrainConfig(max_epochs=1, batch_size=128, progress=False, device="cpu"))
    assert not torch.equal(head.detach(), before)


def test_train_rows_all_trains_on_every_training_row(pool, tmp_path):
    from fusekit.fusion.fuse import fuse

    result = fuse(pool["parts"], TASKS, pool["csv"], tmp_path / "out", quick_options(max_epochs=1, train_rows="all"))
    rows = result.metrics["rows"]
    assert rows["train"] == len(pool["ds"].train) > len(pool["ds"].fusion_rows())
    assert rows["train_source"] == "training split"
    with pytest.raises(FusekitError, match="FuseOptions.train_rows must be one of holdout, all"):
        fuse(pool["parts"], TASKS, pool["csv"], tmp_path / "bad", quick_options(train_rows="some"))


def test_parameter_count_is_the_sources_weights_plus_the_fusion_network(pool):
    from fusekit.fusion.fuse import build_model
    from fusekit.fusion.model import FusionOptions

    manifest = Manifest.load(pool["parts"])
    models = {kw: build_model(manifest, TASKS, FusionOptions(**dict([kw] if kw else [])))
              for kw in [(), ("fuse_at", "all"), ("finetune", "all")]}
    default = models[()]
    sources = sum(b.numel() for part in (default.components, default.heads) for b in part.buffers()
                  if b.is_floating_point())
    assert default.parameter_count() == sources + sum(p.numel() for p in default.fusion_parameters())
    # A fine-tuned weight is counted once, though it is both a parameter and a component constant.
    assert models[("finetune", "all")].parameter_count() == default.parameter_count()
    every = models[("fuse_at", "all")]
    assert every.parameter_count() - default.parameter_count() == (
        sum(p.numel() for p in every.fusion_parameters()) - sum(p.numel() for p in default.fusion_parameters()))


def test_finetuning_heads_needs_the_residual_mode(pool):
    from fusekit.fusion.fuse import build_model
    from fusekit.fusion.model import FusionOptions

    with pytest.raises(FusekitError, match="residual"):
        build_model(Manifest.load(pool["parts"]), TASKS, FusionOptions(mode="paper", finetune="heads"))


def test_a_loss_that_becomes_nan_stops_training_and_writes_no_output(pool, tmp_path):
    from fusekit.fusion.fuse import fuse, work_dir_for

    out = tmp_path / "fused"
    with pytest.raises(FusekitError, match="loss became") as caught:
        fuse(pool["parts"], TASKS, pool["csv"], out, quick_options(mode="paper", lr=1e12))
    assert not out.exists()
    # A new run that failed on its input leaves no work dir (the next plain run is not refused),
    # so the message names no checkpoint.
    assert not work_dir_for(out).exists() and "checkpoint" not in str(caught.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_prepare_groups_tasks_by_metadata_and_sources_score_like_their_onnx_files(pool):
    from fusekit.fusion.fuse import prepare, score_sources
    from fusekit.onnxio.sessions import run, session

    plan = prepare(pool["parts"], None, pool["csv"], quick_options())
    assert plan.tasks == TASKS and list(plan.tasks) == list(TASKS)
    assert len(plan.train_rows) == len(pool["ds"].fusion_rows()) and plan.holdout
    probs = score_sources(plan)
    assert list(probs) == plan.model_names
    for task, models in TASKS.items():
        for m in models:
            # Through the frozen components and head in torch, as in the fused model: the file's own numbers.
            expected = run(session(pool["models"][m], "cpu")[0], plan.test)[task].reshape(-1)
            assert probs[m].shape == expected.shape and np.abs(probs[m] - expected).max() <= 1e-5
