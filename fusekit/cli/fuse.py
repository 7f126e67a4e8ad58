"""``fusekit fuse PARTS/ --tasks t1=A,B t2=C,D --data census-income -o OUT/ [--config run.toml]``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fusekit.cli.args import OptionFlags, add_json, add_threads, parse_pairs, print_json, use_threads
from fusekit.errors import FusekitError
from fusekit.fusion.options import FuseOptions, FusionOptions
from fusekit.stream_config import StreamOptions
from fusekit.train_config import TrainConfig


def parse_tasks(items: list[str]) -> dict[str, list[str]]:
    """``["income=a,b", "married=c"]`` -> ``{"income": ["a", "b"], "married": ["c"]}``."""
    tasks: dict[str, list[str]] = {}
    for item in items:
        task, sep, models = item.partition("=")
        names = [m.strip() for m in models.split(",") if m.strip()]
        if not sep or not task.strip() or not names:
            raise FusekitError(f"cannot read --tasks entry {item!r}; write task=model1,model2")
        if task.strip() in tasks:
            raise FusekitError(f"task {task.strip()} is given twice in --tasks; list all its models once")
        tasks[task.strip()] = names
    return tasks


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fuse`` command; its option flags come from FusionOptions, TrainConfig and FuseOptions."""
    p = subparsers.add_parser("fuse", help="train the AKF fusion network over decomposed parts and export fused.onnx",
                              description="Train the fusion network (EMM AKF) over frozen components and write "
                                          "OUT/fused.onnx, metrics.json, checkpoint, plots and gate statistics. "
                                          "Every option can also be given in a TOML file (--config); flags on the "
                                          "command line override it.")
    # Not required here: they may come from --config (checked in run).
    p.add_argument("parts", type=Path, nargs="?", help="directory written by `fusekit decompose`")
    p.add_argument("--tasks", nargs="+", metavar="TASK=M1,M2", help="models of each task")
    p.add_argument("--data", help="census-income, or the training data: a CSV, Parquet or .npz file or a folder of "
                                  "Parquet files (columns/arrays named after the model inputs unless the models "
                                  "carry a fusekit feature specification)")
    p.add_argument("--label", action="append", metavar="TASK=COLUMN", help="label column of a task in a CSV/Parquet file")
    p.add_argument("--task-kind", action="append", metavar="TASK=KIND",
                   help="a task's kind: binary, multiclass, regression or count (binary:logit names the output form "
                        "too); default: detected from how the sources' outputs end")
    p.add_argument("--task-output", action="append", metavar="TASK=OUTPUT",
                   help="the source models' output that serves the task, for models with several outputs")
    p.add_argument("-o", "--output", type=Path, help="output directory")
    p.add_argument("--config", type=Path, metavar="RUN.toml",
                   help="read options from this TOML file (keys: the option names, e.g. batch-size = 512)")
    flags = OptionFlags(p)
    flags.add(FuseOptions, "data_dir")
    flags.add(FuseOptions, "val")
    flags.add(FuseOptions, "test")
    flags.add(FusionOptions, "mode")
    flags.add(FusionOptions, "use_mtm", "--no-mtm", help="ablation: no fusion gate / Multi-Task Merge")
    flags.add(FusionOptions, "pretrained", "--from-scratch",
              help="ablation: same-structure components trained from scratch")
    flags.add(FusionOptions, "tower", "--no-tower", help="residual mode: no tower correction on the mixed heads")
    flags.add(FusionOptions, "top_k")
    flags.add(FusionOptions, "fuse_at")
    flags.add(FusionOptions, "finetune")
    flags.add(FusionOptions, "finetune_lr", metavar="SCALE",
              help="learning rate of fine-tuned source weights, as a fraction of --lr")
    flags.add(TrainConfig, "lr")
    flags.add(TrainConfig, "batch_size")
    flags.add(TrainConfig, "weight_decay")
    flags.add(TrainConfig, "max_epochs", "--epochs")
    flags.add(TrainConfig, "patience")
    flags.add(TrainConfig, "warmup_epochs")
    flags.add(TrainConfig, "seed", also=(FusionOptions,), help="seed of the fusion network and its training")
    flags.add(FuseOptions, "split_seed")
    flags.add(TrainConfig, "device")
    add_threads(flags)
    flags.add(FuseOptions, "train_rows")
    flags.add(FuseOptions, "max_rows", help="use at most this many rows of each split (quick runs)")
    flags.add(StreamOptions, "stream")
    flags.add(StreamOptions, "memory_budget", metavar="MB")
    flags.add(StreamOptions, "shuffle_buffer", metavar="ROWS")
    flags.add(FuseOptions, "resume")
    flags.add(FuseOptions, "force")
    flags.add(FuseOptions, "ignore_task_metadata")
    flags.add(TrainConfig, "progress", "-q", "--quiet", help="no per-epoch lines or progress bars on stderr")
    flags.spell("fuse()", tasks="--tasks", out_dir="-o")
    flags.spell("FuseOptions", labels="--label", task_kinds="--task-kind", outputs="--task-output")
    add_json(p)
    p.set_defaults(run=run, _parser=p)


