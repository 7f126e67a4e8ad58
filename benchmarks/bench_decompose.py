"""Decompose time and peak memory for pairs of models of 100 to 100,000 nodes each.

The models are built directly with onnx.helper (a torch export of a 10,000-node model takes
minutes): chains of Linear(+ReLU) layers of random widths with residual blocks in between; the
second model of each pair has about 10% of its layers changed, so the common subsequence is
not trivial. Each size runs in fresh processes: one times the phases separately (and measures
the alignment's own peak allocation with tracemalloc), one runs the whole ``decompose`` and
reports its peak resident memory (``ru_maxrss``). Prints one table: node counts, layers,
common layers, time per phase, peak memory, and the growth of time and memory relative to the
growth of size (about 1 means linear).

    .venv/bin/python benchmarks/bench_decompose.py [--sizes 100 1000 10000] [--no-verify]
    .venv/bin/python benchmarks/bench_decompose.py --sizes 10000 50000 100000 --no-verify
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusekit.decompose.align import analyse, common_layers, layer_classes  # noqa: E402
from fusekit.decompose.pipeline import decompose  # noqa: E402
from fusekit.decompose.graph import load_graph  # noqa: E402

WIDTHS = (8, 12, 16)


def layer_plan(n_nodes: int, seed: int) -> list[tuple[str, int]]:
    """A list of ("linear", width) / ("residual", hidden) items giving about ``n_nodes`` nodes."""
    rng = np.random.default_rng(seed)
    plan, nodes = [], 0
    while nodes < n_nodes - 3:
        if rng.random() < 0.15:
            plan.append(("residual", int(rng.choice(WIDTHS))))
            nodes += 4
        else:
            plan.append(("linear", int(rng.choice(WIDTHS))))
            nodes += 2
    return plan


def mutate(plan: list[tuple[str, int]], seed: int, fraction: float = 0.1) -> list[tuple[str, int]]:
    """Change the width of about ``fraction`` of the items."""
    rng = np.random.default_rng(seed)
    out = list(plan)
    for k in rng.choice(len(out), size=max(1, int(len(out) * fraction)), replace=False):
        kind, width = out[k]
        out[k] = (kind, int(rng.choice([w for w in WIDTHS if w != width])))
    return out


def build(plan: list[tuple[str, int]], path: Path, seed: int, n_in: int = 16) -> int:
    """Write the ONNX model of ``plan``; returns its node count."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, width = "input", n_in

    def linear(src: str, n_from: int, n_to: int, tag: str) -> str:
        w = numpy_helper.from_array((rng.standard_normal((n_to, n_from)) / np.sqrt(n_from)).astype(np.float32),
                                    f"{tag}_w")
        b = numpy_helper.from_array((rng.standard_normal(n_to) * 0.1).astype(np.float32), f"{tag}_b")
        inits.extend([w, b])
        nodes.append(helper.make_node("Gemm", [src, w.name, b.name], [f"{tag}_y"], transB=1))
        return f"{tag}_y"

    for k, (kind, size) in enumerate(plan):
        if kind == "linear":
            h = linear(x, width, size, f"l{k}")
            nodes.append(helper.make_node("Relu", [h], [f"l{k}_r"]))
            x, width = f"l{k}_r", size
        else:
            h = linear(x, width, size, f"r{k}a")
            nodes.append(helper.make_node("Relu", [h], [f"r{k}_r"]))
            h = linear(f"r{k}_r", size, width, f"r{k}b")
            nodes.append(helper.make_node("Add", [x, h], [f"r{k}_s"]))
            x = f"r{k}_s"
    y = linear(x, width, 1, "out")
    graph = helper.make_graph(nodes, "bench", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n_in])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["batch", 1])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return len(nodes)


