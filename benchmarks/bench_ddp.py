"""One process against two (torchrun, gloo): training rows per second and the final metrics of fuse.

Runs ``fusekit fuse`` on the bundled census2 pool (decomposed once) and the Census-Income data,
with the same global batch, seed, epochs and ``--threads 1`` per process, in fresh processes:

- one process: ``python -m fusekit fuse ...``;
- two processes: ``python -m torch.distributed.run --standalone --nproc-per-node 2 -m fusekit fuse ...``
  (gloo; each process trains on its half of every batch, DDP averages the gradients).

The two settings take turns within each repetition (the order rotates), so a busy spell of a
shared machine hits both. Rows per second are the training rows times the epochs over the
epoch seconds that fit records in metrics.json (an epoch's time includes rank 0's validation;
start-up, export and plots are left out). Prints each setting's median rows/s, the ratio of
the medians and of the per-repetition pairs, and each setting's final validation and test
scores with their largest difference.

    FUSEKIT_DATA_DIR=/work/shared/data .venv/bin/python benchmarks/bench_ddp.py [--repeats 3] [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusekit.decompose.pipeline import decompose  # noqa: E402
from fusekit.sample_models import sample_pool  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SETTINGS = {
    "1 process": [sys.executable, "-m", "fusekit"],
    "2 processes": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                    "-m", "fusekit"],
}


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def fuse_run(setting: str, parts: Path, tasks: dict[str, list[str]], out: Path, args: argparse.Namespace) -> dict:
    """One ``fusekit fuse`` run; its metrics.json."""
    argv = ["fuse", str(parts), "--tasks", *[f"{t}={','.join(m)}" for t, m in tasks.items()],
            "--data", "census-income", "-o", str(out), "--epochs", str(args.epochs), "--patience", str(args.epochs),
            "--batch-size", str(args.batch_size), "--threads", "1", "--device", "cpu", "--force", "--quiet",
            *(["--max-rows", str(args.max_rows)] if args.max_rows else [])]
    done = subprocess.run(SETTINGS[setting] + argv, env=_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fuse failed ({setting}): {done.stderr.strip()[-3000:]}")
    return json.loads((out / "metrics.json").read_text())


def rows_per_second(metrics: dict) -> float:
    seconds = sum(record["seconds"] for record in metrics["history"])
    return metrics["rows"]["train"] * len(metrics["history"]) / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=512, help="the global batch (default %(default)s)")
    parser.add_argument("--max-rows", type=int, default=None, help="rows of each split (default: all)")
    parser.add_argument("--pool", default="census2")
    args = parser.parse_args()
    pool = sample_pool(args.pool)
    work = Path(tempfile.mkdtemp(prefix="bench_ddp-"))
    decompose(pool.paths, work / "parts")
    names = list(SETTINGS)
    speed: dict[str, list[float]] = {name: [] for name in names}
    last: dict[str, dict] = {}
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            metrics = fuse_run(name, work / "parts", pool.models, work / name.replace(" ", "-"), args)
            speed[name].append(rows_per_second(metrics))
            last[name] = metrics
            print(f"repetition {rep + 1}: {name}: {speed[name][-1]:,.0f} rows/s "
                  f"(processes recorded: {metrics.get('processes')})", file=sys.stderr, flush=True)
    one, two = last[names[0]], last[names[1]]
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; {args.repeats} repetitions of "
          f"a {args.epochs}-epoch fuse on {args.pool}, {one['rows']['train']:,} training rows, global batch "
          f"{args.batch_size}, --threads 1 per process")
    print(f"{'setting':<14}{'median rows/s':>15}{'min':>10}{'max':>10}")
    for name in names:
        values = speed[name]
        print(f"{name:<14}{statistics.median(values):>15,.0f}{min(values):>10,.0f}{max(values):>10,.0f}")
    pairs = [b / a for a, b in zip(speed[names[0]], speed[names[1]])]
    print(f"2 processes / 1 process: median ratio {statistics.median(speed[names[1]]) / statistics.median(speed[names[0]]):.2f} "
          f"(per repetition {min(pairs):.2f}-{max(pairs):.2f})")
    print(f"{'task':<16}{'val 1 proc':>12}{'val 2 proc':>12}{'test 1 proc':>13}{'test 2 proc':>13}")
    worst = 0.0
    for task in one["per_task"]:
        a, b = one["per_task"][task], two["per_task"][task]
        worst = max(worst, abs(a["val_score"] - b["val_score"]), abs(a["test_score"] - b["test_score"]))
        print(f"{task:<16}{a['val_score']:>12.6f}{b['val_score']:>12.6f}{a['test_score']:>13.6f}{b['test_score']:>13.6f}")
    print(f"largest score difference, 1 vs 2 processes: {worst:.2e}; best epochs {one['best_epoch']} and "
          f"{two['best_epoch']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
