"""``fusekit inspect MODEL.onnx``."""
from __future__ import annotations

import argparse
from pathlib import Path

from fusekit.decompose.inspect import inspect_model, result_json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``inspect`` command."""
    parser = subparsers.add_parser("inspect", help="list a model's layers, signatures and cut points",
                                   description="List the layers fusekit finds in an ONNX model, their "
                                               "structural signatures and the model's cut points.")
    parser.add_argument("model", type=Path, help="an ONNX model")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Inspect and print."""
    result = inspect_model(args.model)
    print(result_json(result) if args.json else result.table())
    return 0
