"""``fusekit bench census-income [--tasks income,never_married] [--seeds N] [--quick] [-o DIR]``."""
from __future__ import annotations

import argparse
from pathlib import Path

from fusekit.errors import FusekitError


def _task_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise FusekitError(f"cannot read task list {text!r}; write task1,task2")
    return tasks


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` command."""
    from fusekit.bench import ALL_METHODS

    p = subparsers.add_parser(
        "bench", help="reproduce the EMM paper's tables: baselines vs. fused models, one protocol",
        description="Train every baseline and fuse the sample models on the same data, budget and early stopping; "
                    "write results.json, tables.md (Table I, Table II, three-task table with gate statistics) "
                    "and auc.png.")
    p.add_argument("dataset", help="census-income, or a CSV/Parquet file whose label columns are named after "
                                   "the tasks (with --models)")
    p.add_argument("--tasks", default="income,never_married", help="tasks of Table I and II (default %(default)s)")
    p.add_argument("--three-tasks", default="income,never_married,education",
                   help="tasks of the extra three-task table (default %(default)s)")
    p.add_argument("--no-three-tasks", action="store_true", help="skip the three-task table")
    p.add_argument("--seeds", type=int, default=3, help="number of seeds, 0..N-1 (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test in minutes: 2 epochs on 10,000 training rows, 1 seed, fused models not exported")
    p.add_argument("--methods", help=f"comma-separated subset of: {', '.join(ALL_METHODS)}")
    p.add_argument("--models", type=Path, help="source models for --tasks (default sample_models/census2)")
    p.add_argument("--three-models", type=Path, help="source models for --three-tasks (default sample_models/census3)")
    p.add_argument("--max-epochs", type=int, help="override the epoch budget (default 100, quick 2)")
    p.add_argument("--patience", type=int, help="override early-stopping patience (default 5)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("-o", "--output", type=Path, default=Path("bench-out"),
                   help="output directory (default %(default)s)")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--progress", action="store_true", help="show per-epoch progress bars")
    p.set_defaults(run=run)

    m = subparsers.add_parser("bench-merge", help="combine bench runs made in separate processes into one report",
                              description="Merge the results.json of several `fusekit bench` output directories "
                                          "(same dataset, seeds and budget) and write one results.json, tables.md "
                                          "and auc.png.")
    m.add_argument("runs", type=Path, nargs="+", help="directories written by `fusekit bench`")
    m.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    m.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    m.set_defaults(run=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    """Merge bench runs and print the combined tables."""
    from fusekit.bench.merge import write_merged

    result = write_merged(args.runs, args.output, force=args.force)
    print((Path(result.out_dir) / "tables.md").read_text())
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the tables."""
    from fusekit.bench import run_bench

    if args.seeds < 1:
        raise FusekitError("--seeds must be at least 1")
    result = run_bench(
        args.dataset, _task_list(args.tasks), args.seeds, args.quick, args.output,
        _task_list(args.methods), three_tasks=None if args.no_three_tasks else _task_list(args.three_tasks),
        models_dir=args.models, three_models_dir=args.three_models, max_epochs=args.max_epochs,
        patience=args.patience, device=args.device, force=args.force, progress=args.progress)
    print((result.out_dir / "tables.md").read_text())
    print(f"wrote {result.out_dir}/results.json, tables.md, auc.png")
    return 0
