"""Census-Income loading speed and `train-single` training throughput.

1. Load + verify + parse + encode the full Census-Income set (299,285 rows), cold (the in-process
   parse cache cleared before every repeat); the goal is at most 10 s, reported as a ratio.
2. Training throughput of the sample pool's architecture "a" (64-32-16, BatchNorm, batch 1024)
   over the 159,618 source rows, in rows per second (epoch time includes the validation pass),
   for 1 and 2 torch threads.

    .venv/bin/python benchmarks/bench_data.py [--data-dir ../shared/data/census-income-kdd] [--repeats 3] [--epochs 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusekit.data import census, load_dataset  # noqa: E402
from fusekit.models.single import Architecture, train_on_dataset  # noqa: E402
from fusekit.threads import apply_threads  # noqa: E402
from fusekit.train import TrainConfig  # noqa: E402

LOAD_GOAL_SECONDS = 10.0


def bench_load(data_dir: Path | None, repeats: int) -> dict:
    """Cold load+encode times of the full set."""
    times = []
    for _ in range(repeats):
        census._PARSED.clear()
        began = time.perf_counter()
        ds = load_dataset("census-income", ["income", "never_married"], data_dir=data_dir)
        times.append(time.perf_counter() - began)
    rows = len(ds.train) + len(ds.val) + len(ds.test)
    median = statistics.median(times)
    began = time.perf_counter()
    load_dataset("census-income", ["income", "never_married"], data_dir=data_dir)
    warm = time.perf_counter() - began
    return {"benchmark": "census_load_encode", "rows": rows, "seconds_median": round(median, 3),
            "seconds_all": [round(t, 3) for t in times], "goal_seconds": LOAD_GOAL_SECONDS,
            "ratio_to_goal": round(median / LOAD_GOAL_SECONDS, 3), "rows_per_second": round(rows / median),
            "warm_reload_seconds": round(warm, 3)}


def bench_train(data_dir: Path | None, epochs: int, threads: int) -> dict:
    """Rows per second of train-single's training loop."""
    apply_threads(threads, torch=True)
    ds = load_dataset("census-income", ["income", "never_married"], data_dir=data_dir, holdout=0.2)
    arch = Architecture(hidden=[64, 32, 16], emb_dim=4, batch_norm=True)
    config = TrainConfig(max_epochs=epochs, patience=epochs, seed=0, device="cpu", progress=False,
                         threads=threads)
    _, result, _, n_rows = train_on_dataset(ds, "income", arch, config)
    seconds = sum(r.seconds for r in result.history)
    return {"benchmark": "train_single_throughput", "threads": threads, "rows": n_rows, "epochs": len(result.history),
            "seconds": round(seconds, 2), "rows_per_second": round(n_rows * len(result.history) / seconds)}


def main(argv: list[str] | None = None) -> int:
    """Run both benchmarks and print one JSON line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(bench_load(args.data_dir, args.repeats)), flush=True)
    for threads in (1, 2):
        print(json.dumps(bench_train(args.data_dir, args.epochs, threads)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