def phases(a: Path, b: Path) -> dict:
    """Load, analysis and alignment of both models, timed one by one (in this process)."""
    gc.disable()  # as decompose does while it analyses
    t0 = time.perf_counter()
    graphs = [load_graph(a), load_graph(b)]
    t1 = time.perf_counter()
    analyses = [analyse(g) for g in graphs]
    t2 = time.perf_counter()
    classes = layer_classes([x.candidates for x in analyses])
    t3 = time.perf_counter()
    tracemalloc.start()
    index = common_layers(classes)
    align_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    t4 = time.perf_counter()
    gc.enable()
    return {"layers": sum(len(x.layers) for x in analyses), "common": len(index), "load": t1 - t0,
            "analyse": t2 - t1, "align": t3 - t2 + (t4 - t3), "align_peak": align_peak}


def whole(a: Path, b: Path, out: Path, verify: bool) -> dict:
    """The whole decompose (in this process)."""
    c0, t0 = time.process_time(), time.perf_counter()
    result = decompose([a, b], out, verify=verify)
    return {"decompose": time.perf_counter() - t0, "cpu": time.process_time() - c0, "levels": result.levels}


def _child(*args: str) -> dict:
    """Run this script's ``--child`` mode in a fresh process; its JSON line plus its peak RSS."""
    done = subprocess.run([sys.executable, __file__, "--child", *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def run(sizes: list[int], verify: bool) -> list[dict]:
    """Time and measure each size; returns one row per size."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for size in sizes:
            plan = layer_plan(size, seed=size)
            a, b = root / f"a{size}.onnx", root / f"b{size}.onnx"
            nodes = build(plan, a, seed=1) + build(mutate(plan, seed=2), b, seed=3)
            phase = _child("phases", str(a), str(b))
            full = _child("whole", str(a), str(b), str(root / f"parts{size}"), "verify" if verify else "no-verify")
            rows.append({"size": size, "nodes": nodes, **phase, **full})
            for path in (a, b):
                path.unlink()
    return rows


def _mb(kilobytes: float) -> str:
    return f"{kilobytes / 1024:.0f} MB"


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        kind, a, b = sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4])
        out = phases(a, b) if kind == "phases" else whole(a, b, Path(sys.argv[5]), sys.argv[6] == "verify")
        out[f"{kind}_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
        print(json.dumps(out))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--no-verify", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the children compute with one thread unless told otherwise
    rows = run(args.sizes, verify=not args.no_verify)
    print(f"{'pair':>6} {'nodes':>6} {'layers':>6} {'common':>6} {'load+check':>10} {'analyse':>8} {'align':>7} "
          f"{'align peak':>10} {'decompose':>10} {'(cpu)':>8} {'peak RSS':>9} {'x size':>7} {'x time':>7} "
          f"{'x RSS':>6}")
    for k, r in enumerate(rows):
        prev = rows[k - 1] if k else r
        print(f"{r['size']:>6} {r['nodes']:>6} {r['layers']:>6} {r['common']:>6} {r['load']:>9.3f}s "
              f"{r['analyse']:>7.3f}s {r['align']:>6.3f}s {r['align_peak'] / 2**20:>7.1f} MB {r['decompose']:>9.3f}s "
              f"{r['cpu']:>7.3f}s {_mb(r['whole_rss_kb']):>9} {r['nodes'] / prev['nodes']:>7.1f} "
              f"{r['cpu'] / prev['cpu']:>7.1f} {r['whole_rss_kb'] / prev['whole_rss_kb']:>6.1f}")
    print("decompose = the whole command (load, check, shape inference, analysis, alignment, writing the "
          f"components{', verification in onnxruntime' if not args.no_verify else ''}) in a fresh process; "
          "peak RSS is that process's ru_maxrss; load+check/analyse/align are the same phases timed separately in "
          "another process, and align peak is what the alignment itself allocates (tracemalloc); (cpu) is the "
          "process CPU time of decompose, less sensitive than wall time to other work on the machine, and x time "
          "compares it")


if __name__ == "__main__":
    main()
