"""``fusekit decompose A.onnx B.onnx [...] -o PARTS/``."""
from __future__ import annotations

import argparse
from pathlib import Path

from fusekit.cli.args import (TABLE_HINT, TABLE_ROWS, OptionFlags, add_json, add_quiet, add_threads, add_verbose,
                              parse_pairs, print_json, progress_printer, use_threads)
from fusekit.errors import FusekitError


def _levels(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number or 'all', not {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError("expected a positive number or 'all'")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``decompose`` command."""
    parser = subparsers.add_parser(
        "decompose", help="cut trained ONNX models into aligned components",
        description="Find the layers all models share in the same order, cut every model there and write "
                    "one ONNX file per model and level plus manifest.json. By default there are "
                    "min(3, common layers) levels, balanced, the last ending at the last common layer.")
    parser.add_argument("models", nargs="+", type=Path, help="two or more ONNX models with the same inputs")
    parser.add_argument("-o", "--output", type=Path, required=True, help="parts directory to write")
    parser.add_argument("--levels", type=_levels, default=None,
                        help="number of levels, or 'all' for every common layer (default: min(3, common))")
    parser.add_argument("--names", nargs="+", default=None, help="model names (default: file names without .onnx)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    parser.add_argument("--input-map", action="append", default=[], metavar="OLD=NEW",
                        help="rename the input OLD of every model that has it to NEW, for pools that name the same "
                             "input differently (data_0 vs gpu_0/data_0); repeat for several")
    parser.add_argument("--no-verify", action="store_true", help="skip the onnxruntime check of the components")
    add_verbose(parser, "common layer")
    add_quiet(parser, "per-model progress lines on stderr")
    add_json(parser)
    flags = OptionFlags(parser)
    add_threads(flags)  # the verification sessions' onnxruntime threads
    # decompose's messages name its arguments; this command gives them with these flags.
    flags.spell("decompose()", input_map="--input-map", out_dir="-o", levels="--levels", names="--names",
                              force=("--force", True), verify=("--no-verify", False))
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Decompose and print the table (or JSON)."""
    from fusekit.decompose.pipeline import decompose

    if len(args.models) < 2:
        raise FusekitError("decompose needs at least two models; pass two or more ONNX files")
    use_threads(args)
    input_map = parse_pairs(args.input_map, "--input-map", "OLD", "NEW")
    result = decompose(args.models, args.output, levels=args.levels, force=args.force,
                       verify=not args.no_verify, names=args.names, progress=progress_printer(args.quiet),
                       input_map=input_map)
    if args.json:
        print_json(result.to_json())
    else:
        print(result.table(None if args.verbose else TABLE_ROWS, hint=TABLE_HINT))
    return 0
