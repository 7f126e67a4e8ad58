"""Serving and training cost of fusing over feature maps and sequences, and over spliced parts: the digits pools.

The digits CNN and transformer pools (``fusekit.sample_models.make_digits``, two models per task,
made into ``--pools`` once and reused) and the digits EmbeddingBag pool
(``fusekit.sample_models.make_bags``, into ``--bags``; its bag parts are spliced into fused.onnx
as their own graphs) are decomposed with decompose's default levels and fused with default
options (AKF at the last level). Measured on one thread, in one run per pool:

* fused.onnx against the four source models run one after the other (one onnxruntime session
  each) on the same test rows, at batch 1 and batch 256: median seconds per call, timed in
  alternating blocks, and their ratio (goal: at most 1.2x);
* seconds per training epoch of the fusion network over the digits training split (1,078 rows),
  the median of ``--epochs`` epochs.

The fused file is the untrained model: training changes its weights, not its graph.

    OMP_NUM_THREADS=1 python benchmarks/bench_maps.py                 # ~4 min the first time (makes the pools)
    OMP_NUM_THREADS=1 python benchmarks/bench_maps.py --profile       # also the ops that cost most, per file

Writes ``--out``/results.json and prints a table.
"""
from __future__ import annotations

import os

os.environ["OMP_NUM_THREADS"] = "1"  # before torch and onnxruntime load: every timing on one thread

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_fuse import _block_medians, op_type_us  # noqa: E402
from fusekit.data.dataset import Split, TabularDataset  # noqa: E402
from fusekit.decompose.pipeline import decompose  # noqa: E402
from fusekit.fusion.fuse import build, export, prepare, train  # noqa: E402
from fusekit.fusion.options import FuseOptions  # noqa: E402
from fusekit.io import atomic_file  # noqa: E402
from fusekit.onnxio.sessions import session  # noqa: E402
from fusekit.sample_models import make_bags as mb  # noqa: E402
from fusekit.sample_models import make_digits as md  # noqa: E402
from fusekit.threads import apply_threads  # noqa: E402
from fusekit.train_config import TrainConfig  # noqa: E402

POOLS = ("cnn", "transformer", "bags")
BATCHES = (1, 256)


def digits_dataset(folder: Path, inputs: tuple[str, ...]) -> TabularDataset:
    """The digits splits of ``folder``/data as the pool's models read them (``image``, ``rows``, ``ids`` + ``dense``)."""
    splits = [np.load(folder / "data" / f"{s}.npz") for s in ("train", "val", "test")]
    return TabularDataset(None, list(md.TASKS), *[Split({n: d[n] for n in inputs}, {t: d[t] for t in md.TASKS})
                                                  for d in splits])


def serving(fused: Path, sources: list[Path], x: dict[str, np.ndarray], repeats: int) -> dict:
    """Median seconds per call of fused.onnx and of the sources one after the other, per batch size."""
    fused_sess = session(fused, "cpu", threads=1, quiet=True)[0]
    source_sess = [session(p, "cpu", threads=1, quiet=True)[0] for p in sources]
    out = {}
    for batch in BATCHES:
        feeds = {n: np.ascontiguousarray(a[:batch]) for n, a in x.items()}
        calls = repeats if batch == 1 else max(20, repeats // 10)
        fused_s, sources_s = _block_medians([lambda f=feeds: fused_sess.run(None, f),
                                             lambda f=feeds: [s.run(None, f) for s in source_sess]], calls,
                                            clock=time.thread_time)  # one thread: its CPU time is the work
        out[f"batch{batch}"] = {"fused_s": fused_s, "sources_separately_s": sources_s,
                                "fused_over_sources": fused_s / sources_s}
    return out


def profile(path: Path, x: dict[str, np.ndarray], batch: int, calls: int = 50) -> list[tuple[str, float]]:
    """Microseconds per call spent in each op type (onnxruntime's profiler), most costly first."""
    return op_type_us(path, {n: np.ascontiguousarray(a[:batch]) for n, a in x.items()}, calls,
                      Path(tempfile.mkdtemp(prefix="bench_maps-prof-"))).most_common(8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=Path, default=None, help="folder of the digits pools (default: the data cache)")
    parser.add_argument("--bags", type=Path, default=None,
                        help="folder of the digits EmbeddingBag pool (default: digits-bags/ in the data cache)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "maps")
    parser.add_argument("--repeats", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs timed per pool")
    parser.add_argument("--profile", action="store_true", help="print the costliest op types of each file")
    args = parser.parse_args()
    apply_threads(1)
    folder = args.pools or md.digits_dir()
    md.make_digits(folder, kinds=[k for k in POOLS if k in md.KINDS])
    bags = args.bags or md.digits_dir().parent / "digits-bags"
    mb.make_bags(bags)
    work = Path(tempfile.mkdtemp(prefix="bench_maps-"))
    results: dict = {"threads": 1, "batches": list(BATCHES), "pools": {}}
    for kind in POOLS:
        pool, inputs = (bags, mb.INPUTS) if kind == "bags" else (folder / kind, (md.INPUT[kind],))
        sources = sorted(pool.glob("*.onnx"))
        decompose(sources, work / kind / "parts", verify=False)
        ds = digits_dataset(bags if kind == "bags" else folder, inputs)
        options = FuseOptions(training=TrainConfig(max_epochs=args.epochs, patience=args.epochs, progress=False,
                                                   device="cpu", threads=1))
        plan = prepare(work / kind / "parts", None, ds, options)
        model = build(plan).eval()
        fused = export(plan, model, work / kind / "fused.onnx").path
        x = {n: np.concatenate([ds.test.inputs[n]] * 2) for n in inputs}  # 718 rows: enough for batch 256 without reuse
        entry = {"sources": [p.name for p in sources], "levels": plan.parts.levels,
                 "boundaries": [b.shape for b in plan.parts.boundaries],
                 "fused_levels": [i + 1 for i in model.fused_levels],
                 **serving(fused, sources, x, args.repeats)}

        history = train(plan, build(plan)).history
        entry["epoch"] = {"rows": len(plan.train_rows), "epochs": len(history),
                          "seconds_median": statistics.median(h.seconds for h in history)}
        if args.profile:
            entry["profile_batch256_us"] = {"fused": profile(fused, x, 256), **{p.stem: profile(p, x, 256) for p in sources}}
        results["pools"][kind] = entry
        print(f"{kind}: done", file=sys.stderr, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    with atomic_file(args.out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=1) + "\n")
    print("| pool | boundaries | batch 1: fused vs sources | ratio | batch 256: fused vs sources | ratio | s / epoch |")
    print("|---|---|---|---|---|---|---|")
    for kind, e in results["pools"].items():
        b1, b256 = e["batch1"], e["batch256"]
        print(f"| {kind} | {', '.join(str(s) for s in e['boundaries'])} | {b1['fused_s'] * 1e3:.3f} vs "
              f"{b1['sources_separately_s'] * 1e3:.3f} ms | {b1['fused_over_sources']:.2f}x | {b256['fused_s'] * 1e3:.2f} vs "
              f"{b256['sources_separately_s'] * 1e3:.2f} ms | {b256['fused_over_sources']:.2f}x | "
              f"{e['epoch']['seconds_median']:.2f} ({e['epoch']['rows']} rows) |")
        for label, ops in e.get("profile_batch256_us", {}).items():
            print(f"  {kind} {label}: " + ", ".join(f"{op} {us:.0f} us" for op, us in ops))
    return 0


if __name__ == "__main__":
    sys.exit(main())
