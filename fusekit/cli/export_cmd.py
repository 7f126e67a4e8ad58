"""``fusekit export MODEL.onnx --raw-inputs [--quantize dynamic] -o served.onnx``: a file to serve anywhere."""
from __future__ import annotations

import argparse
from pathlib import Path

from fusekit.cli.args import OptionFlags, add_json, note, print_json


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` command."""
    p = subparsers.add_parser("export", help="write a model to serve without fusekit: raw-column inputs, int8 weights")
    p.add_argument("model", type=Path, help="ONNX model written by fusekit (fused or single-task)")
    p.add_argument("-o", "--output", type=Path, required=True, help="ONNX file to write")
    p.add_argument("--raw-inputs", action="store_true",
                   help="put the feature specification's encoding in the graph: one input per raw column "
                        "(string for categorical, float32 for dense)")
    p.add_argument("--quantize", choices=["dynamic"], default=None,
                   help="store MatMul/Gemm and embedding weights as int8 (onnxruntime's quantize_dynamic)")
    p.add_argument("--check-data", type=Path, default=None, metavar="ROWS",
                   help="CSV/Parquet rows to check the raw-input file on (default: rows made from the vocabularies)")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    flags = OptionFlags(p)
    flags.spell("export_model()", out_path="-o", force=("--force", True), raw_inputs=("--raw-inputs", True),
                quantize="--quantize")
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Export and say what was written and checked."""
    from fusekit.deploy.raw_inputs import export_model

    result = export_model(args.model, args.output, raw_inputs=args.raw_inputs, quantize=args.quantize,
                          check_data=args.check_data, force=args.force)
    if args.json:
        print_json(result.to_dict())
        return 0
    if result.max_diff is not None:
        note(f"checked on {result.check_rows} {result.check_source} rows: max difference from FeatureSpec.encode "
             f"+ the model {result.max_diff:.1e}")
    if result.quantization_diff is not None:
        note(f"int8 weights change the outputs by at most {result.quantization_diff:.1e} on those rows")
    inputs = f"{len(result.raw_inputs)} raw-column inputs" if result.raw_inputs else "encoded inputs"
    print(f"wrote {args.output} ({inputs}{', int8 weights' if result.quantized else ''}; "
          f"{result.size_bytes / 1e3:.0f} kB, the model was {result.source_bytes / 1e3:.0f} kB)")
    return 0
