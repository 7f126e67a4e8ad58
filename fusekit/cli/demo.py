"""``fusekit demo``: the whole pipeline on the bundled sample models and Census-Income."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from fusekit.cli.args import OptionFlags, add_json, add_quiet, add_threads, note, print_json, use_threads
from fusekit.demo import DIGITS, DIGITS_POOLS
from fusekit.fusion.options import FuseOptions
from fusekit.sample_models import POOLS
from fusekit.train_config import TrainConfig


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` command."""
    p = subparsers.add_parser("demo", help="decompose, fuse and evaluate the bundled sample models end to end",
                              description="Runs decompose -> fuse -> evaluate on sample_models/<pool> and the "
                                          "Census-Income data, and prints the fused test AUC per task beside the "
                                          "source models' and their plain average.")
    p.add_argument("-o", "--output", type=Path, default=Path("demo_out"), help="output directory (default demo_out)")
    p.add_argument("--pool", default=POOLS[0], choices=POOLS + (DIGITS,),
                   help="census2: income + never_married (default); census3: adds education; digits: CNN and "
                        "transformer pools on scikit-learn's digits, fused over feature maps and sequences")
    p.add_argument("--models", type=Path, help="a folder of ONNX models to use instead of a bundled pool")
    flags = OptionFlags(p)
    flags.add(FuseOptions, "data_dir")
    flags.add(TrainConfig, "max_epochs", "--epochs", help="maximum fusion epochs (early stopping decides)")
    flags.add(TrainConfig, "device")
    add_threads(flags)
    p.add_argument("--force", action="store_true", help="replace the output directory")
    flags.spell("run_demo()", out_dir="-o", force=("--force", True), models_dir="--models")
    add_quiet(p, "per-epoch lines or progress bars")
    add_json(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo; the library reports each step (on stderr under --json)."""
    from fusekit.demo import run_demo

    use_threads(args, torch=True)
    result = run_demo(args.output, pool=args.pool, models_dir=args.models, data_dir=args.data_dir,
                      epochs=args.max_epochs, force=args.force, device=args.device, progress=not args.quiet,
                      **({"say": note} if args.json else {}))
    if args.json and args.pool == DIGITS and not args.models:
        print_json({"out_dir": str(result.out_dir), "provider": result.provider, "pools": {
            kind: json.loads((Path(result.out_dir) / kind / "fused" / "metrics.json").read_text())["per_task"]
            for kind in DIGITS_POOLS}})
        return 0
    if args.json:
        metrics = json.loads((Path(result.out_dir) / "fused" / "metrics.json").read_text())
        print_json({"out_dir": str(result.out_dir), "fused_onnx": str(Path(result.out_dir) / "fused" / "fused.onnx"),
                    "provider": result.provider, "tasks": metrics["tasks"], "per_task": metrics["per_task"],
                    "mean_test_score": metrics["mean_test_score"], "epochs": metrics["epochs"]})
    return 0
