"""``fusekit predict MODEL.onnx INPUT -o OUT.csv``: one probability column per task."""
from __future__ import annotations

import argparse
from pathlib import Path

from fusekit.cli.args import OptionFlags, add_json, add_threads, note, print_json, use_threads
from fusekit.train_config import TrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict`` command."""
    p = subparsers.add_parser("predict", help="write an ONNX model's predictions for a CSV/Parquet file")
    p.add_argument("model", type=Path, help="ONNX model written by fusekit")
    p.add_argument("input", type=Path, help="CSV/Parquet with the raw feature columns, or .npz of encoded inputs")
    p.add_argument("-o", "--output", type=Path, required=True, help="CSV to write")
    flags = OptionFlags(p)
    flags.add(TrainConfig, "device", help="onnxruntime device: auto picks CUDA when onnxruntime has it")
    flags.spell("predict_onnx()", out_csv="-o", force=("--force", True), batch_size="--batch-size")
    p.add_argument("--batch-size", type=int, default=65536, help="rows per onnxruntime call (default %(default)s)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    add_threads(flags)
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Predict and say where the file went."""
    from fusekit.deploy.evaluate import predict_onnx

    threads = use_threads(args)
    result = predict_onnx(args.model, args.input, args.output, device=args.device,
                          batch_size=args.batch_size, force=args.force, threads=threads)
    rows, provider = result.rows, result.provider
    # Values no vocabulary holds are predicted as unseen (id 0): say so, per column.
    for line in result.encoding.lines() if result.encoding else []:
        note(line)
    if args.json:
        print_json({"model": str(args.model), "input": str(args.input), "output": str(args.output), "rows": rows,
                    "provider": provider, "encoding": result.encoding.to_dict() if result.encoding else None})
        return 0
    print(f"wrote {rows} rows of predictions to {args.output} (onnxruntime, {provider})")
    return 0
