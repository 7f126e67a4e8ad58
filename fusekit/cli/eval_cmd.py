"""``fusekit eval MODEL.onnx --data census-income``: per-task AUC with onnxruntime."""
from __future__ import annotations

import argparse
from pathlib import Path

from fusekit.cli.args import OptionFlags, add_json, deprecated, print_json
from fusekit.cli.fuse import parse_labels
from fusekit.fusion.options import FuseOptions
from fusekit.train_config import TrainConfig

SPLITS = ("train", "val", "test")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command."""
    p = subparsers.add_parser("eval", help="per-task AUC of an ONNX model (source or fused) with onnxruntime")
    p.add_argument("model", type=Path, help="ONNX model written by fusekit")
    p.add_argument("--data", required=True, help="census-income, or a CSV/Parquet file")
    p.add_argument("--label", action="append", metavar="TASK=COLUMN", help="label column of an output in a CSV/Parquet file")
    flags = OptionFlags(p)
    flags.spell("evaluate_onnx()", labels="--label", batch_size="--batch-size")
    flags.add(FuseOptions, "data_dir")
    p.add_argument("--split", default="test", choices=SPLITS, help="which split to score (default %(default)s)")
    flags.add(TrainConfig, "device", help="onnxruntime device: auto picks CUDA when onnxruntime has it")
    p.add_argument("--batch-size", type=int, default=65536, help="rows per onnxruntime call (default %(default)s)")
    split_seed = flags.add(FuseOptions, "split_seed",
                           help="seed of the validation/test split of the data (the one the model was trained with)")
    deprecated(p, "--seed", split_seed)  # eval's --seed always meant the split
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print one line per task (or one JSON document)."""
    from fusekit.deploy.evaluate import evaluate_onnx

    result = evaluate_onnx(args.model, args.data, labels=parse_labels(args.label), split=args.split,
                           device=args.device, batch_size=args.batch_size, data_dir=args.data_dir,
                           seed=args.split_seed)
    if args.json:
        print_json({"model": str(args.model), "split": result.split, "rows": result.rows,
                    "provider": result.provider, "split_seed": args.split_seed, "auc": result.auc})
        return 0
    print(f"{args.model} on {result.rows} {result.split} rows with onnxruntime ({result.provider})")
    for task, auc in result.auc.items():
        print(f"{task:<16} AUC {auc:.5f}")
    return 0
