"""``fusekit bench DATA [--tasks income,never_married | --tasks t1=A,B t2=C,D] [--models DIR] [--splits K]
[--seeds 0,1,2] [--quick] [-o DIR]``; DATA: census-income, digits, or a CSV/Parquet/.npz file."""
from __future__ import annotations

import argparse
from pathlib import Path

from fusekit.bench.budget import Budget
from fusekit.cli.args import (OptionFlags, add_json, add_quiet, add_threads, parse_pairs, print_json, progress_printer,
                              use_threads)
from fusekit.errors import FusekitError
from fusekit.fusion.options import FuseOptions
from fusekit.options import default_of
from fusekit.stream_config import StreamOptions


def _seeds(text: str) -> int | list[int]:
    """``3`` (seeds 0, 1, 2) or ``3,7,11`` (those seeds)."""
    try:
        if "," not in text:
            return int(text)
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}; write a count (3) or seeds (3,7,11)") from None


def _task_list(text: str | None) -> list[str] | None:
    if text is None:
        return None
    tasks = [t.strip() for t in text.split(",") if t.strip()]
    if not tasks:
        raise FusekitError(f"cannot read task list {text!r}; write task1,task2")
    return tasks


def _tasks(items: list[str] | None) -> tuple[list[str] | None, dict[str, list[str]] | None]:
    """``--tasks income,never_married`` (models by their task metadata) or ``--tasks t1=A,B t2=C``
    (the models of each task, as ``fusekit fuse --tasks``): (task names, mapping or None)."""
    from fusekit.cli.fuse import parse_tasks

    if not items:
        return None, None
    with_models = [i for i in items if "=" in i]
    if with_models and len(with_models) != len(items):
        raise FusekitError("--tasks takes either task1,task2 or task=model1,model2 entries, not both")
    if with_models:
        mapping = parse_tasks(items)
        return list(mapping), mapping
    return _task_list(",".join(items)), None


