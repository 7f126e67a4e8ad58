"""The new pools of issue 10 on real Census-Income data: task kinds, and models fusekit did not make.

Two pools, each built here with fixed seeds, decomposed, fused with 3 seeds (default options,
one thread) and timed in onnxruntime:

* **mixed**: income (binary), education_level (multiclass, 5 classes) and weeks_worked
  (regression), two fusekit-trained single-task models per task ([64, 32, 16] and
  [64, 64, 32, 16], BatchNorm, so decompose finds their shared 64-, 32- and 16-wide layers),
  trained on the 80 % source rows of the training file; fuse trains on the other 20 %.
* **foreign**: plain torch models with one ONNX input per feature (int64 raw codes ``[B]`` per
  sparse feature, float32 raw values ``[B]`` per dense one, names with spaces), a logit ``[B, 1]``,
  no fusekit metadata; two per task (income, never_married) of different depth, one exported by
  ``torch.onnx`` with ``dynamo=False``, one with ``dynamo=True``; trained on a seeded 80 % of the
  training file, fused on the other 20 %.

Both pools use the standard protocol: the .test file split 50/50 (stratified on income, seed 0)
into validation (early stopping, the fallback check) and test (every figure reported).

Reported per task: each source's test score (AUC, accuracy or R²), the sources' plain average,
the fused model (mean ± sample SD over the fusion seeds: the spread is over fusion seeds only, on
one split, with the same source models) and how many seeds fell back to the average; and the
serving cost of fused.onnx against the sources run separately (one onnxruntime session each, run
one after the other), at batch 1 (median latency) and batch 4096 (throughput), as ratios
measured in one run (goal: at most 1.2x).

    OMP_NUM_THREADS=1 python benchmarks/bench_pools.py            # full budget (~15 min on 2 busy cores)
    OMP_NUM_THREADS=1 python benchmarks/bench_pools.py --quick    # smoke run (~2 min)

Results: ``--out``/results.json and tables.md (``results-quick.json``, ``tables-quick.md`` with ``--quick``),
and the tables on stdout.
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
import warnings  # noqa: E402
from dataclasses import asdict, dataclass, field, replace  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_fuse import _block_medians  # noqa: E402
from fusekit.data import load_dataset  # noqa: E402
from fusekit.data.census import read_census, task_labels  # noqa: E402
from fusekit.data.dataset import Split, TabularDataset  # noqa: E402
from fusekit.data.splits import stratified_halves  # noqa: E402
from fusekit.decompose.pipeline import decompose  # noqa: E402
from fusekit.fusion.fuse import fuse  # noqa: E402
from fusekit.fusion.options import FuseOptions, FusionOptions  # noqa: E402
from fusekit.io import atomic_file  # noqa: E402
from fusekit.models.architecture import Architecture  # noqa: E402
from fusekit.models.single import export_onnx, train_on_dataset  # noqa: E402
from fusekit.onnxio.sessions import run, session  # noqa: E402
from fusekit.task_kinds import SCORE_LABEL  # noqa: E402
from fusekit.train import fit  # noqa: E402
from fusekit.train_config import TrainConfig  # noqa: E402

MIXED_TASKS = ["income", "education_level", "weeks_worked"]
# Two members per task: different depth, the same layer types, so the pool shares its 64-, 32-
# and 16-wide layers (as the bundled census pools do).
MIXED_MEMBERS = {"a": (Architecture(hidden=[64, 32, 16], emb_dim=4, batch_norm=True), 0),
                 "b": (Architecture(hidden=[64, 64, 32, 16], emb_dim=4, batch_norm=True, dropout=0.1), 1)}
HOLDOUT, HOLDOUT_SEED = 0.2, 0

# The foreign pool's inputs: ONNX input name -> Census column. Codes that are numbers in the file
# stay those numbers; text columns get the foreign pipeline's own ids (most frequent first, 0 for
# a value the training file never had), which are not fusekit's encoding.
SPARSE = {"industry code": "det_ind_code", "occupation code": "det_occ_code", "education": "education",
          "class of worker": "class_worker", "sex": "sex", "household summary": "det_hh_summ",
          "tax filer status": "tax_filer_stat", "citizenship": "citizenship"}
NUMERIC_CODES = {"det_ind_code", "det_occ_code"}
DENSE = {"age": "age", "wage per hour": "wage_per_hour", "capital gains": "capital_gains",
         "capital losses": "capital_losses", "dividends from stocks": "stock_dividends",
         "weeks worked": "weeks_worked", "persons worked for employer": "num_emp"}
MONEY = {"wage per hour", "capital gains", "capital losses", "dividends from stocks"}  # log1p inside the model
FOREIGN_TASKS = {"income": ["income_legacy", "income_dynamo"],
                 "never_married": ["never_married_legacy", "never_married_dynamo"]}
FOREIGN_HIDDEN = {"legacy": [32, 16], "dynamo": [32, 32, 16]}  # different depth, shared 32- and 16-wide layers
FOREIGN_SOURCE_FRACTION, FOREIGN_SPLIT_SEED = 0.8, 0


@dataclass
class Budget:
    """How long everything trains and how long serving is timed."""

    source_epochs: int = 20
    source_patience: int = 3
    fuse_epochs: int = 30  # a cap on fuse's default (100); its patience stays the default
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    repeats: int = 2000  # batch-1 calls per timed model (batch 4096: a twentieth)
    rows: int | None = None  # quick runs: a seeded subsample of this many training rows (a quarter for val/test)

    @classmethod
    def quick(cls) -> "Budget":
        """A smoke run of about two minutes: tiny data, two epochs everywhere."""
        return cls(source_epochs=2, source_patience=1, fuse_epochs=2, seeds=[0], repeats=100, rows=8000)

    def source_config(self, seed: int) -> TrainConfig:
        """The training of one source model."""
        return TrainConfig(max_epochs=self.source_epochs, patience=self.source_patience, seed=seed, device="cpu",
                           progress=False)

    def fuse_options(self, seed: int) -> FuseOptions:
        """fuse's default options, with the epoch cap, for one fusion seed."""
        default = TrainConfig()
        return FuseOptions(fusion=FusionOptions(seed=seed),
                           training=replace(default, max_epochs=min(self.fuse_epochs, default.max_epochs), seed=seed,
                                            device="cpu", progress=False))


