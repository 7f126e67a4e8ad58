"""Every option class checks itself: OptionError naming the field (never a flag) for bad values."""
from __future__ import annotations

import dataclasses
import pickle

import pytest

from fusekit.bench.budget import Budget
from fusekit.errors import FusekitError, OptionError
from fusekit.fusion.options import FuseOptions, FusionOptions
from fusekit.models.architecture import Architecture
from fusekit.options import default_of, option_fields
from fusekit.train_config import TrainConfig

BAD = [
    (FusionOptions, {"mode": "serial"}, "mode"),
    (FusionOptions, {"mode": 1}, "mode"),
    (FusionOptions, {"use_mtm": "yes"}, "use_mtm"),
    (FusionOptions, {"top_k": 0}, "top_k"),
    (FusionOptions, {"top_k": "2"}, "top_k"),
    (FusionOptions, {"top_k": True}, "top_k"),
    (FusionOptions, {"tower_hidden": 0}, "tower_hidden"),
    (FusionOptions, {"activation": "swish"}, "activation"),
    (FusionOptions, {"seed": -1}, "seed"),
    (FusionOptions, {"finetune": "some"}, "finetune"),
    (FusionOptions, {"finetune_lr": 0.0}, "finetune_lr"),
    (FusionOptions, {"finetune_lr": float("nan")}, "finetune_lr"),
    (FusionOptions, {"fuse_at": "middle"}, "fuse_at"),
    (FusionOptions, {"mode": "paper", "fuse_at": "last"}, "fuse_at"),
    (FusionOptions, {"finetune": "all", "pretrained": False}, "finetune"),
    (FusionOptions, {"finetune": "heads", "mode": "paper"}, "finetune"),
    (TrainConfig, {"lr": -1e-3}, "lr"),
    (TrainConfig, {"lr": "fast"}, "lr"),
    (TrainConfig, {"batch_size": 0}, "batch_size"),
    (TrainConfig, {"batch_size": 1.5}, "batch_size"),
    (TrainConfig, {"weight_decay": -1.0}, "weight_decay"),
    (TrainConfig, {"max_epochs": 0}, "max_epochs"),
    (TrainConfig, {"patience": 0}, "patience"),
    (TrainConfig, {"seed": -1}, "seed"),
    (TrainConfig, {"device": "tpu"}, "device"),
    (TrainConfig, {"device": "cuda:x"}, "device"),
    (TrainConfig, {"progress": "no"}, "progress"),
    (TrainConfig, {"eval_batch_size": 0}, "eval_batch_size"),
    (TrainConfig, {"resume": True}, "resume"),
    (TrainConfig, {"checkpoint_dir": 3}, "checkpoint_dir"),
    (FuseOptions, {"train_rows": "some"}, "train_rows"),
    (FuseOptions, {"max_rows": 0}, "max_rows"),
    (FuseOptions, {"split_seed": -1}, "split_seed"),
    (FuseOptions, {"parity_tol": 0.0}, "parity_tol"),
    (FuseOptions, {"labels": {"income": 1}}, "labels"),
    (FuseOptions, {"labels": ["income=y"]}, "labels"),
    (FuseOptions, {"fusion": "residual"}, "fusion"),
    (FuseOptions, {"training": {"lr": 1.0}}, "training"),
    (FuseOptions, {"command": "fusekit fuse"}, "command"),
    (FuseOptions, {"on_epoch": 3}, "on_epoch"),
    (Architecture, {"hidden": []}, "hidden"),
    (Architecture, {"hidden": [16, 0]}, "hidden"),
    (Architecture, {"hidden": "64,32"}, "hidden"),
    (Architecture, {"emb_dim": 0}, "emb_dim"),
    (Architecture, {"dropout": 1.0}, "dropout"),
    (Architecture, {"dropout": -0.1}, "dropout"),
    (Budget, {"max_epochs": 0}, "max_epochs"),
    (Budget, {"lr": 0.0}, "lr"),
    (Budget, {"device": "gpu"}, "device"),
    (Budget, {"train_rows": 0}, "train_rows"),
    (Budget, {"split_seed": -2}, "split_seed"),
]


@pytest.mark.parametrize("cls, kwargs, field", BAD, ids=[f"{c.__name__}-{'-'.join(k)}-{i}" for i, (c, k, _) in
                                                          enumerate(BAD)])
def test_bad_value_is_an_option_error_naming_the_field_not_a_flag(cls, kwargs, field):
    with pytest.raises(OptionError) as caught:
        cls(**kwargs)
    error = caught.value
    message = str(error)
    assert isinstance(error, FusekitError) and error.field == field
    assert f"{cls.__name__}.{field}" in message, message
    assert "--" not in message and "\n" not in message, message


def test_a_nested_bad_option_is_refused_when_fuse_options_are_made():
    fusion = FusionOptions()
    fusion.top_k = 0  # changed after it was made: FuseOptions checks its parts again
    with pytest.raises(OptionError, match="FusionOptions.top_k"):
        FuseOptions(fusion=fusion)
    with pytest.raises(OptionError, match="FusionOptions.top_k"):
        fusion.validate()


