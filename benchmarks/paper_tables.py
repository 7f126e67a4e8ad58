"""Reproduce the EMM paper's Census-Income tables with fusekit (the README's figures).

    python benchmarks/paper_tables.py                 # 3 seeds, full budget: Table I, II, three tasks
    python benchmarks/paper_tables.py --seeds 5 -o benchmarks/results/census --force
    python benchmarks/paper_tables.py --quick         # smoke run in a few minutes

Same as ``fusekit bench census-income``; writes results.json, tables.md and auc.png. One torch
thread per process keeps the numbers repeatable (and the machine shareable).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusekit.bench import run_bench  # noqa: E402
from fusekit.threads import apply_threads  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads (default 1: batches run side by side)")
    parser.add_argument("-o", "--output", type=Path, default=Path(__file__).resolve().parent / "results" / "census")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args()
    apply_threads(args.threads, torch=True)
    result = run_bench("census-income", ["income", "never_married"], args.seeds, args.quick, args.output,
                       three_tasks=["income", "never_married", "education"], force=args.force)
    print((result.out_dir / "tables.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
