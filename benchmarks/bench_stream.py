"""One fuse epoch on synthetic Census-Income Parquet files: streamed against held in memory.

Each run is fuse's steps (``prepare``, ``build``, ``train``) on the bundled census2 pool (decomposed
once) for one epoch over every training row (``train_rows="all"``), with fixed validation and test
files of 100,000 rows, on one thread, in a fresh process: its peak resident memory (``ru_maxrss``)
and the training rows per second of the epoch, by the wall clock and per CPU second of the process
(the epoch includes the validation pass; on a machine shared with other work the CPU figure is the
steadier one). The training files come from
``make_synthetic.py`` (made when missing). Ratios are taken against the in-memory run at the
smallest row count, measured in the same invocation.

    .venv/bin/python benchmarks/bench_stream.py --data /tmp/fusekit-synth --rows 1000000 5000000 \\
        --out benchmarks/results/stream
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

EVAL_ROWS = 100_000


def one_run(mode: str, train: Path, val: Path, test: Path, parts: Path, out: Path) -> dict:
    """fuse's steps for one epoch in this process (prepare, build, train; the export after them is the same
    for both paths and left out); what they measured."""
    import fusekit
    from fusekit.fusion.fuse import build, prepare
    from fusekit.fusion.fuse import train as train_step
    from fusekit.fusion.options import FuseOptions
    from fusekit.stream_config import StreamOptions
    from fusekit.train import TrainConfig

    pool = fusekit.sample_pool("census2")
    options = FuseOptions(training=TrainConfig(max_epochs=1, progress=False, device="cpu", threads=1),
                          train_rows="all", val=val, test=test,
                          streaming=StreamOptions(stream="always" if mode == "streamed" else "never"))
    began, cpu_began = time.perf_counter(), time.process_time()
    plan = prepare(parts, pool.models, train, options)
    model = build(plan)
    loaded, cpu_loaded = time.perf_counter(), time.process_time()
    result = train_step(plan, model)
    cpu_epoch = time.process_time() - cpu_loaded
    epoch = result.history[0]
    rows = len(plan.train_rows)
    return {"mode": mode, "train_rows": rows, "epoch_seconds": epoch.seconds,
            "rows_per_second": rows / epoch.seconds, "epoch_cpu_seconds": cpu_epoch,
            "rows_per_cpu_second": rows / cpu_epoch, "load_seconds": loaded - began,
            "load_cpu_seconds": cpu_loaded - cpu_began, "total_seconds": time.perf_counter() - began,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "reading": plan.reading.get("train", ""), "val_scores": dict(epoch.val_score)}


def one_pass(train: Path, val: Path, test: Path, parts: Path) -> dict:
    """fuse's ``prepare`` on a streamed file, then one shuffled pass over its batches without training
    (the memory of reading at a row count too large to train on here in the time)."""
    import fusekit
    from fusekit.fusion.fuse import prepare
    from fusekit.fusion.options import FuseOptions
    from fusekit.stream_config import StreamOptions
    from fusekit.train import TrainConfig

    pool = fusekit.sample_pool("census2")
    options = FuseOptions(training=TrainConfig(max_epochs=1, progress=False, device="cpu", threads=1),
                          train_rows="all", val=val, test=test, streaming=StreamOptions(stream="always"))
    began = time.perf_counter()
    plan = prepare(parts, pool.models, train, options)
    loaded, cpu_loaded = time.perf_counter(), time.process_time()
    rows = sum(len(labels[plan.task_names[0]]) for _, labels in plan.train_rows.batches(1024, seed=0, epoch=1))
    cpu = time.process_time() - cpu_loaded
    return {"mode": "streamed, one pass without training", "train_rows": rows, "pass_seconds": time.perf_counter() - loaded,
            "pass_rows_per_cpu_second": rows / cpu, "load_seconds": loaded - began,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_fresh(mode: str, train: Path, val: Path, test: Path, parts: Path, work: Path) -> dict:
    """:func:`one_run` in a new Python process (so that its peak memory is its own)."""
    result = work / f"{mode}-{train.stem}.json"
    command = [sys.executable, __file__, "--one", mode, str(train), str(val), str(test), str(parts),
               str(work / f"fused-{mode}-{train.stem}"), str(result)]  # the output folder is not written
    env = dict(os.environ, OMP_NUM_THREADS="1")
    subprocess.run(command, check=True, env=env)
    return json.loads(result.read_text())


def ensure_data(folder: Path, rows: list[int]) -> dict:
    from make_synthetic import write_synthetic

    paths = {"val": folder / "val.parquet", "test": folder / "test.parquet"}
    for seed, part in ((1, "val"), (2, "test")):
        if not paths[part].is_file():
            write_synthetic(EVAL_ROWS, paths[part], seed=seed)
    for n in rows:
        paths[n] = folder / f"train_{n}.parquet"
        if not paths[n].is_file():
            print(f"making {paths[n]}", file=sys.stderr, flush=True)
            write_synthetic(n, paths[n], seed=0)
    return paths


def table(runs: list[dict]) -> str:
    base = next(r for r in runs if r["mode"] == "in memory")
    lines = ["| training file rows | reading | peak RSS | RSS vs in memory | rows/s (epoch, wall) | vs in memory "
             "| rows per CPU second (epoch) | vs in memory | load (wall) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['file_rows']:,} | {r['mode']} | {r['peak_rss_mb']:,.0f} MB | "
                     f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}x | {r['rows_per_second']:,.0f} | "
                     f"{r['rows_per_second'] / base['rows_per_second']:.2f}x | {r['rows_per_cpu_second']:,.0f} | "
                     f"{r['rows_per_cpu_second'] / base['rows_per_cpu_second']:.2f}x | {r['load_seconds']:.0f} s |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--one":
        mode, train, val, test, parts, out, result = argv[1:]
        measured = one_pass(Path(train), Path(val), Path(test), Path(parts)) if mode == "pass" else \
            one_run(mode, Path(train), Path(val), Path(test), Path(parts), Path(out))
        Path(result).write_text(json.dumps(measured))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "fusekit-synth")
    parser.add_argument("--rows", type=int, nargs="*", default=[1_000_000, 5_000_000],
                        help="row counts of the fuse epochs (streamed; the smallest also in memory)")
    parser.add_argument("--memory-rows", type=int, nargs="*", default=None,
                        help="row counts also run in memory (default: the smallest)")
    parser.add_argument("--pass-rows", type=int, nargs="*", default=[],
                        help="row counts only read (prepare and one shuffled pass of the batches, no training)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stream")
    args = parser.parse_args(argv)
    import fusekit
    from fusekit.decompose import decompose

    paths = ensure_data(args.data, args.rows + args.pass_rows)
    memory_rows = args.memory_rows if args.memory_rows is not None else [min(args.rows)] if args.rows else []
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
        work = Path(tmp)
        decompose(fusekit.sample_pool("census2").paths, work / "parts")
        runs = []
        plan = [(n, "in memory") for n in sorted(memory_rows) if args.rows] + \
            [(n, "streamed") for n in sorted(args.rows)] + [(n, "pass") for n in sorted(args.pass_rows)]
        for n, mode in plan:
            print(f"fuse, one epoch: {n} rows {mode}", file=sys.stderr, flush=True)
            run = run_fresh({"in memory": "memory"}.get(mode, mode), paths[n], paths["val"], paths["test"],
                            work / "parts", work)
            run.update({"mode": run["mode"] if mode == "pass" else mode, "file_rows": n})
            runs.append(run)
            print(json.dumps(run), file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python benchmarks/bench_stream.py " + " ".join(argv)
    (args.out / "results.json").write_text(json.dumps({"command": command, "runs": runs}, indent=1))
    text = table([r for r in runs if "epoch_seconds" in r]) if args.rows else ""
    passes = [r for r in runs if "pass_seconds" in r]
    if passes:
        text += "\n\n| training file rows | reading | peak RSS | pass rows per CPU second | load (wall) |\n|---|---|---|---|---|\n"
        text += "\n".join(f"| {r['file_rows']:,} | {r['mode']} | {r['peak_rss_mb']:,.0f} MB | "
                          f"{r['pass_rows_per_cpu_second']:,.0f} | {r['load_seconds']:.0f} s |" for r in passes)
    (args.out / "tables.md").write_text(f"`{command}`\n\n{text}\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
