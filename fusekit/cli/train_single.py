"""``fusekit train-single``: train one single-task model and export it to ONNX."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fusekit.cli.args import OptionFlags, add_json, add_threads, deprecated, parse_pairs, print_json, use_threads
from fusekit.errors import FusekitError
from fusekit.fusion.options import FuseOptions
from fusekit.models.architecture import Architecture
from fusekit.stream_config import StreamOptions
from fusekit.train_config import TrainConfig


def _name_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def register(subparsers) -> None:
    """Add the ``train-single`` command."""
    p = subparsers.add_parser(
        "train-single",
        help="train one single-task model (embeddings + MLP) and export it to ONNX",
        description="Train a single-task model on census-income or a CSV/Parquet file, print its test AUC "
        "and export it to ONNX with its feature specification.",
    )
    p.add_argument("--data", required=True, help="census-income, or a CSV/Parquet file")
    p.add_argument("--task", required=True, help="task name (census-income: income, never_married, education)")
    p.add_argument("--label", action="append", default=[], metavar="TASK=COLUMN",
                   help="label column of the task in a CSV/Parquet file (default: the column named like the task)")
    p.add_argument("--pool-tasks", type=_name_list, default=None, metavar="T1,T2",
                   help="census-income: all tasks of the model pool; their source columns are removed from the "
                   "inputs so that the pool's models share inputs (default: just --task)")
    p.add_argument("--exclude", type=_name_list, default=None, metavar="COL,...", help="files: columns that are not features")
    p.add_argument("--categorical", type=_name_list, default=None, metavar="COL,...", help="files: categorical feature columns")
    p.add_argument("--dense", type=_name_list, default=None, metavar="COL,...", help="files: dense feature columns")
    p.add_argument("--data-dir", type=Path, default=None, help="folder with the Census-Income files")
    p.add_argument("--task-kind", default=None, choices=("binary", "multiclass", "regression", "count"),
                   help="files: the task's kind (default binary; census-income tasks know their own)")
    flags = OptionFlags(p)
    flags.spell("train_single()", train_rows="--train-rows", pool_tasks="--pool-tasks", out="-o",
                force=("--force", True), holdout_seed="--holdout-seed")
    flags.spell("load_dataset()", labels="--label", categorical="--categorical", dense="--dense",
                exclude="--exclude", holdout="--holdout")
    flags.add(Architecture, "hidden")
    flags.add(Architecture, "emb_dim")
    flags.add(Architecture, "batch_norm")
    flags.add(Architecture, "residual")
    flags.add(Architecture, "dropout")
    p.add_argument("--holdout", type=float, default=0.0, help="fraction of the training split kept out for fusing")
    p.add_argument("--holdout-seed", type=int, default=0, help="seed of the holdout (keep it equal across a pool)")
    flags.add(TrainConfig, "seed")
    flags.add(FuseOptions, "split_seed",
              help="seed of the validation/test split (keep it equal across a pool so test AUCs compare)")
    flags.add(TrainConfig, "max_epochs", "--epochs")
    flags.add(TrainConfig, "patience")
    flags.add(TrainConfig, "lr")
    flags.add(TrainConfig, "batch_size")
    flags.add(TrainConfig, "weight_decay")
    p.add_argument("--train-rows", type=int, default=None, help="train on a seeded random subset of this many rows")
    flags.add(TrainConfig, "device")
    flags.add(StreamOptions, "stream")
    flags.add(StreamOptions, "memory_budget", metavar="MB")
    flags.add(StreamOptions, "shuffle_buffer", metavar="ROWS")
    add_threads(flags)
    quiet = flags.add(TrainConfig, "progress", "-q", "--quiet", help="no per-epoch lines or progress bars on stderr")
    deprecated(p, "--no-progress", quiet)
    add_json(p)
    p.add_argument("-o", "--output", type=Path, required=True, help="the ONNX file to write")
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Parse options, train, print the test AUC."""
    from fusekit.data import load_dataset
    from fusekit.distributed import agreement
    from fusekit.models.single import check_seeds, train_single
    from fusekit.task_kinds import SCORE_LABEL

    labels = parse_pairs(args.label, "--label") or {}
    if labels and set(labels) != {args.task}:
        raise FusekitError(f"--label names {', '.join(sorted(labels))} but the task is {args.task!r}")
    if args.output.suffix != ".onnx":
        raise FusekitError(f"-o should name an .onnx file, got {args.output}")
    check_seeds(holdout_seed=args.holdout_seed)  # before the data is split with it
    flags: OptionFlags = args._option_flags
    arch = flags.build(Architecture, args)
    config = flags.build(TrainConfig, args)
    streaming = flags.build(StreamOptions, args)
    use_threads(args, torch=True)
    dataset = None
    if args.data != "census-income":
        if args.pool_tasks and set(args.pool_tasks) - {args.task}:
            raise FusekitError("--pool-tasks applies to census-income; for files, drop columns with --exclude")
        with agreement("reading the data"):  # under torchrun: a bad file ends every process with one message
            dataset = load_dataset(args.data, [args.task], labels=labels or {args.task: args.task},
                                   seed=args.split_seed, holdout=args.holdout, holdout_seed=args.holdout_seed,
                                   categorical=args.categorical, dense=args.dense, exclude=args.exclude,
                                   kinds={args.task: args.task_kind} if args.task_kind else None,
                                   streaming=streaming)
    result = train_single(args.data, args.task, args.output, pool_tasks=args.pool_tasks, arch=arch,
                          holdout=args.holdout, holdout_seed=args.holdout_seed, seed=args.seed,
                          split_seed=args.split_seed, config=config,
                          data_dir=args.data_dir, train_rows=args.train_rows, dataset=dataset, force=args.force)
    if result is None:
        return 0  # another process of a torchrun run (rank 0) exports and prints
    if dataset is not None and dataset.reading and not args.json:
        print(f"data: training rows {dataset.reading['train']}", file=sys.stderr)
        if "eval" in dataset.reading:
            print(f"data: validation and test {dataset.reading['eval']}", file=sys.stderr)
    if args.json:
        print_json({**result.to_dict(), **({"reading": dataset.reading} if dataset is not None else {})})
    else:
        print(f"{result.task}: test {SCORE_LABEL[result.score]} {result.test_score:.5f} (validation {result.val_score:.5f}, best epoch "
              f"{result.best_epoch}/{result.epochs}, {result.train_rows} training rows, "
              f"{result.rows_per_second:,.0f} rows/s)")
        print(f"wrote {result.path}")
    return 0