def options_from_args(args: argparse.Namespace) -> FuseOptions:
    """The FuseOptions the parsed flags (and config file) ask for; the command line is recorded."""
    flags: OptionFlags = args._option_flags
    return flags.build(FuseOptions, args, fusion=flags.build(FusionOptions, args),
                       training=flags.build(TrainConfig, args), streaming=flags.build(StreamOptions, args),
                       labels=parse_pairs(args.label, "--label"),
                       task_kinds=parse_pairs(args.task_kind, "--task-kind", value="KIND"),
                       outputs=parse_pairs(args.task_output, "--task-output", value="OUTPUT"),
                       command=["fusekit", *getattr(args, "_argv", [])],
                       on_data=None if args.json else _print_data_report)


def _print_data_report(report) -> None:
    """How the data files were read, once, on stderr (``--json`` puts it in metrics.json instead)."""
    for line in report.lines():
        print(line, file=sys.stderr)


def _require(args: argparse.Namespace) -> None:
    missing = [flag for flag, value in (("PARTS", args.parts), ("--tasks", args.tasks), ("--data", args.data),
                                        ("-o", args.output)) if value is None]
    if missing:
        raise FusekitError(f"fuse needs {', '.join(missing)}, on the command line or in --config")


def run(args: argparse.Namespace) -> int:
    """Parse, fuse, print the per-task comparison (or one JSON document)."""
    from fusekit.fusion.fuse import fuse
    from fusekit.task_kinds import SCORE_LABEL

    _require(args)
    tasks = parse_tasks(args.tasks)
    options = options_from_args(args)
    use_threads(args, torch=True)
    result = fuse(args.parts, tasks, args.data, args.output, options)
    if result is None:
        return 0  # another process of a torchrun run (rank 0) writes and prints
    m = result.metrics
    if args.json:
        print_json({"out_dir": str(result.out_dir), "fused_onnx": str(Path(result.out_dir) / "fused.onnx"),
                    "tasks": tasks, "mode": options.fusion.mode, "per_task": m["per_task"],
                    "mean_test_score": m["mean_test_score"], "epochs": m["epochs"], "best_epoch": m["best_epoch"],
                    "device": m["device"], "rows": m["rows"], "total_seconds": m["total_seconds"],
                    "onnx_parity_max_abs_diff": m["onnx_parity_max_abs_diff"]})
        return 0
    if m.get("data", {}).get("reading"):
        print(f"data: training rows {m['data']['reading']['train']}", file=sys.stderr)
        if "eval" in m["data"]["reading"]:
            print(f"data: validation and test {m['data']['reading']['eval']}", file=sys.stderr)
    print(f"fused {len(tasks)} tasks ({options.fusion.mode} mode) on {m['device']} in {m['total_seconds']:.0f} s, "
          f"{m['epochs']} epochs (best {m['best_epoch']}), trained on {m['rows']['train']} rows "
          f"({m['rows']['train_source']})")
    print(f"{'task':<16}{'metric':<10}{'fused':>9}{'average':>9}{'gain':>10}  sources (test)")
    for row in result.rows:
        sources = "  ".join(f"{name} {score:.5f}" for name, score in row["sources"].items())
        print(f"{row['task']:<16}{SCORE_LABEL[row['score']]:<10}{row['fused']:>9.5f}{row['average']:>9.5f}"
              f"{round(row['fused'] - row['average'], 5) + 0.0:>+10.5f}  {sources}")  # + 0.0: no "-0.00000"
    for task, entry in m["per_task"].items():
        if entry.get("restored_average"):
            print(f"{task}: the trained fusion scored below the sources' average on validation "
                  f"({entry['trained_val_score']:.5f} < {entry['average_val_score']:.5f}); fused.onnx gives their "
                  "plain average for this task")
        elif entry.get("below_average_on_validation"):
            print(f"warning: {task} scores below the sources' average on validation ({entry['val_score']:.5f} < "
                  f"{entry['average_val_score']:.5f})", file=sys.stderr)
    print(f"wrote {result.out_dir}/fused.onnx (onnxruntime matches torch to {m['onnx_parity_max_abs_diff']:.1e})")
    return 0