@dataclass
class Pool:
    """A built pool: its source files, the models of each task, the data fuse gets, and how the
    sources were made."""

    name: str
    paths: dict[str, Path]  # model name -> source ONNX file
    tasks: dict[str, list[str]]
    data: TabularDataset
    sources: dict[str, dict]  # model name -> how it was trained and exported
    seconds: float = 0.0


def _shrink(ds: TabularDataset, rows: int | None) -> TabularDataset:
    """Quick runs: seeded subsamples of every split (the holdout, if any, then falls inside them)."""
    if rows is None:
        return ds
    return TabularDataset(ds.spec, ds.tasks, ds.train.sample(rows, 1), ds.val.sample(rows // 4, 2),
                          ds.test.sample(rows // 4, 3), ds.kinds)


# -- (a) the mixed-kind pool -----------------------------------------------------------------------
def mixed_pool(work: Path, budget: Budget, data_dir: Path | None = None) -> Pool:
    """Train two fusekit single-task models per task of MIXED_TASKS on the source rows and export them."""
    began = time.perf_counter()
    ds = _shrink(load_dataset("census-income", MIXED_TASKS, data_dir=data_dir, seed=0, holdout=HOLDOUT,
                              holdout_seed=HOLDOUT_SEED), budget.rows)
    folder = work / "mixed" / "models"
    folder.mkdir(parents=True, exist_ok=True)
    paths, tasks, sources = {}, {}, {}
    for task in MIXED_TASKS:
        for member, (arch, seed) in MIXED_MEMBERS.items():
            name = f"{task}_{member}"
            t0 = time.perf_counter()
            model, result, _, n_rows = train_on_dataset(ds, task, arch, budget.source_config(seed))
            paths[name] = export_onnx(model, ds.spec, folder / f"{name}.onnx", ds.val)
            tasks.setdefault(task, []).append(name)
            sources[name] = {"hidden": list(arch.hidden), "seed": seed, "train_rows": n_rows,
                             "epochs": len(result.history), "best_epoch": result.best_epoch,
                             "parameters": sum(p.numel() for p in model.parameters()),
                             "seconds": round(time.perf_counter() - t0, 1), "exporter": "fusekit (torch.onnx dynamo)"}
            print(f"  mixed: {name} trained ({sources[name]['epochs']} epochs, {sources[name]['seconds']} s)",
                  file=sys.stderr, flush=True)
    return Pool("mixed", paths, tasks, ds, sources, time.perf_counter() - began)


# -- (b) the foreign pool --------------------------------------------------------------------------
class PerFeatureModel(nn.Module):
    """A model as another library would write it: one embedding per sparse input, the raw dense
    values scaled inside the model, an MLP and a logit ``[B, 1]``."""

    def __init__(self, cardinalities: list[int], hidden: list[int], seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.embeddings = nn.ModuleList(nn.Embedding(n, 4) for n in cardinalities)
        widths = [4 * len(cardinalities) + len(DENSE)] + list(hidden)
        self.mlp = nn.Sequential(*[m for a, b in zip(widths, widths[1:]) for m in (nn.Linear(a, b), nn.ReLU())])
        self.out = nn.Linear(widths[-1], 1)
        self.money = [name in MONEY for name in DENSE]

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        sparse, dense = inputs[:len(SPARSE)], inputs[len(SPARSE):]
        parts = [e(x) for e, x in zip(self.embeddings, sparse)]
        scaled = [torch.log1p(x) / 10.0 if money else x / 100.0 for x, money in zip(dense, self.money)]
        return self.out(self.mlp(torch.cat(parts + [torch.stack(scaled, dim=1)], dim=1)))


class _Trainable(nn.Module):
    """The view fusekit.train.fit trains: named inputs in, ``{task: logit [B]}`` out."""

    input_names = list(SPARSE) + list(DENSE)

    def __init__(self, model: PerFeatureModel, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.task: self.model(*inputs).squeeze(1)}


def _vocabularies(frame) -> dict[str, dict[str, int]]:
    """The foreign pipeline's ids of each text column: most frequent value first, from 1."""
    return {col: {v: i + 1 for i, v in enumerate(frame[col].value_counts(sort=True).index)}
            for col in SPARSE.values() if col not in NUMERIC_CODES}


def _foreign_arrays(frame, vocab: dict[str, dict[str, int]]) -> dict[str, np.ndarray]:
    arrays = {}
    for name, col in SPARSE.items():
        if col in NUMERIC_CODES:
            arrays[name] = frame[col].astype(np.int64).to_numpy()
        else:
            arrays[name] = frame[col].map(vocab[col]).fillna(0).astype(np.int64).to_numpy()
    arrays.update({name: np.array(frame[col], dtype=np.float32) for name, col in DENSE.items()})  # writable copies
    return arrays


def _foreign_split(frame, vocab) -> Split:
    return Split(_foreign_arrays(frame, vocab), {t: task_labels(frame, t) for t in FOREIGN_TASKS})


def _export_foreign(model: PerFeatureModel, path: Path, example: tuple[torch.Tensor, ...], dynamo: bool) -> Path:
    """torch.onnx as a user calls it, without fusekit's export path or metadata."""
    names = list(SPARSE) + list(DENSE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, example, str(path), input_names=names, output_names=["logit"], dynamo=True,
                              dynamic_shapes={"inputs": tuple({0: batch} for _ in names)}, verbose=False)
        else:
            torch.onnx.export(model, example, str(path), input_names=names, output_names=["logit"], dynamo=False,
                              dynamic_axes={n: {0: "batch"} for n in names + ["logit"]})
    return path


def foreign_pool(work: Path, budget: Budget, data_dir: Path | None = None) -> Pool:
    """Train the plain torch models on a seeded 80 % of the training file and export them; fuse
    gets the other 20 % as its training rows."""
    began = time.perf_counter()
    train_df, test_df = read_census(data_dir)
    vocab = _vocabularies(train_df)
    perm = np.random.default_rng(FOREIGN_SPLIT_SEED).permutation(len(train_df))
    n_source = round(FOREIGN_SOURCE_FRACTION * len(train_df))
    val_idx, test_idx = stratified_halves(task_labels(test_df, "income"), 0)
    source = _foreign_split(train_df.iloc[np.sort(perm[:n_source])], vocab)
    held = _foreign_split(train_df.iloc[np.sort(perm[n_source:])], vocab)
    val, test = (_foreign_split(test_df.iloc[i], vocab) for i in (val_idx, test_idx))
    if budget.rows is not None:
        source, held = source.sample(budget.rows, 4), held.sample(budget.rows // 4, 5)
        val, test = val.sample(budget.rows // 4, 2), test.sample(budget.rows // 4, 3)
    cards = [int(max(s.inputs[n].max() for s in (source, held, val, test))) + 1 for n in SPARSE]
    folder = work / "foreign" / "models"
    folder.mkdir(parents=True, exist_ok=True)
    paths, sources = {}, {}
    for t, (task, names) in enumerate(FOREIGN_TASKS.items()):
        for k, name in enumerate(names):
            exporter = name.rsplit("_", 1)[1]
            t0 = time.perf_counter()
            model = PerFeatureModel(cards, FOREIGN_HIDDEN[exporter], seed=10 * t + k)
            result = fit(_Trainable(model, task), source, val, [task], budget.source_config(10 * t + k))
            model.eval()
            example = tuple(torch.tensor(source.inputs[n][:4]) for n in _Trainable.input_names)
            paths[name] = _export_foreign(model, folder / f"{name}.onnx", example, dynamo=exporter == "dynamo")
            sources[name] = {"hidden": FOREIGN_HIDDEN[exporter], "seed": 10 * t + k, "train_rows": len(source),
                             "epochs": len(result.history), "best_epoch": result.best_epoch,
                             "parameters": sum(p.numel() for p in model.parameters()),
                             "seconds": round(time.perf_counter() - t0, 1),
                             "exporter": f"torch.onnx dynamo={exporter == 'dynamo'}"}
            print(f"  foreign: {name} trained ({sources[name]['epochs']} epochs, {sources[name]['seconds']} s)",
                  file=sys.stderr, flush=True)
    ds = TabularDataset(None, list(FOREIGN_TASKS), held, val, test)
    return Pool("foreign", paths, dict(FOREIGN_TASKS), ds, sources, time.perf_counter() - began)


# -- decompose, fuse, time -------------------------------------------------------------------------
def decompose_pool(pool: Pool, work: Path) -> tuple[Path, dict]:
    """Decompose the pool with decompose's defaults; the parts folder and what decompose found."""
    parts = work / pool.name / "parts"
    names = [m for ms in pool.tasks.values() for m in ms]
    found = decompose([pool.paths[m] for m in names], parts, names=names)
    return parts, {"common_layers": len(found.common), "levels": found.levels, "seconds": round(found.seconds, 2),
                   "layers_per_model": dict(zip(found.names, found.layer_counts))}


def fuse_seeds(pool: Pool, parts: Path, work: Path, budget: Budget) -> list[dict]:
    """fuse with each seed; per seed, per task what fuse reported (scores on the test rows)."""
    runs = []
    for seed in budget.seeds:
        t0 = time.perf_counter()
        result = fuse(parts, pool.tasks, pool.data, work / pool.name / f"fused-seed{seed}", budget.fuse_options(seed))
        metrics = result.metrics
        runs.append({"seed": seed, "epochs": metrics["epochs"], "best_epoch": metrics["best_epoch"],
                     "seconds": round(time.perf_counter() - t0, 1), "train_rows": metrics["rows"]["train"],
                     "trainable_parameters": metrics["trainable_parameters"],
                     "per_task": {t: {k: metrics["per_task"][t][k] for k in (
                         "kind", "score", "test_score", "test_metrics", "sources_test_score", "average_test_score",
                         "average_test_metrics", "val_score", "trained_val_score", "average_val_score",
                         "restored_average")} for t in pool.tasks}})
        print(f"  {pool.name}: fused with seed {seed} ({runs[-1]['epochs']} epochs, {runs[-1]['seconds']} s)",
              file=sys.stderr, flush=True)
    return runs


def serving_cost(fused_onnx: Path, sources: list[Path], test: Split, repeats: int) -> dict:
    """fused.onnx against the sources run one after the other, one single-threaded onnxruntime
    session each, on the same test rows: median seconds per call and their ratio, at batch 1 and 4096."""
    fused_sess = session(fused_onnx, "cpu", threads=1)[0]
    source_sess = [session(p, "cpu", threads=1)[0] for p in sources]
    out = {}
    for batch, calls in ((1, repeats), (4096, max(10, repeats // 20))):
        rows = test.head(batch)
        feeds = {name: np.ascontiguousarray(a) for name, a in rows.arrays().items()}
        run(fused_sess, feeds)  # checks the feeds once, outside the timing
        fused_s, sources_s = _block_medians([lambda feeds=feeds: fused_sess.run(None, feeds),
                                             lambda feeds=feeds: [s.run(None, feeds) for s in source_sess]], calls,
                                            clock=time.thread_time)  # one thread: its CPU time is the work
        out[f"batch{batch}"] = {"rows": len(rows), "fused_s": fused_s, "sources_separately_s": sources_s,
                                "fused_over_sources": fused_s / sources_s,
                                "fused_rows_per_s": len(rows) / fused_s, "sources_rows_per_s": len(rows) / sources_s}
    return out


def summarise(pool: Pool, runs: list[dict]) -> dict[str, dict]:
    """Per task: sources, average, fused mean ± SD over the seeds, how often the average was kept."""
    summary = {}
    for task in pool.tasks:
        per_seed = [r["per_task"][task] for r in runs]
        fused = [p["test_score"] for p in per_seed]
        first = per_seed[0]
        summary[task] = {
            "kind": first["kind"], "score": first["score"], "sources": first["sources_test_score"],
            "average": first["average_test_score"], "fused_per_seed": fused, "fused_mean": statistics.fmean(fused),
            "fused_sd": statistics.stdev(fused) if len(fused) > 1 else 0.0,
            "gain_over_average": statistics.fmean(fused) - first["average_test_score"],
            "fallback_to_average": sum(bool(p["restored_average"]) for p in per_seed), "seeds": len(fused)}
    return summary


def bench_pool(name: str, work: Path, budget: Budget, data_dir: Path | None = None) -> dict:
    """Build, decompose, fuse and time one pool; its whole record."""
    build = {"mixed": mixed_pool, "foreign": foreign_pool}[name]
    print(f"{name} pool: training the sources", file=sys.stderr, flush=True)
    pool = build(work, budget, data_dir)
    parts, found = decompose_pool(pool, work)
    print(f"  {name}: decomposed, {found['common_layers']} common layers, {found['levels']} levels",
          file=sys.stderr, flush=True)
    runs = fuse_seeds(pool, parts, work, budget)
    names = [m for ms in pool.tasks.values() for m in ms]
    fused_onnx = work / name / f"fused-seed{budget.seeds[0]}" / "fused.onnx"
    speed = serving_cost(fused_onnx, [pool.paths[m] for m in names], pool.data.test, budget.repeats)
    return {"pool": name, "tasks": pool.tasks, "sources": pool.sources, "source_seconds": round(pool.seconds, 1),
            "rows": {"source_train": next(iter(pool.sources.values()))["train_rows"],
                     "fusion_train": runs[0]["train_rows"], "validation": len(pool.data.val),
                     "test": len(pool.data.test)},
            "decompose": found, "runs": runs, "summary": summarise(pool, runs), "serving": speed}


# -- report ----------------------------------------------------------------------------------------
def _pm(mean: float, sd: float, seeds: int) -> str:
    return f"{mean:.5f} ± {sd:.5f}" if seeds > 1 else f"{mean:.5f} (one seed, no spread)"


def markdown(results: dict) -> str:
    """The tables of a run: per pool and task the scores, then the serving cost."""
    seeds = results["budget"]["seeds"]
    lines = []
    if results["quick"]:
        lines += ["**QUICK RUN (--quick): tiny data and budgets, figures mean nothing.**", ""]
    lines += [f"Test scores; fused = mean ± sample SD over fusion seeds {', '.join(map(str, seeds))} only (one split, "
              "the same source models); fallback = seeds whose exported task is the sources' plain average, "
              "because the trained fusion scored below it on validation.", ""]
    lines += ["| pool | task (kind) | score | sources | plain average | fused | fused − average | fallback |",
              "|---|---|---|---|---|---|---|---|"]
    for record in results["pools"]:
        for task, s in record["summary"].items():
            kind = s["kind"]["kind"] + (f", {s['kind']['classes']} classes" if s["kind"]["classes"] else "")
            sources = ", ".join(f"{m} {v:.5f}" for m, v in s["sources"].items())
            lines.append(f"| {record['pool']} | {task} ({kind}) | {SCORE_LABEL[s['score']]} | {sources} | "
                         f"{s['average']:.5f} | {_pm(s['fused_mean'], s['fused_sd'], s['seeds'])} | "
                         f"{s['gain_over_average']:+.5f} | {s['fallback_to_average']}/{s['seeds']} |")
    lines += ["", "Serving in onnxruntime, one thread: fused.onnx (first seed) against the pool's sources run one after "
              "the other (one session each); medians of this thread's CPU time per call, ratios measured in one run (goal ≤ 1.2×).", "",
              "| pool | sources | common layers / levels | batch 1: fused vs sources | ratio | batch 4096: fused vs sources (rows/s) | ratio |",
              "|---|---|---|---|---|---|---|"]
    for record in results["pools"]:
        b1, b4k = record["serving"]["batch1"], record["serving"]["batch4096"]
        lines.append(f"| {record['pool']} | {len(record['sources'])} | {record['decompose']['common_layers']} / "
                     f"{record['decompose']['levels']} | {b1['fused_s'] * 1e3:.3f} ms vs "
                     f"{b1['sources_separately_s'] * 1e3:.3f} ms | {b1['fused_over_sources']:.2f}× | "
                     f"{b4k['fused_rows_per_s']:,.0f} vs {b4k['sources_rows_per_s']:,.0f} | "
                     f"{b4k['fused_over_sources']:.2f}× |")
    return "\n".join(lines)


def run_bench(pools: list[str], budget: Budget, work: Path, data_dir: Path | None = None,
              quick: bool = False) -> dict:
    """Every pool in turn; the whole run's record."""
    torch.set_num_threads(1)
    began = time.perf_counter()
    load = os.getloadavg()[0]
    records = [bench_pool(name, work, budget, data_dir) for name in pools]
    return {"quick": quick, "budget": asdict(budget), "torch_threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_at_start": load,
            "load_average_at_end": os.getloadavg()[0], "seconds": round(time.perf_counter() - began, 1),
            "torch": torch.__version__, "pools": records}


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of about two minutes (tiny data, 2 epochs)")
    parser.add_argument("--pools", default="mixed,foreign", help="comma-separated: mixed, foreign")
    parser.add_argument("--seeds", default=None, help="fusion seeds, comma-separated (default 0,1,2; quick 0)")
    parser.add_argument("--source-epochs", type=int, default=None, help="max epochs of each source model (default 20)")
    parser.add_argument("--source-patience", type=int, default=None, help="early-stopping patience of the sources (3)")
    parser.add_argument("--fuse-epochs", type=int, default=None, help="cap on fuse's epochs (default 30)")
    parser.add_argument("--repeats", type=int, default=None, help="batch-1 calls per timed model (default 2000)")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="folder with the Census-Income files (default: $FUSEKIT_DATA_DIR, else fetched)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "pools", help="where results.json goes")
    parser.add_argument("--work", type=Path, default=None, help="keep the models and fused files here (default: temp)")
    args = parser.parse_args(argv)
    budget = Budget.quick() if args.quick else Budget()
    changes = {"source_epochs": args.source_epochs, "source_patience": args.source_patience,
               "fuse_epochs": args.fuse_epochs, "repeats": args.repeats,
               "seeds": [int(s) for s in args.seeds.split(",")] if args.seeds else None}
    budget = replace(budget, **{k: v for k, v in changes.items() if v is not None})
    pools = [p.strip() for p in args.pools.split(",") if p.strip()]
    unknown = [p for p in pools if p not in ("mixed", "foreign")]
    if unknown or not pools:
        parser.error(f"--pools takes mixed and/or foreign, not {', '.join(unknown) or 'nothing'}")
    with tempfile.TemporaryDirectory(prefix="bench_pools-") as tmp:
        work = args.work or Path(tmp)
        results = run_bench(pools, budget, work, args.data_dir, quick=args.quick)
        results["command"] = " ".join(["python", "benchmarks/bench_pools.py", *(argv or sys.argv[1:])])
        args.out.mkdir(parents=True, exist_ok=True)
        target = args.out / ("results-quick.json" if args.quick else "results.json")
        with atomic_file(target) as part:
            part.write_text(json.dumps(results, indent=1) + "\n")
        with atomic_file(target.with_name(target.stem.replace("results", "tables") + ".md")) as part:
            part.write_text(markdown(results) + "\n")
    print(markdown(results))
    print(f"\n{results['seconds']:.0f} s; results in {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
