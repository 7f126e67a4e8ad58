"""Speed of the fused model: onnxruntime vs torch, fused vs the sources run separately, epoch time.

1. fused.onnx in onnxruntime vs the fused torch model, same inputs, same process: median
   latency at batch 1 and throughput (rows/s) at batch 4096. Goal: onnxruntime >= 2x faster at batch 1.
2. fused.onnx vs running every source model separately in onnxruntime (what serving the pool
   without fusion costs). Goal: the fusion network adds at most 20 %.
3. Seconds per training epoch of the fusion network on the full Census-Income training set
   (199,523 rows, batch 1024; the validation pass excluded).

Everything runs with one thread (torch and onnxruntime) so the ratios compare like with like.

    .venv/bin/python benchmarks/bench_fuse.py [--pool census2] [--fused OUT/fused.onnx]
        [--data-dir ../shared/data] [--mode residual] [--fuse-at auto|last|all] [--repeats 200]

Without ``--fused`` the (untrained) fusion network of ``--mode`` is exported: speed does not
depend on the trained weights.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusekit.data import load_dataset  # noqa: E402
from fusekit.decompose.manifest import Manifest  # noqa: E402
from fusekit.decompose.pipeline import decompose  # noqa: E402
from fusekit.fusion.export import export_fused  # noqa: E402
from fusekit.fusion.fuse import build_model  # noqa: E402
from fusekit.fusion.model import FusionOptions, DeployedOutputs  # noqa: E402
from fusekit.onnxio.sessions import session  # noqa: E402
from fusekit.sample_models import sample_pool  # noqa: E402
from fusekit.threads import apply_threads  # noqa: E402
from fusekit.train import TrainConfig, fit  # noqa: E402


def _block_medians(fns: list, repeats: int, blocks: int = 10, warmup: int = 5, clock=time.perf_counter) -> list[float]:
    """Median seconds of each function over ``repeats`` calls, made in ``blocks`` alternating
    runs of consecutive calls: each function runs warm, as when it serves alone, and slow
    drift of the machine's load falls on all of them alike (the ratios are what we report).

    ``clock=time.thread_time`` times this thread's CPU instead of the wall: with one onnxruntime
    thread the kernels run on the calling thread, so that is the call's work, and other processes
    on a busy machine do not enter it (wall times there were seen 9x off)."""
    times: list[list[float]] = [[] for _ in fns]
    per_block = max(1, repeats // blocks)
    for _ in range(blocks):
        for fn, record in zip(fns, times):
            for _ in range(warmup):
                fn()
            for _ in range(per_block):
                t0 = clock()
                fn()
                record.append(clock() - t0)
    return [statistics.median(t) for t in times]


def op_type_us(model_path: Path, feeds, calls: int, profile_dir: Path,
               optimized_path: Path | None = None) -> collections.Counter:
    """Microseconds per call spent in each op type of ``model_path`` on ``feeds`` (a dict, or a
    function of the session's input names giving one), from onnxruntime's profiler, one thread;
    ``optimized_path`` also keeps the graph onnxruntime ran."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(profile_dir) / "ort_profile")
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    if callable(feeds):
        feeds = feeds({i.name for i in sess.get_inputs()})
    for _ in range(calls):
        sess.run(None, feeds)
    per_op: collections.Counter = collections.Counter()
    for event in json.loads(Path(sess.end_profiling()).read_text()):
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / calls
    return per_op


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="census2", help="a bundled sample pool")
    parser.add_argument("--fused", type=Path, help="a trained fused.onnx of this pool (default: export one)")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--mode", default="residual", choices=["residual", "paper"])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--skip-epoch", action="store_true", help="skip the training-epoch measurement")
    parser.add_argument("--levels", default=None, help="decompose levels (default: decompose's default)")
    parser.add_argument("--fuse-at", default="auto", choices=["auto", "last", "all"],
                        help="levels with an AKF module (default auto: the last in residual mode)")
    args = parser.parse_args()
    apply_threads(1, torch=True)  # one thread: the ratios compare like with like

    work = Path(tempfile.mkdtemp(prefix="bench_fuse-"))
    pool = sample_pool(args.pool)
    sources = pool.paths
    levels = None if args.levels is None else (args.levels if args.levels == "all" else int(args.levels))
    decompose(sources, work / "parts", levels=levels)
    manifest = Manifest.load(work / "parts")
    tasks = manifest.task_groups()
    spec = manifest.feature_spec()
    ds = load_dataset("census-income", list(tasks), spec=spec, data_dir=args.data_dir)
    fusion = FusionOptions(mode=args.mode, fuse_at=args.fuse_at)
    model = build_model(manifest, tasks, fusion).eval()
    fused_path = args.fused or export_fused(model, work / "fused.onnx",
                                            (torch.as_tensor(ds.test.cat[:2]), torch.as_tensor(ds.test.dense[:2])))
    if args.fused:
        print("note: torch timings use an untrained network of the same structure as --fused")
    fused_sess, provider = session(fused_path, "cpu", threads=1)
    source_sess = [session(p, "cpu", threads=1)[0] for p in sources]
    wrapper = DeployedOutputs(model).eval()

    results: dict = {"pool": str(args.pool), "mode": args.mode, "fused_levels": [i + 1 for i in model.fused_levels],
                     "provider": provider, "tasks": tasks,
                     "trainable_parameters": sum(p.numel() for p in model.fusion_parameters())}
    for batch, repeats in ((1, args.repeats), (4096, max(5, args.repeats // 20))):
        cat, dense = ds.test.cat[:batch], ds.test.dense[:batch]
        feeds = {"categorical": cat, "dense": dense}
        tcat, tdense = torch.as_tensor(cat), torch.as_tensor(dense)

        def torch_call():
            with torch.inference_mode():
                wrapper(tcat, tdense)

        ort_s, torch_s, src_s = _block_medians(
            [lambda: fused_sess.run(None, feeds), torch_call, lambda: [s.run(None, feeds) for s in source_sess]], repeats)
        results[f"batch{batch}"] = {"onnxruntime_s": ort_s, "torch_s": torch_s, "sources_separately_s": src_s,
                                    "torch_over_onnxruntime": torch_s / ort_s,
                                    "fused_over_sources": ort_s / src_s,
                                    "onnxruntime_rows_per_s": batch / ort_s, "torch_rows_per_s": batch / torch_s}

    if not args.skip_epoch:
        train_model = build_model(manifest, tasks, fusion)
        history = fit(train_model, ds.train, ds.val.head(2048), list(tasks),
                      TrainConfig(max_epochs=1, progress=False, device="cpu")).history
        results["epoch"] = {"rows": len(ds.train), "seconds_with_small_val": history[0].seconds}

    b1, b4k = results["batch1"], results["batch4096"]
    print(json.dumps(results, indent=1))
    print(f"\nfused model, {len(sources)} source models, {len(tasks)} tasks, {args.mode} mode, AKF at level(s) "
          f"{results['fused_levels']}, one thread, {provider}")
    print(f"batch 1 latency: onnxruntime {b1['onnxruntime_s'] * 1e3:.3f} ms, torch {b1['torch_s'] * 1e3:.3f} ms "
          f"-> onnxruntime {b1['torch_over_onnxruntime']:.1f}x faster (goal >= 2x)")
    print(f"batch 4096 throughput: onnxruntime {b4k['onnxruntime_rows_per_s']:.0f} rows/s, torch "
          f"{b4k['torch_rows_per_s']:.0f} rows/s -> {b4k['torch_over_onnxruntime']:.1f}x")
    for name, b in (("batch 1", b1), ("batch 4096", b4k)):
        print(f"{name}: fused.onnx / sources run separately = {b['fused_over_sources']:.2f} "
              f"(+{(b['fused_over_sources'] - 1) * 100:.0f} %; goal <= +20 %)")
    if "epoch" in results:
        print(f"training epoch on the full training set ({results['epoch']['rows']} rows): "
              f"{results['epoch']['seconds_with_small_val']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
