"""Serving cost of fused.onnx against its sources run one after the other, for bench_pools' pools.

Builds the pools of ``bench_pools.py`` (mixed: binary + 5-class + regression; foreign: torch
models with one input per feature) on a small training budget, decomposes them, exports the
*untrained* fused model of fuse's default options (serving cost does not depend on the weights)
and times it in onnxruntime, one thread, against the sources (one session each, run one after
the other) at batch 1, 256 and 4096: medians of alternating blocks, ratios from one run.

``--profile`` also writes, per pool, onnxruntime's per-op-type share of the fused graph's time
at batch 4096 (from the session profiler), and the op counts of the fused graph after
onnxruntime's own optimisations.

    OMP_NUM_THREADS=1 python benchmarks/bench_serving.py [--pools mixed,foreign] [--profile]
        [--work DIR]  # keep the models and fused files there (an empty or new folder)
"""
from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch and onnxruntime load

import argparse  # noqa: E402
import collections  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_fuse import _block_medians, op_type_us  # noqa: E402
from bench_pools import Budget, decompose_pool, foreign_pool, mixed_pool  # noqa: E402
from fusekit.fusion import fuse as fuse_steps  # noqa: E402
from fusekit.onnxio.sessions import session  # noqa: E402

BATCHES = (1, 256, 4096)


def build_and_export(name: str, work: Path, budget: Budget) -> tuple[Path, list[Path], object]:
    """The pool's source files, its untrained fused.onnx and its test rows."""
    build = {"mixed": mixed_pool, "foreign": foreign_pool}[name]
    pool = build(work, budget)
    parts, _ = decompose_pool(pool, work)
    plan = fuse_steps.prepare(parts, pool.tasks, pool.data, budget.fuse_options(0))
    model = fuse_steps.build(plan)
    fused = fuse_steps.export(plan, model, work / name / "fused.onnx").path
    names = [m for ms in pool.tasks.values() for m in ms]
    return fused, [pool.paths[m] for m in names], pool.data.test


def time_pool(fused: Path, sources: list[Path], test, repeats: int) -> dict:
    """Median seconds per call (wall and this thread's CPU time) of fused.onnx and of the sources
    run separately, per batch size, and their ratios."""
    fused_sess = session(fused, "cpu", threads=1)[0]
    source_sess = [session(p, "cpu", threads=1)[0] for p in sources]
    out = {}
    for batch in BATCHES:
        feeds = {k: np.ascontiguousarray(a) for k, a in test.head(batch).arrays().items()}
        calls = repeats if batch == 1 else max(20, repeats * 4 // batch)
        fns = [lambda: fused_sess.run(None, feeds), lambda: [x.run(None, feeds) for x in source_sess]]
        wall_f, wall_s = _block_medians(fns, calls)
        cpu_f, cpu_s = _block_medians(fns, calls, warmup=3, clock=time.thread_time)
        out[batch] = {"fused_ms": wall_f * 1e3, "sources_ms": wall_s * 1e3, "ratio": wall_f / wall_s,
                      "fused_cpu_ms": cpu_f * 1e3, "sources_cpu_ms": cpu_s * 1e3, "cpu_ratio": cpu_f / cpu_s}
    return out


def profile(model_path: Path, test, batch: int = 4096, calls: int = 30) -> dict:
    """Per op type: share of the node time at ``batch`` (onnxruntime's profiler) and node counts
    after onnxruntime's optimisations."""
    optimized_path = model_path.parent / "ort_optimized.onnx"
    per_op = op_type_us(model_path, lambda names: {k: np.ascontiguousarray(a) for k, a in
                                                   test.head(batch).arrays().items() if k in names},
                        calls, model_path.parent, optimized_path)
    total = sum(per_op.values()) or 1
    counts = collections.Counter(n.op_type for n in onnx.load(str(optimized_path)).graph.node)
    return {"share": {op: round(d / total, 3) for op, d in per_op.most_common()},
            "us_per_call": round(total, 1), "nodes": dict(counts.most_common()),
            "node_total": sum(counts.values())}


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="mixed,foreign")
    parser.add_argument("--repeats", type=int, default=1000, help="batch-1 calls per model (larger batches fewer)")
    parser.add_argument("--profile", action="store_true", help="per-op-type time shares of the fused graph")
    parser.add_argument("--work", type=Path, default=None, help="keep models and fused files here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    # Serving cost does not depend on how well the sources are trained: a small, seeded budget.
    budget = replace(Budget.quick(), rows=20000)
    with tempfile.TemporaryDirectory(prefix="bench_serving-") as tmp:
        work = args.work or Path(tmp)
        report = {}
        for name in [p.strip() for p in args.pools.split(",") if p.strip()]:
            fused, sources, test = build_and_export(name, work, budget)
            report[name] = {"timing": time_pool(fused, sources, test, args.repeats)}
            if args.profile:
                report[name]["fused_profile"] = profile(fused, test)
                report[name]["sources_nodes"] = sum(len(onnx.load(p).graph.node) for p in sources)
            for batch, t in report[name]["timing"].items():
                print(f"{name:8s} batch {batch:5d}: wall fused {t['fused_ms']:8.3f} ms, sources {t['sources_ms']:8.3f} ms, "
                      f"ratio {t['ratio']:.2f}x; CPU fused {t['fused_cpu_ms']:8.3f} ms, sources "
                      f"{t['sources_cpu_ms']:8.3f} ms, ratio {t['cpu_ratio']:.2f}x", flush=True)
            if args.profile:
                print(json.dumps(report[name]["fused_profile"], indent=1), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
