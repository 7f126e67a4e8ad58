"""``fusekit demo``: the whole pipeline on the bundled sample models and Census-Income."""
from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command."""
    p = subparsers.add_parser("demo", help="decompose, fuse and evaluate the bundled sample models end to end",
                              description="Runs decompose -> fuse -> evaluate on sample_models/<pool> and the "
                                          "Census-Income data, and prints the fused test AUC per task beside the "
                                          "source models' and their plain average.")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_out"), help="output directory (default demo_out)")
    p.add_argument("--pool", default="census2", choices=["census2", "census3"],
                   help="census2: income + never_married (default); census3: adds education")
    p.add_argument("--models", type=Path, help="a folder of ONNX models to use instead of a bundled pool")
    p.add_argument("--data-dir", type=Path, help="folder holding the Census-Income files")
    p.add_argument("--epochs", type=int, default=100, help="maximum fusion epochs (early stopping decides)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--force", action="store_true", help="replace the output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; the library prints each step."""
    from fusekit.demo import run_demo

    run_demo(args.output, pool=args.pool, models_dir=args.models, data_dir=args.data_dir, epochs=args.epochs,
             force=args.force, device=args.device, progress=not args.quiet)
    return 0