class _MethodsAction(argparse._StoreAction):
    """``--methods``, whose help lists the methods only when help is printed: the list comes from the
    baselines registry, which imports torch."""

    @property
    def help(self) -> str:
        from fusekit.bench.runner import ALL_METHODS

        return f"comma-separated subset of: {', '.join(ALL_METHODS)}"

    @help.setter
    def help(self, value: str | None) -> None:
        pass


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``bench`` and ``bench-merge`` commands."""
    p = subparsers.add_parser(
        "bench", help="reproduce the EMM paper's tables: baselines vs. fused models, one protocol",
        description="Train every baseline and fuse the sample models on the same data, budget and early stopping; "
                    "write results.json, tables.md (Table I, Table II, three-task table with gate statistics) "
                    "and auc.png.")
    p.add_argument("dataset", help="census-income, digits (scikit-learn's, no download), or a CSV, Parquet or .npz "
                                   "file read as `fusekit fuse --data` reads it (with --models)")
    p.add_argument("--tasks", nargs="+", metavar="TASKS",
                   help="tasks of Table I and II: t1,t2 (models by their fusekit.task) or t1=A,B t2=C,D (model file "
                        "names in --models); default income,never_married on census-income, digit_ge5,digit on digits")
    p.add_argument("--three-tasks", default=None,
                   help="tasks of the extra three-task table (census-income only; default "
                        "income,never_married,education)")
    p.add_argument("--no-three-tasks", action="store_true", help="skip the three-task table")
    p.add_argument("--seeds", type=_seeds, default=3,
                   help="training seeds per split: a count N (0..N-1) or a list such as 3,7,11 (default %(default)s)")
    p.add_argument("--splits", type=_seeds, default=1,
                   help="evaluation splits: each halves the test split into validation and test with its own seed; "
                        "a count K (0..K-1) or a list (default %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test in minutes: 2 epochs on 10,000 training rows, 1 seed, fused models not exported")
    p.add_argument("--methods", action=_MethodsAction)
    p.add_argument("--models", type=Path, help="source models for --tasks (default: sample_models/census2 on "
                                                "census-income, the digits CNN pool on digits)")
    p.add_argument("--label", action="append", metavar="TASK=COLUMN", help="label column of a task in a data file")
    p.add_argument("--task-kind", action="append", metavar="TASK=KIND",
                   help="a task's kind: binary, multiclass, regression or count (default: from the sources' outputs)")
    p.add_argument("--task-output", action="append", metavar="TASK=OUTPUT",
                   help="the source models' output that serves the task, for models with several outputs")
    p.add_argument("--three-models", type=Path, help="source models for --three-tasks (default sample_models/census3)")
    flags = OptionFlags(p)
    flags.spell("run_bench()", seeds="--seeds", splits="--splits", models_dir="--models", out_dir="-o",
                force=("--force", True))
    # None: the budget's own (the quick budget has other defaults).
    flags.add(Budget, "max_epochs", default=None,
              help=f"override the epoch budget (default {default_of(Budget, 'max_epochs')}, quick 2)")
    flags.add(Budget, "patience", default=None,
              help=f"override early-stopping patience (default {default_of(Budget, 'patience')}, quick 2)")
    flags.add(Budget, "batch_size", default=None,
              help=f"override the batch size (default {default_of(Budget, 'batch_size')}, quick 256)")
    flags.add(FuseOptions, "val")
    flags.add(FuseOptions, "test")
    flags.add(FuseOptions, "data_dir")
    flags.spell("run_bench()", task_models="--tasks", tasks="--tasks", labels="--label", task_kinds="--task-kind",
                outputs="--task-output")
    flags.add(Budget, "device")
    flags.add(Budget, "split_seed")
    flags.add(StreamOptions, "stream")
    flags.add(StreamOptions, "memory_budget", metavar="MB")
    flags.add(StreamOptions, "shuffle_buffer", metavar="ROWS")
    add_threads(flags)
    p.add_argument("-o", "--output", type=Path, default=Path("bench-out"),
                   help="output directory (default %(default)s)")
    p.add_argument("--force", action="store_true",
                   help="start over in a non-empty output directory (without it, a folder holding the same "
                        "protocol resumes: finished cells are kept)")
    p.add_argument("--progress", action="store_true", help="also per-epoch lines (and bars on a terminal)")
    add_quiet(p, "progress lines on stderr")
    add_json(p)
    p.set_defaults(run=run)

    m = subparsers.add_parser("bench-merge", help="combine bench runs made in separate processes into one report",
                              description="Merge the results.json of several `fusekit bench` output directories "
                                          "(same dataset, seeds and budget) and write one results.json, tables.md "
                                          "and auc.png.")
    m.add_argument("runs", type=Path, nargs="+", help="directories written by `fusekit bench`")
    m.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    m.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    add_json(m)
    OptionFlags(m).spell("write_merged()", out_dir="-o", force=("--force", True))
    m.set_defaults(run=run_merge)


def run_merge(args: argparse.Namespace) -> int:
    """Merge bench runs and print the combined tables (or the merged results.json)."""
    from fusekit.bench.merge import write_merged

    result = write_merged(args.runs, args.output, force=args.force)
    if args.json:
        print_json(result.to_dict())
        return 0
    print((Path(result.out_dir) / "tables.md").read_text())
    return 0


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print the tables (or results.json)."""
    from fusekit.bench import run_bench

    from fusekit.bench.methods import THREE_TASKS

    use_threads(args, torch=True)
    tasks, mapping = _tasks(args.tasks)
    three = None if args.no_three_tasks else (_task_list(args.three_tasks) if args.three_tasks else THREE_TASKS)
    result = run_bench(
        args.dataset, tasks, args.seeds, args.quick, args.output,
        _task_list(args.methods), splits=args.splits, batch_size=args.batch_size, three_tasks=three,
        models_dir=args.models, three_models_dir=args.three_models, max_epochs=args.max_epochs,
        patience=args.patience, device=args.device, force=args.force, progress=args.progress and not args.quiet,
        split_seed=args.split_seed, log=progress_printer(args.quiet), task_models=mapping,
        labels=parse_pairs(args.label, "--label"), task_kinds=parse_pairs(args.task_kind, "--task-kind", value="KIND"),
        outputs=parse_pairs(args.task_output, "--task-output", value="OUTPUT"), val=args.val, test=args.test,
        data_dir=args.data_dir, streaming=args._option_flags.build(StreamOptions, args))
    if result is None:
        return 0  # another process of a torchrun run (rank 0) writes and prints
    if args.json:
        print_json(result.to_dict())
        return 0
    print((result.out_dir / "tables.md").read_text())
    print(f"wrote {result.out_dir}/results.json, tables.md, auc.png")
    return 0
