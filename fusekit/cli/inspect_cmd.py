"""``fusekit inspect MODEL.onnx``."""
from __future__ import annotations

import argparse
from pathlib import Path

from fusekit.cli.args import TABLE_HINT, TABLE_ROWS, add_json, add_verbose, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``inspect`` command."""
    parser = subparsers.add_parser("inspect", help="list a model's layers, signatures and cut points",
                                   description="List the layers fusekit finds in an ONNX model, their "
                                               "structural signatures and the model's cut points.")
    parser.add_argument("model", type=Path, help="an ONNX model")
    add_verbose(parser, "layer and cut point")
    add_json(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Inspect and print (a short table unless --verbose; --json is always complete)."""
    from fusekit.decompose.inspect import inspect_model

    result = inspect_model(args.model)
    if args.json:
        print_json(result.to_json())
    else:
        print(result.table(None if args.verbose else TABLE_ROWS, hint=TABLE_HINT))
    return 0