def test_good_values_are_accepted():
    assert TrainConfig(device="cuda:1").device == "cuda:1"  # any GPU, for library callers
    assert TrainConfig(lr=0.0, resume=True, checkpoint_dir="ckpt").lr == 0.0
    assert Architecture(hidden=[8], dropout=0.5).hidden == [8]
    assert FuseOptions(labels={"income": "y"}, max_rows=10, command=["fusekit", "fuse"]).max_rows == 10
    assert FusionOptions(mode="paper", fuse_at="all", finetune="last").fused_levels(3) == [0, 1, 2]
    assert Budget.for_run(True, split_seed=4).split_seed == 4 and Budget.for_run(True).max_epochs == 2
    assert Budget.for_run(False, max_epochs=7, device="cpu") == Budget(max_epochs=7, device="cpu")


def test_every_field_of_the_option_classes_carries_its_checks():
    for cls in (FusionOptions, FuseOptions, TrainConfig, Architecture, Budget):
        assert set(option_fields(cls)) == {f.name for f in dataclasses.fields(cls)}, cls
        cls()  # the defaults pass their own checks


def test_activation_names_match_the_akf_modules():
    from fusekit.fusion.akf import ACTIVATIONS

    assert option_fields(FusionOptions)["activation"].metadata["choices"] == tuple(ACTIVATIONS)


def test_the_old_import_paths_give_the_same_classes():
    from fusekit.bench import Budget as bench_budget
    from fusekit.bench.runner import Budget as runner_budget
    from fusekit.fusion import fuse, model, options
    from fusekit.models.single import Architecture as single_arch
    from fusekit.train import TrainConfig as train_config

    assert model.FusionOptions is options.FusionOptions and fuse.FuseOptions is options.FuseOptions
    assert model.MODES == options.MODES and model.FINETUNE == options.FINETUNE
    assert train_config is TrainConfig and single_arch is Architecture
    assert bench_budget is Budget and runner_budget is Budget


def test_the_command_line_spells_the_same_error_with_its_flags():
    with pytest.raises(OptionError) as caught:
        FusionOptions(mode="paper", fuse_at="last")
    flags = {"fuse_at": ("--fuse-at", None), "mode": ("--mode", None)}
    assert caught.value.render(flags) == ("the paper's network fuses at every level: --fuse-at last cannot go with "
                                          "--mode paper; use --fuse-at all")
    with pytest.raises(OptionError) as caught:
        FusionOptions(finetune="all", pretrained=False)
    assert caught.value.render({"pretrained": ("--from-scratch", False), "finetune": ("--finetune", None)}) == (
        "--finetune trains the source models' own weights; it cannot go with --from-scratch")
    # A field the command has no flag for keeps its library name; so does a field of another class.
    assert caught.value.render({}) == str(caught.value) == ("FusionOptions.finetune trains the source models' own "
                                                            "weights; it cannot go with FusionOptions.pretrained=False")
    assert caught.value.render({"TrainConfig.finetune": ("--x", None)}).startswith("FusionOptions.finetune")


def test_an_option_error_survives_pickling_with_its_placeholders():
    with pytest.raises(OptionError) as caught:
        TrainConfig(batch_size=0)
    copy = pickle.loads(pickle.dumps(caught.value))
    assert type(copy) is OptionError and str(copy) == str(caught.value) and copy.field == "batch_size"
    assert copy.render({"batch_size": ("--batch-size", None)}) == "--batch-size must be at least 1, got 0"


def test_braces_in_a_value_are_not_taken_for_fields():
    with pytest.raises(OptionError) as caught:
        FusionOptions(mode="{fuse_at}")
    assert str(caught.value) == "FusionOptions.mode must be one of paper, residual; got '{fuse_at}'"


def test_library_messages_about_devices_name_the_field():
    from fusekit.train import resolve_device

    with pytest.raises(OptionError) as caught:
        resolve_device("tpu")
    assert "--" not in str(caught.value) and "TrainConfig.device" in str(caught.value)
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(OptionError) as caught:
            resolve_device("cuda")
        assert "--" not in str(caught.value) and "no CUDA GPU" in str(caught.value)
        assert caught.value.render({"device": ("--device", None)}).startswith("--device cuda was asked for")


def test_defaults_are_read_from_the_fields():
    assert default_of(Architecture, "hidden") == [64, 32, 16]
    assert default_of(Architecture, "hidden") is not default_of(Architecture, "hidden")  # a fresh list
    assert default_of(TrainConfig, "max_epochs") == TrainConfig().max_epochs


@pytest.mark.parametrize("cls", [FusionOptions, FuseOptions, TrainConfig, Architecture, Budget])
def test_an_unknown_keyword_is_an_option_error_listing_the_fields(cls):
    with pytest.raises(OptionError) as caught:
        cls(no_such_option=1)
    message = str(caught.value)
    names = [f.name for f in dataclasses.fields(cls)]
    assert caught.value.owner == cls.__name__ and "\n" not in message
    assert message.startswith(f"{cls.__name__} has no option 'no_such_option'; its options are ")
    assert message.endswith(", ".join(names))


def test_a_misspelt_keyword_gets_the_nearest_field_and_valid_ones_still_work():
    with pytest.raises(OptionError, match=r"^FusionOptions has no option 'fuseat' \(did you mean fuse_at\?\)"):
        FusionOptions(fuseat="all")
    with pytest.raises(OptionError, match="pass them by name"):
        Architecture([8], 4, False, False, 0.0, "extra")
    options = FuseOptions(max_rows=5, fusion=FusionOptions(top_k=2))
    assert pickle.loads(pickle.dumps(options)) == options
    assert dataclasses.replace(options, max_rows=7).max_rows == 7
    assert Architecture([8], 2).emb_dim == 2  # positional fields are still accepted
