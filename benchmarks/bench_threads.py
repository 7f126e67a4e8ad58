"""Seconds per fuse epoch with one thread, with fusekit's default thread count, and with torch's own.

Runs ``fusekit fuse`` on the bundled census2 pool (decomposed once) for one epoch, in fresh
processes with OMP_NUM_THREADS and LOCAL_WORLD_SIZE unset, under three settings:

- ``--threads 1``;
- fusekit's default (``fusekit.threads``: the cores this process may use, shared among the
  processes of a distributed run);
- torch's own default: fusekit sets no thread count at all (its thread rule is switched off in
  that process), so torch and onnxruntime choose for themselves.

The settings take turns within each repetition (the order rotates), so a busy spell of a shared
machine hits all of them; the epoch time is the one fit records in metrics.json. Prints each
setting's median and range, and the ratios of the medians and of the per-repetition pairs.

    .venv/bin/python benchmarks/bench_threads.py [--repeats 5] [--epochs 1] [--data-dir DIR]
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

# The child: the fusekit command line, with fusekit's thread rule switched off for "torch".
CHILD = """
import sys
if sys.argv[1] == "torch":
    import fusekit.threads as threads
    threads.apply_threads = lambda threads=None, torch=None: 0  # torch keeps its own count
    threads.thread_count = lambda threads=None: 0  # onnxruntime's own default (0: it decides)
from fusekit.cli.main import main
sys.exit(main(sys.argv[2:]))
"""

SETTINGS = {"--threads 1": ["--threads", "1"], "fusekit default": [], "torch default": []}


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def torch_default_threads() -> int:
    """torch's thread count in a fresh process with OMP_NUM_THREADS unset."""
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"], env=_env(),
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip())


def fuse_epoch(parts: Path, tasks: dict[str, list[str]], out: Path, setting: str, epochs: int,
               data_dir: Path | None) -> tuple[float, object]:
    """Mean seconds per epoch of one ``fusekit fuse`` run, and the thread count its run record names."""
    argv = ["fuse", str(parts), "--tasks", *[f"{t}={','.join(m)}" for t, m in tasks.items()],
            "--data", "census-income", "-o", str(out), "--epochs", str(epochs), "--force", "--quiet",
            *SETTINGS[setting], *(["--data-dir", str(data_dir)] if data_dir else [])]
    mode = "torch" if setting == "torch default" else "fusekit"
    done = subprocess.run([sys.executable, "-c", CHILD, mode, *argv], env=_env(), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fuse failed ({setting}): {done.stderr.strip()}")
    metrics = json.loads((out / "metrics.json").read_text())
    seconds = [record["seconds"] for record in metrics["history"]]
    return statistics.mean(seconds), metrics["run"].get("threads")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--pool", default="census2")
    parser.add_argument("--data-dir", type=Path)
    args = parser.parse_args()
    pool = sample_pool(args.pool)
    work = Path(tempfile.mkdtemp(prefix="bench_threads-"))
    decompose(pool.paths, work / "parts")
    names = list(SETTINGS)
    times: dict[str, list[float]] = {name: [] for name in names}
    counts: dict[str, object] = {}
    for rep in range(args.repeats):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            seconds, counts[name] = fuse_epoch(work / "parts", pool.models, work / "out", name, args.epochs,
                                               args.data_dir)
            times[name].append(seconds)
            print(f"repetition {rep + 1}: {name}: {seconds:.2f} s per epoch", file=sys.stderr, flush=True)
    counts["torch default"] = f"{torch_default_threads()} (torch's own)"
    print(f"{os.cpu_count()} cores, {len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else '?'} "
          f"usable; {args.repeats} repetitions of a {args.epochs}-epoch fuse on {args.pool}")
    print(f"{'setting':<18}{'threads':>20}{'median s/epoch':>16}{'min':>8}{'max':>8}")
    for name in names:
        values = times[name]
        print(f"{name:<18}{str(counts[name]):>20}{statistics.median(values):>16.2f}{min(values):>8.2f}"
              f"{max(values):>8.2f}")
    base = times["--threads 1"]
    for name in names[1:]:
        pairs = [t / b for t, b in zip(times[name], base)]
        print(f"{name} / --threads 1: median ratio {statistics.median(times[name]) / statistics.median(base):.2f} "
              f"(per repetition {min(pairs):.2f}-{max(pairs):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
