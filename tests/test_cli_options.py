"""The command line's flags come from the option classes: same defaults, same choices, same checks."""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fusekit.cli.fuse import options_from_args
from fusekit.cli.main import build_parser, main, parse
from fusekit.fusion.options import FuseOptions, FusionOptions
from fusekit.models.architecture import Architecture
from fusekit.options import default_of, option_fields
from fusekit.train_config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
# Flags whose default is deliberately not the field's: None means "the budget's own" (quick or full).
OWN_DEFAULTS = {("bench", "Budget", "max_epochs"), ("bench", "Budget", "patience"), ("bench", "Budget", "batch_size")}
REPORTING = [["decompose"], ["inspect"], ["train-single"], ["fuse"], ["eval"], ["predict"], ["bench"],
             ["bench-merge"], ["demo"], ["data", "fetch"], ["data", "info"]]
PROGRESS = [["decompose"], ["train-single"], ["fuse"], ["bench"], ["demo"], ["data", "fetch"]]


def _commands(parser: argparse.ArgumentParser, path=()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub)command's parser, by its words."""
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[(*path, name)] = sub
                found.update(_commands(sub, (*path, name)))
    return found


COMMANDS = _commands(build_parser())


def test_every_option_flag_has_the_default_and_choices_of_its_field():
    checked = 0
    for words, sub in COMMANDS.items():
        flags = sub.get_default("_option_flags")
        if flags is None:
            continue
        actions = {s: a for a in sub._actions for s in a.option_strings}
        classes = {c.__name__: c for c in (FusionOptions, FuseOptions, TrainConfig, Architecture)}
        from fusekit.bench.budget import Budget

        classes["Budget"] = Budget
        for (owner, name), (flag, dest, _) in flags.fields.items():
            action = actions[flag]
            assert action.dest == dest
            if (words[0], owner, name) in OWN_DEFAULTS:
                assert action.default is None
            else:
                assert action.default == default_of(classes[owner], name), (words, owner, name)
            choices = option_fields(classes[owner])[name].metadata["choices"]
            if choices and option_fields(classes[owner])[name].metadata["kind"] != "bool":
                assert tuple(action.choices) == choices, (words, owner, name)
            checked += 1
    assert checked > 40


def test_fuse_without_options_asks_for_the_default_options():
    argv = ["fuse", "parts", "--tasks", "a=x", "b=y", "--data", "d.csv", "-o", "out"]
    options = options_from_args(parse(argv))
    assert options.on_data is not None  # the command line prints how the data was read
    assert dataclasses.replace(options, on_data=None) == FuseOptions(command=["fusekit", *argv])
    assert options.fusion == FusionOptions() and options.training == TrainConfig()


def test_train_single_without_options_asks_for_the_default_architecture_and_training():
    args = parse(["train-single", "--data", "d.csv", "--task", "t", "-o", "m.onnx"])
    assert args._option_flags.build(Architecture, args) == Architecture()
    assert args._option_flags.build(TrainConfig, args) == TrainConfig()


def test_on_off_flags_set_their_fields():
    args = parse(["fuse", "p", "--tasks", "a=x", "b=y", "--data", "d", "-o", "o", "--no-mtm", "--from-scratch",
                  "--no-tower", "-q", "--seed", "3", "--split-seed", "4", "--epochs", "9"])
    options = options_from_args(args)
    assert (options.fusion.use_mtm, options.fusion.pretrained, options.fusion.tower) == (False, False, False)
    assert options.training.progress is False and options.training.max_epochs == 9
    assert options.fusion.seed == options.training.seed == 3 and options.split_seed == 4


@pytest.mark.parametrize("words", REPORTING, ids=" ".join)
def test_every_reporting_command_has_json(words):
    assert any("--json" in a.option_strings for a in COMMANDS[tuple(words)]._actions)


@pytest.mark.parametrize("words", PROGRESS, ids=" ".join)
def test_every_command_with_progress_has_one_quiet(words):
    strings = [s for a in COMMANDS[tuple(words)]._actions for s in a.option_strings if a.help != argparse.SUPPRESS]
    assert "-q" in strings and "--quiet" in strings
    assert "--no-progress" not in strings


def test_a_bad_option_prints_its_flag(tmp_path, capsys):
    code = main(["train-single", "--data", "d.csv", "--task", "t", "--dropout", "1.0", "-o", str(tmp_path / "m.onnx")])
    err = capsys.readouterr().err
    assert code == 2 and err == "fusekit: error: --dropout must be below 1.0, got 1.0\n"
    code = main(["train-single", "--data", "d.csv", "--task", "t", "--hidden", "8,0", "-o", str(tmp_path / "m.onnx")])
    assert code == 2 and "--hidden values must each be at least 1" in capsys.readouterr().err


def test_seeds_are_named_for_what_they_set(capsys):
    for words in (["fuse"], ["eval"], ["train-single"], ["bench"]):
        strings = {s for a in COMMANDS[tuple(words)]._actions for s in a.option_strings}
        assert "--split-seed" in strings, words
    args = parse(["eval", "m.onnx", "--data", "d.csv", "--split-seed", "5"])
    assert args.split_seed == 5 and capsys.readouterr().err == ""


def test_old_spellings_still_work_and_say_so_on_stderr(capsys):
    args = parse(["eval", "m.onnx", "--data", "d.csv", "--seed", "7"])
    assert args.split_seed == 7
    assert capsys.readouterr().err == "fusekit: --seed is deprecated; use --split-seed\n"
    args = parse(["train-single", "--data", "d", "--task", "t", "-o", "m.onnx", "--no-progress"])
    assert args.progress is False and "--no-progress is deprecated; use --quiet" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["inspect", "--help"], ["decompose", "--help"], ["fuse", "--help"],
                                  ["train-single", "--help"], ["eval", "--help"], ["demo", "--help"]],
                         ids=" ".join)
def test_help_imports_neither_torch_nor_pandas(argv):
    code = ("import sys\nfrom fusekit.cli.main import main\ntry:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'pandas', 'onnx', 'onnxruntime') if m in sys.modules]\n"
            "print(json.dumps(heavy), file=sys.stderr)" % (argv,))
    done = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage: fusekit" in done.stdout
    assert json.loads(done.stderr.strip().splitlines()[-1]) == []
