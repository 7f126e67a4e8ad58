"""``fusekit train-single``: train one single-task model and export it to ONNX."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fusekit.errors import FusekitError


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one width")
    return values


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
    p.add_argument("--hidden", type=_int_list, default=[64, 32, 16], help="hidden widths, e.g. 64,32,16")
    p.add_argument("--emb-dim", type=int, default=4)
    p.add_argument("--batch-norm", action="store_true")
    p.add_argument("--residual", action="store_true", help="skip connections around equal-width layers")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--holdout", type=float, default=0.0, help="fraction of the training split kept out for fusing")
    p.add_argument("--holdout-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation and shuffling")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the validation/test split (keep it equal across a pool so test AUCs compare)")
    p.add_argument("--epochs", type=int, default=100, help="maximum epochs")
    p.add_argument("--patience", type=int, default=5, help="early stopping: epochs without a better validation AUC")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--weight-decay", type=float, default=1e-6)
    p.add_argument("--train-rows", type=int, default=None, help="train on a seeded random subset of this many rows")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("-o", "--output", type=Path, required=True, help="the ONNX file to write")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Parse options, train, print the test AUC."""
    from fusekit.data import load_dataset
    from fusekit.models.single import Architecture, train_single
    from fusekit.train import TrainConfig

    labels = {}
    for item in args.label:
        task, sep, column = item.partition("=")
        if not sep or not task or not column:
            raise FusekitError(f"--label expects TASK=COLUMN, got {item!r}")
        labels[task] = column
    if labels and set(labels) != {args.task}:
        raise FusekitError(f"--label names {', '.join(sorted(labels))} but the task is {args.task!r}")
    if args.epochs < 1 or args.patience < 1 or args.batch_size < 1:
        raise FusekitError("--epochs, --patience and --batch-size must be at least 1")
    if args.output.suffix != ".onnx":
        raise FusekitError(f"-o should name an .onnx file, got {args.output}")
    arch = Architecture(hidden=args.hidden, emb_dim=args.emb_dim, batch_norm=args.batch_norm,
                        residual=args.residual, dropout=args.dropout)
    arch.validate()
    config = TrainConfig(lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                         max_epochs=args.epochs, patience=args.patience, seed=args.seed, device=args.device,
                         progress=not args.no_progress)
    dataset = None
    if args.data != "census-income":
        if args.pool_tasks and set(args.pool_tasks) - {args.task}:
            raise FusekitError("--pool-tasks applies to census-income; for files, drop columns with --exclude")
        dataset = load_dataset(args.data, [args.task], labels=labels or {args.task: args.task}, seed=args.split_seed,
                               holdout=args.holdout, holdout_seed=args.holdout_seed, categorical=args.categorical,
                               dense=args.dense, exclude=args.exclude)
    result = train_single(args.data, args.task, args.output, pool_tasks=args.pool_tasks, arch=arch,
                          holdout=args.holdout, holdout_seed=args.holdout_seed, seed=args.seed,
                          split_seed=args.split_seed, config=config,
                          data_dir=args.data_dir, train_rows=args.train_rows, dataset=dataset)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"{result.task}: test AUC {result.test_auc:.5f} (validation {result.val_auc:.5f}, best epoch "
              f"{result.best_epoch}/{result.epochs}, {result.train_rows} training rows, "
              f"{result.rows_per_second:,.0f} rows/s)")
        print(f"wrote {result.path}")
    return 0
