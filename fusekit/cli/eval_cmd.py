"""``fusekit eval MODEL.onnx --data census-income``: per-task metrics with onnxruntime."""
from __future__ import annotations

import argparse
from pathlib import Path

from fusekit.cli.args import OptionFlags, add_json, add_threads, deprecated, parse_pairs, print_json, use_threads
from fusekit.fusion.options import FuseOptions
from fusekit.stream_config import StreamOptions
from fusekit.train_config import TrainConfig

SPLITS = ("train", "val", "test")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command."""
    p = subparsers.add_parser("eval", help="per-task metrics of an ONNX model (source or fused) with onnxruntime")
    p.add_argument("model", type=Path, help="ONNX model written by fusekit")
    p.add_argument("--data", required=True, help="census-income, or a CSV, Parquet or .npz file (or a Parquet folder)")
    p.add_argument("--val", type=Path, default=None, help="validation file (default: carved from --data)")
    p.add_argument("--test", type=Path, default=None, help="test file (default: carved from --data)")
    p.add_argument("--label", action="append", metavar="TASK=COLUMN", help="label column of an output in a CSV/Parquet file")
    p.add_argument("--task-kind", action="append", metavar="OUTPUT=KIND",
                   help="an output's kind (binary, multiclass, regression, count); default: detected")
    flags = OptionFlags(p)
    flags.spell("evaluate_onnx()", labels="--label", batch_size="--batch-size")
    flags.add(FuseOptions, "data_dir")
    p.add_argument("--split", default="test", choices=SPLITS, help="which split to score (default %(default)s)")
    flags.add(TrainConfig, "device", help="onnxruntime device: auto picks CUDA when onnxruntime has it")
    p.add_argument("--batch-size", type=int, default=65536, help="rows per onnxruntime call (default %(default)s)")
    flags.add(StreamOptions, "stream")
    flags.add(StreamOptions, "memory_budget", metavar="MB")
    add_threads(flags)
    split_seed = flags.add(FuseOptions, "split_seed",
                           help="seed of the validation/test split of the data (the one the model was trained with)")
    deprecated(p, "--seed", split_seed)  # eval's --seed always meant the split
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print one line per task (or one JSON document)."""
    from fusekit.deploy.evaluate import evaluate_onnx

    threads = use_threads(args)
    result = evaluate_onnx(args.model, args.data, labels=parse_pairs(args.label, "--label"), split=args.split,
                           device=args.device, batch_size=args.batch_size, data_dir=args.data_dir,
                           seed=args.split_seed, task_kinds=parse_pairs(args.task_kind, "--task-kind", "OUTPUT", "KIND"),
                           val=args.val, test=args.test, threads=threads,
                           streaming=args._option_flags.build(StreamOptions, args))
    if args.json:
        print_json({"model": str(args.model), "split": result.split, "rows": result.rows,
                    "provider": result.provider, "split_seed": args.split_seed, "scores": result.scores,
                    "metrics": result.metrics, "kinds": {t: k.to_dict() for t, k in result.kinds.items()},
                    "reading": result.reading})
        return 0
    print(f"{args.model} on {result.rows} {result.split} rows with onnxruntime ({result.provider})")
    if result.reading and "eval" in result.reading:
        print(f"data: validation and test {result.reading['eval']}")
    for task, metrics in result.metrics.items():
        kind = result.kinds[task]
        others = ", ".join(f"{name} {value:.5f}" for name, value in metrics.items() if name != kind.score_name)
        print(f"{task:<16} {kind.score_label} {metrics[kind.score_name]:.5f}  ({kind.kind}; {others})")
    return 0
