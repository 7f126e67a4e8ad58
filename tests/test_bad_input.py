"""A catalogue of hostile input over every command: each case must be refused with exit code 2,
one ``fusekit: error: ...`` line that says what is wrong (a regex on its content), no traceback,
and nothing written, changed or removed, neither in the case's own temporary folder nor in the
inputs (both are snapshotted before and after).

Commands run in-process through ``fusekit.cli.main.main``; the cases that need signals, two
processes or a broken pipe are in tests/test_bad_input_processes.py. Cases that need a small
file system (full, read-only) mount a tmpfs, which needs root: they are skipped otherwise.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusekit.cli.main import main
from tests.fusion_pool import LABELS, TASKS

TASK_ARGS = [f"{t}={','.join(ms)}" for t, ms in TASKS.items()]
SWAPPED = ["income=married_a,married_b", "never_married=income_a,income_b"]
LABEL_ARGS = sum((["--label", f"{t}={c}"] for t, c in LABELS.items()), [])


# -- the fixture: one folder of hostile files, made once ------------------------------------------
@pytest.fixture(scope="module")
def bad(pool, tmp_path_factory) -> dict:
    """Hostile copies of the pool's files (the pool itself is never changed)."""
    root = tmp_path_factory.mktemp("bad")
    files: dict = {"root": root}
    (root / "junk.onnx").write_bytes(np.random.default_rng(0).bytes(3000))
    files["junk"] = root / "junk.onnx"
    frame = pd.read_csv(pool["csv"])
    constant = frame.copy()
    constant["income"] = 0
    constant.to_csv(root / "constant.csv", index=False)
    frame.head(12).to_csv(root / "rows12.csv", index=False)
    frame.drop(columns=["income"]).to_csv(root / "nolabel.csv", index=False)
    files.update(constant=root / "constant.csv", rows12=root / "rows12.csv", nolabel=root / "nolabel.csv")

    def edited(name: str, change) -> Path:
        parts = root / name
        shutil.copytree(pool["parts"], parts)
        data = json.loads((parts / "manifest.json").read_text())
        change(data, parts)
        (parts / "manifest.json").write_text(json.dumps(data))
        return parts

    def numbers(data, parts):
        data["models"] = [1, 2, 3, 4]

    def number_fields(data, parts):
        data["models"][0]["components"] = [1, 2, 3][:len(data["models"][0]["components"])]

    def boundary(data, parts):
        data["boundaries"][0]["shape"] = ["batch", data["boundaries"][0]["shape"][1] + 5]

    def newer(data, parts):
        data["format"] = 99

    def outside(data, parts):
        (parts.parent / "outside.onnx").write_bytes(b"not a component")
        data["models"][0]["components"][0] = "../outside.onnx"

    def absolute(data, parts):
        data["models"][0]["components"][0] = str(parts / data["models"][0]["components"][0])

    def symlink(data, parts):
        first = parts / data["models"][0]["components"][0]
        target = parts.parent / "elsewhere.onnx"
        shutil.copy2(first, target)
        first.unlink()
        first.symlink_to(target)

    def changed(data, parts):
        (parts / data["models"][0]["components"][0]).write_bytes(b"changed")

    def boolean_levels(data, parts):
        data["levels"] = True

    for name, change in [("numbers", numbers), ("number_fields", number_fields), ("boundary", boundary),
                         ("newer", newer), ("outside", outside), ("absolute", absolute), ("symlink", symlink),
                         ("changed", changed), ("bool_levels", boolean_levels)]:
        files[f"parts_{name}"] = edited(f"parts_{name}", change)
    notjson = root / "parts_notjson"
    shutil.copytree(pool["parts"], notjson)
    (notjson / "manifest.json").write_text("{\"levels\": 3,")
    files["parts_notjson"] = notjson
    files["parts_missing"] = root / "parts_missing"
    files["parts_missing"].mkdir()
    for name, text in [("corrupt", "{not json"), ("shape", json.dumps({"sets": 5})), ("empty", "")]:
        (root / f"bench_{name}").mkdir()
        (root / f"bench_{name}" / "results.json").write_text(text)
    (root / "bench_none").mkdir()
    (root / "rows.npz").parent.mkdir(exist_ok=True)
    return files


