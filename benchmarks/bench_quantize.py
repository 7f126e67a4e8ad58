"""What dynamic int8 quantisation saves and costs on fused models of the bundled pools.

For each pool: decompose, fuse with a small budget (or take ``--fused``), then export with
``fusekit.deploy.raw_inputs.export_model``: the float model, the int8 one (``--quantize dynamic``)
and both with raw-column inputs. Measured in one run, onnxruntime pinned to one thread:

- file size;
- latency at batch 1 and throughput at batch 4096: median over ``--blocks`` alternating blocks
  of consecutive calls (each model runs warm; drift of the machine's load falls on all alike),
  with the spread of the block medians (min-max);
- every task's test AUC on the Census-Income test split (49,881 rows) run at batch 4096 and at
  batch 1 (dynamic quantisation takes one activation range per batch, so the result depends on
  the batch), for fusekit's quantisation and for onnxruntime's default of quantising every layer.

    .venv/bin/python benchmarks/bench_quantize.py [--pools census2,census3] [--epochs 2]
        [--data-dir ../shared/data] [--out benchmarks/results/quantize]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusekit.data import load_dataset  # noqa: E402
from fusekit.data.census import read_census  # noqa: E402
from fusekit.decompose.pipeline import decompose  # noqa: E402
from fusekit.deploy.quantize import quantize_model  # noqa: E402
from fusekit.deploy.raw_inputs import export_model, raw_feeds  # noqa: E402
from fusekit.fusion.fuse import FuseOptions, fuse  # noqa: E402
from fusekit.metrics import roc_auc  # noqa: E402
from fusekit.onnxio.sessions import session  # noqa: E402
from fusekit.sample_models import sample_pool  # noqa: E402
from fusekit.train import TrainConfig  # noqa: E402


def block_times(fns: dict, calls: int, blocks: int, warmup: int = 3) -> dict[str, list[float]]:
    """Per function, the median seconds of each of ``blocks`` blocks of ``calls`` consecutive calls;
    the blocks of the functions alternate."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            for _ in range(warmup):
                fn()
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            out[name].append(statistics.median(times))
    return out


def predictions(sess, feeds: dict[str, np.ndarray], batch: int) -> list[np.ndarray]:
    n = len(next(iter(feeds.values())))
    chunks = [sess.run(None, {k: v[i:i + batch] for k, v in feeds.items()}) for i in range(0, n, batch)]
    return [np.concatenate(c) for c in zip(*chunks)]


