"""``fusekit eval MODEL.onnx --data census-income``: per-task AUC with onnxruntime."""
from __future__ import annotations

import argparse
from pathlib import Path

from fusekit.cli.fuse import parse_labels


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``eval`` command."""
    p = subparsers.add_parser("eval", help="per-task AUC of an ONNX model (source or fused) with onnxruntime")
    p.add_argument("model", type=Path, help="ONNX model written by fusekit")
    p.add_argument("--data", required=True, help="census-income, or a CSV/Parquet file")
    p.add_argument("--label", action="append", metavar="TASK=COLUMN", help="label column of an output in a CSV/Parquet file")
    p.add_argument("--data-dir", type=Path, help="folder holding the Census-Income files")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--batch-size", type=int, default=65536)
    p.add_argument("--seed", type=int, default=0, help="seed of the validation/test split")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate and print one line per task."""
    from fusekit.deploy.evaluate import evaluate_onnx

    result = evaluate_onnx(args.model, args.data, labels=parse_labels(args.label), split=args.split,
                           device=args.device, batch_size=args.batch_size, data_dir=args.data_dir, seed=args.seed)
    print(f"{args.model} on {result.rows} {result.split} rows with onnxruntime ({result.provider})")
    for task, auc in result.auc.items():
        print(f"{task:<16} AUC {auc:.5f}")
    return 0