# -- what every case asserts -----------------------------------------------------------------------
def snapshot(*roots: Path) -> dict:
    """Every file and folder under ``roots``: path -> (kind, size, mtime, mode); folders by name only
    (a lock file made and removed beside an output changes its folder's mtime, nothing else)."""
    seen = {}
    for root in roots:
        root = Path(root)
        if not root.exists():
            continue
        for path in [root, *root.rglob("*")]:
            st = path.lstat()
            if path.is_dir() and not path.is_symlink():
                seen[str(path)] = ("dir",)
            else:
                seen[str(path)] = ("file", st.st_size, st.st_mtime_ns, st.st_mode)
    return seen


def refused(capsys, argv: list[str], pattern: str, watch: list[Path], usage: bool = False) -> str:
    """Run ``argv``; assert exit 2, one error line matching ``pattern``, no traceback, nothing changed
    under ``watch``. ``usage``: an argparse error (its usage lines come before the one error line)."""
    before = snapshot(*watch)
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (code, err)
    assert "Traceback" not in err and "Traceback" not in out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    if usage:
        assert lines[0].startswith("usage:") and re.search(pattern, lines[-1]), err
    else:
        assert len(lines) == 1 and lines[0].startswith("fusekit: error: "), err
        assert re.search(pattern, lines[0]), err
    assert snapshot(*watch) == before, "the refused command changed files"
    return err


def fuse_argv(pool, out, *extra, parts=None, tasks=TASK_ARGS, data=None):
    return ["fuse", parts or pool["parts"], "--tasks", *tasks, "--data", data or pool["csv"], *LABEL_ARGS,
            "-o", out, "--epochs", "1", "--batch-size", "256", "--device", "cpu", "--quiet", *extra]


def train_argv(pool, out, *extra, data=None):
    return ["train-single", "--data", data or pool["csv"], "--task", "income", "--label", "income=income",
            "--hidden", "8", "--epochs", "1", "--quiet", "-o", out, *extra]


def models(pool) -> list[str]:
    return [str(p) for p in pool["models"].values()]


# -- option values (every command that takes them) ------------------------------------------------
FUSE_OPTIONS = [
    (["--seed", "-1"], r"--seed must be at least 0"),
    (["--seed", str(2**64)], r"--seed must be a whole number"),
    (["--seed", str(2**32)], r"--seed must be below 4294967296"),
    (["--split-seed", "-1"], r"--split-seed must be at least 0"),
    (["--lr", "nan"], r"--lr must be a finite number"),
    (["--lr", "inf"], r"--lr must be a finite number"),
    (["--lr", "-0.1"], r"--lr must be at least 0"),
    (["--weight-decay", "-1"], r"--weight-decay must be at least 0"),
    (["--weight-decay", "nan"], r"--weight-decay must be a finite number"),
    (["--batch-size", "0"], r"--batch-size must be at least 1"),
    (["--batch-size", "-4"], r"--batch-size must be at least 1"),
    (["--patience", "0"], r"--patience must be at least 1"),
    (["--epochs", "0"], r"--epochs must be at least 1"),
    (["--finetune-lr", "0"], r"--finetune-lr must be positive"),
    (["--finetune-lr", "nan"], r"--finetune-lr must be a finite number"),
    (["--max-rows", "0"], r"--max-rows must be at least 1"),
    (["--top-k", "0"], r"--top-k must be at least 1"),
    (["--top-k", "3"], r"--top-k 3 selects more tasks than the 1 other task"),
    (["--mode", "paper", "--fuse-at", "last"], r"--fuse-at last cannot go with --mode paper"),
    (["--from-scratch", "--finetune", "all"], r"--finetune.*--from-scratch"),
    (["--device", "cuda"], r"--device cuda was asked for but torch sees no CUDA GPU"),
]


@pytest.mark.parametrize("extra, pattern", FUSE_OPTIONS, ids=[" ".join(e) for e, _ in FUSE_OPTIONS])
def test_fuse_refuses_bad_option_values(pool, tmp_path, capsys, extra, pattern):
    if extra == ["--device", "cuda"]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is present")
    refused(capsys, fuse_argv(pool, tmp_path / "out", *extra), pattern, [tmp_path, pool["root"]])