def fused_model(pool_name: str, work: Path, epochs: int, data_dir: Path | None) -> Path:
    pool = sample_pool(pool_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decompose(pool.paths, work / "parts")
        fuse(work / "parts", pool.models, "census-income", work / "fused",
             FuseOptions(training=TrainConfig(max_epochs=epochs, device="cpu", progress=False), data_dir=data_dir))
    return work / "fused" / "fused.onnx"


def bench_pool(pool_name: str, fused: Path, work: Path, args) -> dict:
    pool = sample_pool(pool_name)
    files = {"float": fused}
    files["int8"] = export_model(fused, work / "int8.onnx", raw_inputs=False, quantize="dynamic").path
    raw_float = export_model(fused, work / "raw_float.onnx")
    files["raw float"] = raw_float.path
    files["raw int8"] = export_model(fused, work / "raw_int8.onnx", quantize="dynamic").path
    everything = quantize_model(onnx.load(str(fused)), first_layers_float=False)
    (work / "int8_all.onnx").write_bytes(everything.SerializeToString())
    files["int8, every layer"] = work / "int8_all.onnx"

    ds = load_dataset("census-income", pool.tasks, data_dir=args.data_dir)
    encoded = {"categorical": ds.test.cat, "dense": ds.test.dense}
    raw_rows = read_census(args.data_dir)[1].head(4096)
    raw = raw_feeds(raw_rows, raw_float.raw_inputs)
    sessions = {name: session(path, "cpu", threads=1)[0] for name, path in files.items()}
    feeds = {name: (raw if name.startswith("raw") else encoded) for name in files}
    one = {name: {k: v[:1] for k, v in feeds[name].items()} for name in files}
    big = {name: {k: v[:4096] for k, v in feeds[name].items()} for name in files}
    timed = [n for n in files if n != "int8, every layer"]
    lat = block_times({n: (lambda n=n: sessions[n].run(None, one[n])) for n in timed}, args.calls, args.blocks)
    thr = block_times({n: (lambda n=n: sessions[n].run(None, big[n])) for n in timed}, args.big_calls, args.blocks)

    tasks = [o.name for o in sessions["float"].get_outputs()]
    auc: dict[str, dict] = {}
    for name in ("float", "int8", "int8, every layer"):
        auc[name] = {}
        for batch in (4096, 1):
            probs = predictions(sessions[name], encoded, batch)
            auc[name][batch] = {t: roc_auc(ds.test.labels[t], p.reshape(-1)) for t, p in zip(tasks, probs)}
    rows = []
    for name in files:
        row = {"model": name, "bytes": os.path.getsize(files[name])}
        if name in lat:
            row.update(latency_ms=1e3 * statistics.median(lat[name]), latency_spread=[1e3 * min(lat[name]), 1e3 * max(lat[name])],
                       rows_per_s=4096 / statistics.median(thr[name]),
                       throughput_spread=[4096 / max(thr[name]), 4096 / min(thr[name])])
        rows.append(row)
    return {"pool": pool_name, "tasks": tasks, "rows": rows, "auc": auc, "test_rows": len(ds.test)}


def table(result: dict) -> str:
    base = {r["model"]: r for r in result["rows"]}["float"]
    lines = [f"### {result['pool']} (fused, tasks {', '.join(result['tasks'])})", "",
             "| model | file | latency batch 1 | throughput batch 4096 |", "|---|---|---|---|"]
    for r in result["rows"]:
        if "latency_ms" not in r:
            continue
        lines.append(f"| {r['model']} | {r['bytes'] / 1e3:.0f} kB ({r['bytes'] / base['bytes']:.2f}x) | "
                     f"{r['latency_ms']:.3f} ms ({r['latency_ms'] / base['latency_ms']:.2f}x; "
                     f"{r['latency_spread'][0]:.3f}-{r['latency_spread'][1]:.3f}) | "
                     f"{r['rows_per_s'] / 1e3:.0f}k rows/s ({r['rows_per_s'] / base['rows_per_s']:.2f}x; "
                     f"{r['throughput_spread'][0] / 1e3:.0f}k-{r['throughput_spread'][1] / 1e3:.0f}k) |")
    lines += ["", "| test AUC change vs float | " + " | ".join(f"{t} (batch 4096 / batch 1)" for t in result["tasks"]) + " |",
              "|---|" + "---|" * len(result["tasks"])]
    float_auc = result["auc"]["float"]
    for name in ("int8", "int8, every layer"):
        cells = [f"{result['auc'][name][4096][t] - float_auc[4096][t]:+.5f} / {result['auc'][name][1][t] - float_auc[1][t]:+.5f}"
                 for t in result["tasks"]]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| (float AUC) | " + " | ".join(f"{float_auc[4096][t]:.5f}" for t in result["tasks"]) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", default="census2,census3")
    parser.add_argument("--epochs", type=int, default=2, help="fusion epochs (speed and the int8 change hardly depend on it)")
    parser.add_argument("--fused", type=Path, default=None, help="use this fused model (one pool only)")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--calls", type=int, default=300, help="batch-1 calls per block")
    parser.add_argument("--big-calls", type=int, default=5, help="batch-4096 calls per block")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--out", type=Path, default=None, help="write results.json and tables.md here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = []
    with tempfile.TemporaryDirectory(prefix="fusekit-bench-quantize-") as tmp:
        for pool_name in args.pools.split(","):
            work = Path(tmp) / pool_name
            work.mkdir()
            fused = args.fused or fused_model(pool_name, work, args.epochs, args.data_dir)
            result = bench_pool(pool_name, fused, work, args)
            results.append(result)
            print(table(result) + "\n", flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=1))
        (args.out / "tables.md").write_text("\n\n".join(table(r) for r in results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
