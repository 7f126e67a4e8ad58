"""Decompose time for pairs of models of about 100, 1,000 and 10,000 nodes.

The models are built directly with onnx.helper (a torch export of a 10,000-node model takes
minutes): chains of Linear(+ReLU) layers of random widths with residual blocks in between; the
second model of each pair has about 10% of its layers changed, so the common subsequence is
not trivial. Prints one table: node counts, layers, common layers, time per phase, and the
growth of time relative to the growth of size (about 1 means linear).

    .venv/bin/python benchmarks/bench_decompose.py [--sizes 100 1000 10000] [--no-verify]
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
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


def run(sizes: list[int], verify: bool) -> list[dict]:
    """Time each phase for each size; returns one row per size."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for size in sizes:
            plan = layer_plan(size, seed=size)
            a, b = root / f"a{size}.onnx", root / f"b{size}.onnx"
            nodes = build(plan, a, seed=1) + build(mutate(plan, seed=2), b, seed=3)
            gc.disable()  # as decompose does while it analyses
            t0 = time.perf_counter()
            graphs = [load_graph(a), load_graph(b)]
            t1 = time.perf_counter()
            analyses = [analyse(g) for g in graphs]
            t2 = time.perf_counter()
            index = common_layers(layer_classes([x.candidates for x in analyses]))
            n_layers = sum(len(x.layers) for x in analyses)
            t3 = time.perf_counter()
            gc.enable()
            del graphs, analyses
            c3 = time.process_time()
            result = decompose([a, b], root / f"parts{size}", verify=verify)
            t4 = time.perf_counter()
            cpu = time.process_time() - c3
            rows.append({"size": size, "nodes": nodes, "layers": n_layers,
                         "common": len(index), "load": t1 - t0, "analyse": t2 - t1, "align": t3 - t2,
                         "decompose": t4 - t3, "cpu": cpu, "levels": result.levels})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--no-verify", action="store_true")
    args = parser.parse_args()
    rows = run(args.sizes, verify=not args.no_verify)
    print(f"{'pair':>6} {'nodes':>6} {'layers':>6} {'common':>6} {'load+check':>10} {'analyse':>8} {'align':>7} "
          f"{'decompose':>10} {'(cpu)':>8} {'x size':>7} {'x time':>7}")
    for k, r in enumerate(rows):
        grow_n = r["nodes"] / rows[k - 1]["nodes"] if k else 1.0
        grow_t = r["decompose"] / rows[k - 1]["decompose"] if k else 1.0
        print(f"{r['size']:>6} {r['nodes']:>6} {r['layers']:>6} {r['common']:>6} {r['load']:>9.3f}s "
              f"{r['analyse']:>7.3f}s {r['align']:>6.3f}s {r['decompose']:>9.3f}s {r['cpu']:>7.3f}s {grow_n:>7.1f} "
              f"{grow_t:>7.1f}")
    print("decompose = the whole command (load, check, shape inference, analysis, alignment, writing the "
          f"components{', verification in onnxruntime' if not args.no_verify else ''}); "
          "load+check/analyse/align are the same phases timed separately for both models; (cpu) is the process "
          "CPU time of decompose, less sensitive than wall time to other work on the machine")


if __name__ == "__main__":
    main()