TRAIN_OPTIONS = [
    (["--seed", "-1"], r"--seed must be at least 0"),
    (["--seed", str(2**64)], r"--seed must be a whole number"),
    (["--split-seed", "-1"], r"--split-seed must be at least 0"),
    (["--lr", "nan"], r"--lr must be a finite number"),
    (["--weight-decay", "-1"], r"--weight-decay must be at least 0"),
    (["--batch-size", "0"], r"--batch-size must be at least 1"),
    (["--batch-size", "-1"], r"--batch-size must be at least 1"),
    (["--patience", "0"], r"--patience must be at least 1"),
    (["--dropout", "1.0"], r"--dropout must be below 1"),
    (["--hidden", "8,0"], r"--hidden values must each be"),
    (["--holdout", "0.2", "--holdout-seed", "-1"], r"--holdout-seed must be a whole number from 0 to 4294967295"),
    (["--holdout", "2"], r"--holdout must be in \[0, 1\)"),
    (["--holdout", "nan"], r"--holdout must be in \[0, 1\)"),
    (["--train-rows", "0"], r"--train-rows must be at least 2"),
]


@pytest.mark.parametrize("extra, pattern", TRAIN_OPTIONS, ids=[" ".join(e) for e, _ in TRAIN_OPTIONS])
def test_train_single_refuses_bad_option_values(pool, tmp_path, capsys, extra, pattern):
    refused(capsys, train_argv(pool, tmp_path / "m.onnx", *extra), pattern, [tmp_path, pool["root"]])


EVAL_OPTIONS = [
    (["--batch-size", "0"], r"--batch-size must be a whole number of at least 1"),
    (["--batch-size", "-3"], r"--batch-size must be a whole number of at least 1"),
    (["--split-seed", "-1"], r"--split-seed must be at least 0"),
    (["--split-seed", str(2**64)], r"--split-seed must be a whole number"),
]


@pytest.mark.parametrize("extra, pattern", EVAL_OPTIONS, ids=[" ".join(e) for e, _ in EVAL_OPTIONS])
def test_eval_refuses_bad_option_values(pool, tmp_path, capsys, extra, pattern):
    argv = ["eval", pool["models"]["income_a"], "--data", pool["csv"], "--label", "income=income", *extra]
    refused(capsys, argv, pattern, [tmp_path, pool["root"]])


@pytest.mark.parametrize("value", ["0", "-2"])
def test_predict_refuses_a_batch_size_below_one(pool, tmp_path, capsys, value):
    argv = ["predict", pool["models"]["income_a"], pool["csv"], "-o", tmp_path / "p.csv", "--batch-size", value]
    refused(capsys, argv, r"--batch-size must be a whole number of at least 1", [tmp_path, pool["root"]])


BENCH_OPTIONS = [
    (["--max-epochs", "0"], r"--max-epochs must be at least 1"),
    (["--seeds", "0"], r"--seeds must be"),
    (["--patience", "0"], r"--patience must be at least 1"),
    (["--split-seed", "-1"], r"--split-seed must be at least 0"),
    (["--methods", "nosuch"], r"nosuch"),
]


@pytest.mark.parametrize("extra, pattern", BENCH_OPTIONS, ids=[" ".join(e) for e, _ in BENCH_OPTIONS])
def test_bench_refuses_bad_option_values(tmp_path, capsys, extra, pattern):
    refused(capsys, ["bench", "census-income", "--quick", "-o", tmp_path / "b", *extra], pattern, [tmp_path])


# -- outputs against inputs ------------------------------------------------------------------------
def test_decompose_refuses_an_output_holding_its_input_models_even_with_force(pool, tmp_path, capsys):
    folder = tmp_path / "models"
    folder.mkdir()
    copies = [shutil.copy2(p, folder) for p in models(pool)[:2]]
    refused(capsys, ["decompose", *copies, "-o", folder, "--force"], r"output .*models contains the input .*"
            r"replacing it would delete the input: choose another -o", [tmp_path])


def test_decompose_refuses_an_output_that_is_an_input_file(pool, tmp_path, capsys):
    first = shutil.copy2(models(pool)[0], tmp_path)
    refused(capsys, ["decompose", first, models(pool)[1], "-o", first, "--force"], r"is the input", [tmp_path,
                                                                                                       pool["root"]])


def test_decompose_refuses_an_output_below_a_file(pool, tmp_path, capsys):
    refused(capsys, ["decompose", *models(pool)[:2], "-o", pool["csv"] / "parts"],
            r"lies below .*census_sample.csv, which is a file; choose another -o", [tmp_path, pool["root"]])


