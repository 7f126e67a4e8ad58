"""``fusekit fuse PARTS/ --tasks t1=A,B t2=C,D --data census-income -o OUT/``."""
from __future__ import annotations

import argparse
from pathlib import Path

from fusekit.errors import FusekitError


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


def parse_labels(items: list[str] | None) -> dict[str, str] | None:
    """``["income=y"]`` -> ``{"income": "y"}``."""
    if not items:
        return None
    labels = {}
    for item in items:
        task, sep, column = item.partition("=")
        if not sep or not task or not column:
            raise FusekitError(f"cannot read --label {item!r}; write task=column")
        labels[task] = column
    return labels


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``fuse`` command."""
    p = subparsers.add_parser("fuse", help="train the AKF fusion network over decomposed parts and export fused.onnx",
                              description="Train the fusion network (EMM AKF) over frozen components and write "
                                          "OUT/fused.onnx, metrics.json, checkpoint, plots and gate statistics.")
    p.add_argument("parts", type=Path, help="directory written by `fusekit decompose`")
    p.add_argument("--tasks", nargs="+", required=True, metavar="TASK=M1,M2", help="models of each task")
    p.add_argument("--data", required=True, help="census-income, or a CSV/Parquet file")
    p.add_argument("--label", action="append", metavar="TASK=COLUMN", help="label column of a task in a CSV/Parquet file")
    p.add_argument("--data-dir", type=Path, help="folder holding the Census-Income files")
    p.add_argument("-o", "--output", type=Path, required=True, help="output directory")
    p.add_argument("--mode", choices=["residual", "paper"], default="residual",
                   help="residual (default): source paths and heads kept, fusion added as zero-initialised residuals; "
                        "paper: the EMM network with new towers")
    p.add_argument("--no-mtm", action="store_true", help="ablation: no fusion gate / Multi-Task Merge")
    p.add_argument("--from-scratch", action="store_true", help="ablation: same-structure components trained from scratch")
    p.add_argument("--no-tower", action="store_true", help="residual mode: no tower correction on the mixed heads")
    p.add_argument("--top-k", type=int, default=1, help="tasks each task's fusion gate selects (default 1)")
    p.add_argument("--fuse-at", choices=["auto", "last", "all"], default="auto",
                   help="levels that get an AKF module: last or all (default auto: last in residual mode, "
                        "all in paper mode)")
    p.add_argument("--finetune", choices=["none", "heads", "last", "all"], default="none",
                   help="also train these source weights: heads (residual mode), the last level and heads, or all "
                        "(default none: sources frozen, as in the paper)")
    p.add_argument("--finetune-lr", type=float, default=0.1, metavar="SCALE",
                   help="learning rate of fine-tuned source weights, as a fraction of --lr (default 0.1)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--weight-decay", type=float, default=1e-6)
    p.add_argument("--epochs", type=int, default=100, help="maximum epochs (early stopping on mean validation AUC)")
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--seed", type=int, default=0, help="seed of the fusion network and training")
    p.add_argument("--split-seed", type=int, default=0,
                   help="seed of the validation/test split of the data (use the one the source models used)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--train-rows", choices=["holdout", "all"], default="holdout",
                   help="holdout (default): train on the rows the source models did not see, when their feature "
                        "specification records a holdout; all: every training row")
    p.add_argument("--max-rows", type=int, help="use at most this many rows of each split (quick runs)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    p.add_argument("--force", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Parse, fuse, print the per-task comparison."""
    from fusekit.fusion.fuse import FuseOptions, fuse
    from fusekit.fusion.model import FusionOptions
    from fusekit.train import TrainConfig

    if args.top_k < 1:
        raise FusekitError(f"--top-k must be at least 1, got {args.top_k}")
    for name in ("lr", "batch_size", "epochs", "patience", "finetune_lr"):
        if getattr(args, name) <= 0:
            raise FusekitError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    tasks = parse_tasks(args.tasks)
    fusion = FusionOptions(mode=args.mode, use_mtm=not args.no_mtm, pretrained=not args.from_scratch,
                           top_k=args.top_k, seed=args.seed, tower=not args.no_tower,
                           finetune=args.finetune, finetune_lr=args.finetune_lr, fuse_at=args.fuse_at)
    training = TrainConfig(lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                           max_epochs=args.epochs, patience=args.patience, seed=args.seed, device=args.device,
                           progress=not args.quiet)
    options = FuseOptions(fusion=fusion, training=training, resume=args.resume, force=args.force,
                          labels=parse_labels(args.label), data_dir=args.data_dir, max_rows=args.max_rows,
                          split_seed=args.split_seed, train_rows=args.train_rows)
    result = fuse(args.parts, tasks, args.data, args.output, options)
    m = result.metrics
    print(f"fused {len(tasks)} tasks ({args.mode} mode) on {m['device']} in {m['total_seconds']:.0f} s, "
          f"{m['epochs']} epochs (best {m['best_epoch']}), trained on {m['rows']['train']} rows "
          f"({m['rows']['train_source']})")
    print(f"{'task':<16}{'fused':>9}{'average':>9}{'gain':>10}  sources (test AUC)")
    for row in result.rows:
        sources = "  ".join(f"{name} {auc:.5f}" for name, auc in row["sources"].items())
        print(f"{row['task']:<16}{row['fused']:>9.5f}{row['average']:>9.5f}{row['fused'] - row['average']:>+10.5f}  "
              f"{sources}")
    print(f"wrote {result.out_dir}/fused.onnx (onnxruntime matches torch to {m['onnx_parity_max_abs_diff']:.1e})")
    return 0