def test_decompose_refuses_a_non_empty_output_without_force(pool, tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    refused(capsys, ["decompose", *models(pool)[:2], "-o", tmp_path / "out"], r"not empty.*--force", [tmp_path])


@pytest.mark.parametrize("where", ["parts", "inside", "parent"])
def test_fuse_refuses_an_output_that_is_contains_or_lies_inside_its_parts(pool, tmp_path, capsys, where):
    parts = tmp_path / "home" / "parts"
    shutil.copytree(pool["parts"], parts)
    out = {"parts": parts, "inside": parts / "fused", "parent": tmp_path / "home"}[where]
    pattern = {"parts": r"is the input", "inside": r"lies inside the input folder", "parent": r"contains the input"}
    refused(capsys, fuse_argv(pool, out, "--force", parts=parts), pattern[where] + r".*choose another -o",
            [tmp_path, pool["root"]])


def test_fuse_refuses_an_output_that_is_its_data_file(pool, tmp_path, capsys):
    data = shutil.copy2(pool["csv"], tmp_path / "data.csv")
    refused(capsys, fuse_argv(pool, data, "--force", data=data), r"is the input", [tmp_path, pool["root"]])


def test_fuse_refuses_an_output_below_a_file(pool, tmp_path, capsys):
    refused(capsys, fuse_argv(pool, pool["csv"] / "fused"), r"which is a file", [tmp_path, pool["root"]])


def test_train_single_refuses_an_existing_output_without_force(pool, tmp_path, capsys):
    existing = tmp_path / "m.onnx"
    existing.write_bytes(b"an earlier model")
    refused(capsys, train_argv(pool, existing), r"m.onnx exists; choose another -o or pass --force", [tmp_path])


def test_train_single_refuses_an_output_below_a_file(pool, tmp_path, capsys):
    refused(capsys, train_argv(pool, pool["csv"] / "m.onnx"), r"which is a file", [tmp_path, pool["root"]])


def test_train_single_refuses_an_output_that_is_not_onnx(pool, tmp_path, capsys):
    refused(capsys, train_argv(pool, tmp_path / "m.txt"), r"should name an .onnx file", [tmp_path])


@pytest.mark.parametrize("which", ["input", "model"])
def test_predict_refuses_to_write_over_its_input_or_model(pool, tmp_path, capsys, which):
    data = shutil.copy2(pool["csv"], tmp_path / "rows.csv")
    model = shutil.copy2(pool["models"]["income_a"], tmp_path / "m.onnx")
    out = data if which == "input" else model
    refused(capsys, ["predict", model, data, "-o", out, "--force"], r"is the input", [tmp_path])


def test_predict_refuses_an_existing_output_without_force(pool, tmp_path, capsys):
    (tmp_path / "p.csv").write_text("mine")
    refused(capsys, ["predict", pool["models"]["income_a"], pool["csv"], "-o", tmp_path / "p.csv"],
            r"exists; choose another -o or pass --force", [tmp_path, pool["root"]])


def test_predict_refuses_an_output_below_a_file(pool, tmp_path, capsys):
    refused(capsys, ["predict", pool["models"]["income_a"], pool["csv"], "-o", pool["csv"] / "p.csv"],
            r"which is a file", [tmp_path, pool["root"]])


def test_bench_merge_refuses_an_output_that_is_one_of_its_runs(bad, tmp_path, capsys):
    run = bad["root"] / "bench_corrupt"
    refused(capsys, ["bench-merge", run, "-o", run, "--force"], r"is the input", [tmp_path, bad["root"]])


def test_bench_refuses_a_non_empty_output_without_force(tmp_path, capsys):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("mine")
    refused(capsys, ["bench", "census-income", "--quick", "-o", tmp_path / "b"], r"not empty", [tmp_path])


# -- input files -----------------------------------------------------------------------------------
def test_decompose_refuses_a_single_model(pool, tmp_path, capsys):
    refused(capsys, ["decompose", models(pool)[0], "-o", tmp_path / "p"], r"at least two models", [tmp_path])


def test_decompose_refuses_a_missing_model(pool, tmp_path, capsys):
    refused(capsys, ["decompose", models(pool)[0], tmp_path / "nope.onnx", "-o", tmp_path / "p"],
            r"nope.onnx", [tmp_path, pool["root"]])


def test_decompose_refuses_random_bytes(pool, bad, tmp_path, capsys):
    refused(capsys, ["decompose", models(pool)[0], bad["junk"], "-o", tmp_path / "p"], r"junk.onnx",
            [tmp_path, bad["root"], pool["root"]])


def test_decompose_refuses_more_levels_than_common_layers(pool, tmp_path, capsys):
    refused(capsys, ["decompose", *models(pool), "-o", tmp_path / "p", "--levels", "40", "-q"],
            r"--levels 40 asks for more levels than the \d+ common layers", [tmp_path, pool["root"]])


def test_decompose_refuses_names_that_do_not_match_the_models(pool, tmp_path, capsys):
    refused(capsys, ["decompose", *models(pool)[:2], "-o", tmp_path / "p", "--names", "one"], r"got 1 names for 2 models",
            [tmp_path, pool["root"]])


def test_decompose_refuses_a_name_given_twice(pool, tmp_path, capsys):
    refused(capsys, ["decompose", *models(pool)[:2], "-o", tmp_path / "p", "--names", "x", "x"], r"x",
            [tmp_path, pool["root"]])


def test_decompose_refuses_zero_levels_as_a_usage_error(pool, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        refused(capsys, ["decompose", *models(pool)[:2], "-o", tmp_path / "p", "--levels", "0"], r"--levels",
                [tmp_path], usage=True)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "--levels" in err.splitlines()[-1]


@pytest.mark.parametrize("which", ["missing", "junk", "folder"])
def test_inspect_refuses_what_is_not_a_model(bad, tmp_path, capsys, which):
    target = {"missing": tmp_path / "nope.onnx", "junk": bad["junk"], "folder": tmp_path}[which]
    refused(capsys, ["inspect", target], re.escape(target.name), [tmp_path, bad["root"]])


@pytest.mark.parametrize("which", ["missing", "junk"])
def test_eval_and_predict_refuse_what_is_not_a_model(pool, bad, tmp_path, capsys, which):
    target = {"missing": tmp_path / "nope.onnx", "junk": bad["junk"]}[which]
    watch = [tmp_path, bad["root"], pool["root"]]
    refused(capsys, ["eval", target, "--data", pool["csv"]], re.escape(target.name), watch)
    refused(capsys, ["predict", target, pool["csv"], "-o", tmp_path / "p.csv"], re.escape(target.name), watch)


def test_predict_refuses_a_missing_input(pool, tmp_path, capsys):
    refused(capsys, ["predict", pool["models"]["income_a"], tmp_path / "rows.csv", "-o", tmp_path / "p.csv"],
            r"rows.csv", [tmp_path, pool["root"]])


def test_eval_refuses_data_without_the_label(pool, bad, tmp_path, capsys):
    refused(capsys, ["eval", pool["models"]["income_a"], "--data", bad["nolabel"], "--label", "income=income"],
            r"income", [tmp_path, bad["root"], pool["root"]])


def test_train_single_refuses_a_missing_data_file(tmp_path, capsys):
    refused(capsys, ["train-single", "--data", tmp_path / "d.csv", "--task", "t", "-o", tmp_path / "m.onnx"],
            r"d.csv", [tmp_path])


def test_train_single_refuses_a_label_of_another_task(pool, tmp_path, capsys):
    refused(capsys, train_argv(pool, tmp_path / "m.onnx", "--label", "other=income"), r"--label names",
            [tmp_path, pool["root"]])


def test_train_single_refuses_an_unreadable_label_flag(pool, tmp_path, capsys):
    refused(capsys, train_argv(pool, tmp_path / "m.onnx", "--label", "income"), r"--label expects TASK=COLUMN",
            [tmp_path, pool["root"]])


def test_train_single_refuses_a_constant_label_before_training(pool, bad, tmp_path, capsys):
    refused(capsys, train_argv(pool, tmp_path / "m.onnx", data=bad["constant"]),
            r"task '?income'? (have only the value 0; a classification task needs two classes or more|hold a single class)",
            [tmp_path, bad["root"]])


def test_train_single_refuses_a_file_too_small_for_its_splits(pool, bad, tmp_path, capsys):
    refused(capsys, train_argv(pool, tmp_path / "m.onnx", data=bad["rows12"]), r"rows", [tmp_path, bad["root"]])


# -- fuse: parts, manifest and tasks ---------------------------------------------------------------
MANIFESTS = [
    ("numbers", r"manifest.json: a model entry is not a JSON object; run fusekit decompose again"),
    ("number_fields", r"model entry whose 'components' is not a list of strings"),
    ("boundary", r"says level 1 outputs shape \['batch', \d+\], but .*level1.onnx outputs"),
    ("newer", r"written in manifest format 99 .* reads formats up to 1: upgrade fusekit"),
    ("outside", r"names component '../outside.onnx' of model \w+, outside the parts folder"),
    ("absolute", r"outside the parts folder"),
    ("symlink", r"leads outside the parts folder \(through a symlink\)"),
    ("changed", r"changed since decompose \(checksum differs\)"),
    ("notjson", r"is not valid JSON"),
    ("missing", r"manifest.json does not exist; decompose the models"),
    ("bool_levels", r"invalid level count True"),
]


@pytest.mark.parametrize("name, pattern", MANIFESTS, ids=[n for n, _ in MANIFESTS])
def test_fuse_refuses_a_hostile_manifest(pool, bad, tmp_path, capsys, name, pattern):
    refused(capsys, fuse_argv(pool, tmp_path / "out", parts=bad[f"parts_{name}"]), pattern,
            [tmp_path, bad["root"], pool["root"]])


def test_fuse_refuses_swapped_tasks_naming_the_model_and_both_tasks(pool, tmp_path, capsys):
    refused(capsys, fuse_argv(pool, tmp_path / "out", tasks=SWAPPED),
            r"model married_a carries task never_married in its fusekit.task metadata but the task mapping puts "
            r"it in task income; .*--ignore-task-metadata", [tmp_path, pool["root"]])


TASK_MAPPINGS = [
    (["income=income_a,nobody", "never_married=married_a"], r"unknown model 'nobody'"),
    (["income=income_a,married_a", "never_married=married_a"], r"model married_a is in two tasks"),
    (["income=income_a,income_b"], r"at least two tasks"),
    (["income", "never_married=married_a"], r"cannot read --tasks entry 'income'"),
    (["income=income_a", "income=income_b"], r"task income is given twice"),
]


@pytest.mark.parametrize("tasks, pattern", TASK_MAPPINGS, ids=[" ".join(t) for t, _ in TASK_MAPPINGS])
def test_fuse_refuses_a_bad_task_mapping(pool, tmp_path, capsys, tasks, pattern):
    refused(capsys, fuse_argv(pool, tmp_path / "out", tasks=tasks), pattern, [tmp_path, pool["root"]])


def test_fuse_refuses_a_constant_label_before_any_training(pool, bad, tmp_path, capsys):
    refused(capsys, fuse_argv(pool, tmp_path / "out", data=bad["constant"]),
            r"rows \(\d+\) of task income have only the value 0", [tmp_path, bad["root"], pool["root"]])


@pytest.mark.parametrize("how", ["rows12", "max_rows"])
def test_fuse_refuses_too_few_rows_before_any_training(pool, bad, tmp_path, capsys, how):
    argv = (fuse_argv(pool, tmp_path / "out", data=bad["rows12"]) if how == "rows12"
            else fuse_argv(pool, tmp_path / "out", "--max-rows", "3"))
    # A 12-row file is not the data the models were trained on: its split differs from the one their
    # feature specification records, which is refused first; too few rows of the right data next.
    pattern = (r"gives another validation/test split .* use split seed 0" if how == "rows12" else
               r"rows \(\d+\) of task \w+ have only the value [01]; a classification task needs two classes or more: "
               r"use more rows")
    refused(capsys, argv, pattern, [tmp_path, bad["root"], pool["root"]])


def test_fuse_refuses_data_without_a_label_column(pool, bad, tmp_path, capsys):
    refused(capsys, fuse_argv(pool, tmp_path / "out", data=bad["nolabel"]), r"income",
            [tmp_path, bad["root"], pool["root"]])


def test_fuse_refuses_a_missing_data_file(pool, tmp_path, capsys):
    refused(capsys, fuse_argv(pool, tmp_path / "out", data=tmp_path / "d.csv"), r"d.csv", [tmp_path, pool["root"]])


def test_fuse_refuses_resume_without_an_interrupted_run(pool, tmp_path, capsys):
    refused(capsys, fuse_argv(pool, tmp_path / "out", "--resume"), r"nothing to resume.*run without --resume",
            [tmp_path, pool["root"]])


def test_fuse_refuses_an_unknown_key_in_its_config_file(pool, tmp_path, capsys):
    (tmp_path / "run.toml").write_text("epochz = 3\n")
    refused(capsys, fuse_argv(pool, tmp_path / "out", "--config", tmp_path / "run.toml"), r"epochz",
            [tmp_path, pool["root"]])


def test_fuse_refuses_a_missing_config_file(pool, tmp_path, capsys):
    refused(capsys, fuse_argv(pool, tmp_path / "out", "--config", tmp_path / "run.toml"), r"run.toml",
            [tmp_path, pool["root"]])


def test_a_diverging_fuse_leaves_no_work_dir_and_names_no_checkpoint(pool, tmp_path, capsys):
    err = refused(capsys, fuse_argv(pool, tmp_path / "out", "--lr", "1e12", "--mode", "paper"),
                  r"training loss became (nan|inf) in epoch 1; lower --lr and retry", [pool["root"]])
    assert "checkpoint" not in err
    assert list(tmp_path.iterdir()) == []  # no output, no work dir, no lock file: the next run starts plainly


def test_a_resume_checkpoint_of_another_architecture_is_refused(pool, tmp_path, capsys):
    from fusekit.cli.fuse import options_from_args, parse_tasks
    from fusekit.cli.main import parse
    from fusekit.fusion.fuse import _run_identity, build, prepare, train, work_dir_for

    argv = [str(a) for a in fuse_argv(pool, tmp_path / "out", "--resume", "--max-rows", "400")]
    args = parse(argv)
    options = options_from_args(args)
    # A real checkpoint of the paper network, in the work dir of a residual run that says it is that run.
    work = work_dir_for(tmp_path / "out")
    paper = dataclasses.replace(options, fusion=dataclasses.replace(options.fusion, mode="paper"), resume=False)
    plan = prepare(args.parts, parse_tasks(args.tasks), args.data, paper)
    train(plan, build(plan), work)
    resumed = prepare(args.parts, parse_tasks(args.tasks), args.data, options)
    (work / "run.json").write_text(json.dumps(_run_identity(resumed)))
    refused(capsys, argv, r"checkpoint .*checkpoint.pt was made for another model.*train without --resume",
            [tmp_path, pool["root"]])
    assert (work / "checkpoint.pt").is_file()  # a resumed run's checkpoint is the user's: kept


def test_bench_merge_refuses_what_a_bench_did_not_write(bad, tmp_path, capsys):
    watch = [tmp_path, bad["root"]]
    for name, pattern in [("corrupt", r"JSONDecodeError"), ("shape", r"TypeError|lacks"), ("empty", r"JSONDecodeError")]:
        refused(capsys, ["bench-merge", bad["root"] / f"bench_{name}", "-o", tmp_path / "m"],
                r"results.json is not a results.json written by `fusekit bench` \(" + pattern, watch)
    refused(capsys, ["bench-merge", bad["root"] / "bench_none", "-o", tmp_path / "m"], r"does not exist", watch)


# -- file systems that refuse to be written --------------------------------------------------------
@pytest.fixture()
def small_fs(tmp_path):
    """A function mounting a tmpfs of ``size`` (``ro``: read-only) under tmp_path; needs root."""
    mounted = []

    def mount(name: str, size: str = "1m", ro: bool = False) -> Path:
        point = tmp_path / name
        point.mkdir()
        options = f"size={size}" + (",ro" if ro else "")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip() or 'not root'})")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def fill(point: Path) -> None:
    """Fill a file system until it has no byte left."""
    fd = os.open(point / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def test_outputs_on_a_read_only_file_system_are_one_line_errors(pool, small_fs, capsys):
    ro = small_fs("ro", ro=True)
    watch = [ro, pool["root"]]
    cases = [
        (["decompose", *models(pool), "-o", ro / "parts", "-q"], "decompose"),
        (fuse_argv(pool, ro / "fused"), "fuse"),
        (train_argv(pool, ro / "m.onnx"), "train-single"),
        (["predict", pool["models"]["income_a"], pool["csv"], "-o", ro / "p.csv"], "predict"),
    ]
    for argv, _ in cases:
        refused(capsys, argv, r"cannot write .*: Read-only file system .*; the file system is read-only; write the "
                r"output elsewhere", watch)


def test_outputs_on_a_full_file_system_are_one_line_errors(pool, small_fs, capsys):
    full = small_fs("full", size="256k")
    fill(full)
    watch = [full, pool["root"]]
    for argv in (["decompose", *models(pool), "-o", full / "parts", "-q"],
                 ["predict", pool["models"]["income_a"], pool["csv"], "-o", full / "p.csv"],
                 train_argv(pool, full / "m.onnx")):
        refused(capsys, argv, r"cannot write .*: No space left on device .*; free disk space", watch)


def test_a_checkpoint_that_does_not_fit_is_a_one_line_error_and_the_work_dir_goes(pool, small_fs, capsys):
    # Room for the lock file and run.json, not for the first epoch's checkpoint (torch.save's writer).
    tight = small_fs("tight", size="12k")
    err = refused(capsys, fuse_argv(pool, tight / "fused"), r"cannot write .*checkpoint.pt: No space left on device",
                  [pool["root"]])
    assert "Traceback" not in err
    assert list(tight.iterdir()) == []


def test_a_forbidden_output_folder_is_a_one_line_error(pool, tmp_path, capsys):
    if os.geteuid() == 0:
        pytest.skip("root ignores folder permissions (the read-only file system case covers the message)")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        refused(capsys, ["predict", pool["models"]["income_a"], pool["csv"], "-o", locked / "p.csv"],
                r"cannot write .*Permission denied", [tmp_path])
    finally:
        locked.chmod(0o700)


def test_fuse_refuses_to_replace_its_data_folder_but_may_write_inside_it(pool, tmp_path, capsys):
    data_dir = tmp_path / "data"
    shutil.copytree(pool["root"] / "parts", data_dir / "keep")  # anything the folder holds
    refused(capsys, fuse_argv(pool, data_dir, "--force", "--data-dir", data_dir), r"is the input",
            [tmp_path, pool["root"]])
    from fusekit.io import check_output_paths

    check_output_paths(data_dir / "fused", [pool["parts"]], around=[data_dir])  # beside the data: allowed


# -- the same rules from Python: the option classes and library functions check themselves -----------
LIBRARY = [
    ("TrainConfig", {"batch_size": 0}, r"TrainConfig.batch_size must be at least 1, got 0"),
    ("TrainConfig", {"patience": 0}, r"TrainConfig.patience must be at least 1"),
    ("TrainConfig", {"lr": float("nan")}, r"TrainConfig.lr must be a finite number"),
    ("TrainConfig", {"weight_decay": float("inf")}, r"TrainConfig.weight_decay must be a finite number"),
    ("TrainConfig", {"seed": 2**64}, r"TrainConfig.seed must be a whole number"),
    ("FusionOptions", {"seed": 2**32}, r"FusionOptions.seed must be below 4294967296"),
    ("FuseOptions", {"split_seed": -1}, r"FuseOptions.split_seed must be at least 0"),
    ("Budget", {"max_epochs": 0}, r"Budget.max_epochs must be at least 1"),
]


@pytest.mark.parametrize("cls, values, pattern", LIBRARY, ids=[f"{c}{v}" for c, v, _ in LIBRARY])
def test_option_classes_refuse_bad_values_with_an_option_error(cls, values, pattern):
    from fusekit import FuseOptions, FusionOptions, TrainConfig
    from fusekit.bench.budget import Budget
    from fusekit.errors import OptionError

    with pytest.raises(OptionError, match=pattern):
        {"TrainConfig": TrainConfig, "FusionOptions": FusionOptions, "FuseOptions": FuseOptions,
         "Budget": Budget}[cls](**values)


def test_library_calls_refuse_what_the_commands_refuse(pool, tmp_path):
    from fusekit.decompose.manifest import Manifest
    from fusekit.deploy.evaluate import evaluate_onnx, predict_onnx
    from fusekit.errors import FusekitError, OptionError
    from fusekit.fusion.options import FusionOptions

    with pytest.raises(FusekitError, match=r"^batch_size must be a whole number of at least 1, got 0$"):
        evaluate_onnx(pool["models"]["income_a"], pool["csv"], batch_size=0)
    with pytest.raises(FusekitError, match=r"output .* is the input .*choose another out_csv"):
        predict_onnx(pool["models"]["income_a"], pool["csv"], pool["csv"], force=True)
    with pytest.raises(FusekitError, match=r"carries task never_married .* FuseOptions.ignore_task_metadata=True"):
        Manifest.load(pool["parts"]).check_tasks({"income": ["married_a"], "never_married": ["income_a"]})
    swapped = Manifest.load(pool["parts"]).check_tasks({"income": ["married_a"], "never_married": ["income_a"]},
                                                       ignore_metadata=True)
    assert swapped == {"income": ["married_a"], "never_married": ["income_a"]}
    with pytest.raises(OptionError, match=r"FusionOptions.top_k=2 selects more tasks than the 1 other"):
        FusionOptions(top_k=2).check_task_count(2)
    FusionOptions(top_k=2).check_task_count(3)
    assert list(tmp_path.iterdir()) == []
