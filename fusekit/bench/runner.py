"""``run_bench``: every method on the same data, budget and early stopping; tables, JSON and chart.

Rows of Table I for a task set:

* the single-task source models (ONNX files in ``models_dir``), scored with onnxruntime;
* ``average``: the plain average of each task's source models' probabilities (no training);
* the baselines of ``fusekit.baselines`` trained from scratch by ``fusekit.train.fit`` on the
  training split (early stopping on mean validation AUC, best weights kept);
* ``emm-paper`` (the paper's fusion network), ``emm`` (fusekit's default residual mode, AKF at
  the last level), ``emm-all-levels`` (residual, AKF at every level) and ``emm-finetune``
  (residual, source weights fine-tuned at a tenth of the learning rate), made by ``fusekit.decompose.decompose`` and ``fusekit.fuse.fuse`` over the source models.
  ``fuse`` trains on the rows the source models did not see when their specification records a
  holdout, as a user would; the baselines train on the whole training split.

Table II (``ablation``) repeats the paper's Table II with ``emm-paper``: no trained
components and no MTM; MTM only; trained components without MTM; full.
Every test AUC is computed here on the same test split, with onnxruntime for ONNX models.

Started by torchrun, every rank runs the same methods in the same order, so that every training
run is data-parallel (fusekit/train.py); rank 0 alone logs, scores fused models and writes
``out_dir``, the other ranks work in a scratch directory and return None.
"""
from __future__ import annotations

import contextlib
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np

from fusekit import __version__, distributed
from fusekit.models.baselines import BASELINES, build_baseline
from fusekit.errors import FusekitError
from fusekit.io import atomic_dir, check_output_dir, check_output_paths
from fusekit.locks import holds_output
from fusekit.metrics import roc_auc
from fusekit.threads import current_threads
from fusekit.bench.budget import Budget
from fusekit.bench.results import BenchResult, Row, TaskSetResult
from fusekit.bench.sources import describe, find_sources, onnx_probabilities, shared_spec, spec_summary
from fusekit.decompose.manifest import group_by_task

DEFAULT_TASKS = ["income", "never_married"]
THREE_TASKS = ["income", "never_married", "education"]
SOURCE_ROWS = ["sources", "average"]
EMM_METHODS = ["emm-paper", "emm", "emm-all-levels", "emm-finetune"]
ALL_METHODS = SOURCE_ROWS + list(BASELINES) + EMM_METHODS + ["ablation"]

# Fusion variants: (label, FusionOptions keywords). Table II uses the paper's network.
EMM_VARIANTS = {
    "emm-paper": ("EMM (paper network)", {"mode": "paper", "use_mtm": True, "pretrained": True}),
    "emm": ("EMM (fusekit residual, default)", {"mode": "residual", "use_mtm": True, "pretrained": True}),
    "emm-all-levels": ("EMM residual, AKF at every level",
                       {"mode": "residual", "use_mtm": True, "pretrained": True, "fuse_at": "all"}),
    "emm-finetune": ("EMM residual, sources fine-tuned (--finetune all)",
                     {"mode": "residual", "use_mtm": True, "pretrained": True, "finetune": "all"}),
}
ABLATION_VARIANTS = {
    "baseline": ("no trained components, no MTM", {"mode": "paper", "use_mtm": False, "pretrained": False}),
    "baseline+mtm": ("MTM only (no trained components)", {"mode": "paper", "use_mtm": True, "pretrained": False}),
    "baseline+p": ("trained components, no MTM", {"mode": "paper", "use_mtm": False, "pretrained": True}),
    "full": ("full EMM (trained components + MTM)", {"mode": "paper", "use_mtm": True, "pretrained": True}),
}


def default_models_dir(tasks: list[str]) -> Path:
    """The bundled sample pool whose tasks are ``tasks``."""
    from fusekit.sample_models import pool_for_tasks

    return pool_for_tasks(tasks).folder


def _auc(split, probs: dict[str, np.ndarray], tasks: list[str]) -> dict[str, float]:
    return {t: roc_auc(split.labels[t], probs[t]) for t in tasks}


def _check_methods(methods: list[str] | None) -> list[str]:
    chosen = list(ALL_METHODS if methods is None else methods)
    unknown = [m for m in chosen if m not in ALL_METHODS]
    if unknown:
        raise FusekitError(f"unknown bench method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}")
    if not chosen:
        raise FusekitError("no method to benchmark; pass at least one")
    return chosen


def _load(dataset: str, tasks: list[str], spec, split_seed: int = 0):
    from fusekit.data import load_dataset

    return load_dataset(dataset, tasks, spec=spec, seed=split_seed)


def _train_baseline(name: str, spec_sizes: tuple[list[int], int], tasks: list[str], train, val, test,
                    seeds: list[int], budget: Budget, progress: bool, log: Callable[[str], None]) -> Row:
    from fusekit.seeding import seed_everything
    from fusekit.train import evaluate, fit

    cardinalities, n_dense = spec_sizes
    row = Row(name, "baseline", {t: [] for t in tasks}, label=BASELINES[name].description.split(":")[0])
    for seed in seeds:
        seed_everything(seed)  # the initial weights depend on the seed only
        model = build_baseline(name, cardinalities, n_dense, tasks)
        result = fit(model, train, val, tasks, budget.train_config(seed, progress))
        test_auc = evaluate(model.cpu(), test, tasks, "cpu")
        for t in tasks:
            row.auc[t].append(test_auc[t])
        row.seconds.append(result.seconds)
        row.epochs.append(result.best_epoch)
        row.parameters = model.num_parameters()
        row.trainable = model.num_parameters(trainable_only=True)
        row.extra["hyperparameters"] = model.hparams
        log(f"  {name} seed {seed}: " + ", ".join(f"{t} {test_auc[t]:.5f}" for t in tasks)
            + f" ({result.seconds:.0f} s, best epoch {result.best_epoch})")
    return row


def _decompose(sources, parts_dir: Path) -> None:
    from fusekit.decompose.pipeline import decompose

    decompose([s.path for s in sources], parts_dir, names=[s.name for s in sources])


def _fuse_options(fusion_kw: dict, seed: int, budget: Budget, progress: bool, **kw):
    """The FuseOptions of one EMM variant and seed under ``budget`` (both fusion paths use these)."""
    from fusekit.fusion.fuse import FuseOptions
    from fusekit.fusion.model import FusionOptions

    return FuseOptions(fusion=FusionOptions(seed=seed, **fusion_kw), training=budget.train_config(seed, progress),
                       max_rows=budget.train_rows, **kw)


def _fuse_variant(key: str, label: str, fusion_kw: dict, parts_dir: Path, task_models: dict[str, list[str]], ds,
                  test, tasks: list[str], seeds: list[int], budget: Budget, progress: bool, runs_dir: Path,
                  log: Callable[[str], None]) -> tuple[Row, dict]:
    from fusekit.fusion.fuse import fuse

    row = Row(key, "emm", {t: [] for t in tasks}, label=label, extra={"fusion": fusion_kw})
    gates: dict = {}
    for seed in seeds:
        out = runs_dir / f"{key}-seed{seed}"
        result = fuse(parts_dir, task_models, ds, out, _fuse_options(fusion_kw, seed, budget, progress, force=True))
        if result is None:
            continue  # another process of a torchrun run: rank 0 scores and writes
        fused = Path(result.out_dir) / "fused.onnx"
        # Scored here on the bench's own test split, like every other row.
        test_auc = _auc(test, onnx_probabilities(fused, test, tasks), tasks)
        for t in tasks:
            row.auc[t].append(test_auc[t])
        metrics = result.metrics
        row.seconds.append(float(metrics.get("train_seconds", 0.0)))
        row.epochs.append(int(metrics.get("best_epoch", 0)))
        row.trainable = metrics.get("trainable_parameters")
        row.parameters = metrics.get("parameters")
        row.extra["train_rows"] = metrics.get("rows", {}).get("train_source")
        gates_path = Path(result.out_dir) / "gates.json"
        if seed == seeds[0] and gates_path.is_file():
            gates = json.loads(gates_path.read_text())
        # Keep the small reports; the fused model and checkpoint are reproducible and large.
        for name in ("fused.onnx", "checkpoint.pt"):
            (Path(result.out_dir) / name).unlink(missing_ok=True)
        log(f"  {key} seed {seed}: " + ", ".join(f"{t} {test_auc[t]:.5f}" for t in tasks)
            + f" ({row.seconds[-1]:.0f} s)")
    return row, gates


def _fuse_in_process(key: str, label: str, fusion_kw: dict, parts_dir: Path, task_models: dict[str, list[str]], ds,
                     test, tasks: list[str], seeds: list[int], budget: Budget, progress: bool, runs_dir: Path,
                     log: Callable[[str], None]) -> tuple[Row, dict]:
    """Quick runs: ``fuse``'s own steps (prepare, build, train) without its ONNX export, scored in torch.

    ``fuse`` also exports and checks fused.onnx, which takes longer than a quick run's training;
    the full benchmark goes through ``fuse`` itself (``_fuse_variant``).
    """
    from fusekit.decompose.manifest import Manifest
    import copy

    from fusekit.fusion.fuse import build, guard, prepare, train
    from fusekit.fusion.report import gate_statistics
    from fusekit.train import evaluate

    parts = Manifest.load(parts_dir)
    row = Row(key, "emm", {t: [] for t in tasks}, label=label, extra={"fusion": fusion_kw, "path": "in-process"})
    gates: dict = {}
    for seed in seeds:
        plan = prepare(parts, task_models, ds, _fuse_options(fusion_kw, seed, budget, progress))
        model = build(plan)
        untrained = copy.deepcopy(model.state_dict())
        result = train(plan, model)
        kept = guard(plan, model, untrained)  # as fuse does: no task below its sources' average on validation
        row.extra.setdefault("restored_average", []).append(kept.restored)
        test_auc = evaluate(model, test, tasks, "cpu")
        for t in tasks:
            row.auc[t].append(test_auc[t])
        row.seconds.append(result.seconds)
        row.epochs.append(result.best_epoch)
        row.trainable = sum(p.numel() for p in model.fusion_parameters())
        row.parameters = model.parameter_count()
        row.extra["train_rows"] = plan.train_source
        if seed == seeds[0]:
            gates = gate_statistics(model, test)
        log(f"  {key} seed {seed}: " + ", ".join(f"{t} {test_auc[t]:.5f}" for t in tasks)
            + f" ({result.seconds:.0f} s, in-process)")
    return row, gates


def _guarded_fuse(key: str, label: str, fusion_kw: dict, *args, log: Callable[[str], None] = print,
                  **kwargs) -> tuple[Row, dict]:
    """``_fuse_variant``, but a failing variant becomes a row that says why instead of losing the run."""
    tasks, budget = args[4], args[6]
    runner = _fuse_in_process if budget.in_process_fusion else _fuse_variant
    try:
        return runner(key, label, fusion_kw, *args, log=log, **kwargs)
    except FusekitError as exc:
        message = str(exc).splitlines()[0][:300]
        log(f"  {key} FAILED: {message}")
        return Row(key, "emm", {t: [] for t in tasks}, label=label, extra={"fusion": fusion_kw, "error": message}), {}


def run_task_set(dataset: str, tasks: list[str], seeds: list[int], budget: Budget, methods: list[str],
                 work_dir: Path, models_dir: Path | None = None, ablation: bool = True, progress: bool = False,
                 log: Callable[[str], None] = print) -> TaskSetResult:
    """Table I (and Table II when ``ablation``) for one task set; work files go under ``work_dir``."""
    needs_sources = any(m in methods for m in SOURCE_ROWS + EMM_METHODS) or (ablation and "ablation" in methods)
    sources = find_sources(models_dir or default_models_dir(tasks), tasks) if needs_sources else []
    spec = shared_spec(sources) if sources else None
    task_models = group_by_task(((s.name, s.task) for s in sources), tasks) if sources else {}
    log(f"[{'+'.join(tasks)}] loading {dataset}")
    ds = _load(dataset, tasks, spec, budget.split_seed)
    train = ds.train.sample(budget.train_rows, 0)
    val = ds.val.sample(budget.val_rows, 1)
    test = ds.test.sample(budget.test_rows, 2)
    result = TaskSetResult(list(tasks), sources=describe(sources), data={
        "rows": {"train": len(train), "validation": len(val), "test": len(test)},
        "spec": spec_summary(getattr(ds, "spec", None)),
    })

    if sources and ("sources" in methods or "average" in methods):
        probs = {s.name: onnx_probabilities(s.path, test, [s.task])[s.task] for s in sources}
        if "sources" in methods:
            for s in sources:
                result.rows.append(Row(s.name, "single", {s.task: [roc_auc(test.labels[s.task], probs[s.name])]},
                                       parameters=s.parameters, trainable=0, label=f"{s.name} (single task)"))
        if "average" in methods:
            avg = {t: np.mean([probs[m] for m in task_models[t]], axis=0) for t in tasks}
            result.rows.append(Row("average", "ensemble", {t: [v] for t, v in _auc(test, avg, tasks).items()},
                                   parameters=sum(s.parameters for s in sources), trainable=0,
                                   label="average of source models (untrained)"))

    sizes = (ds.spec.cardinalities, len(ds.spec.dense))
    for name in [m for m in methods if m in BASELINES]:
        log(f"[{'+'.join(tasks)}] training {name}")
        result.rows.append(_train_baseline(name, sizes, tasks, train, val, test, seeds, budget, progress, log))

    variants = [(k, *EMM_VARIANTS[k]) for k in EMM_METHODS if k in methods]
    ablate = ablation and "ablation" in methods
    if variants or ablate:
        parts = work_dir / "parts"
        log(f"[{'+'.join(tasks)}] decomposing {len(sources)} source models")
        _decompose(sources, parts)
        runs = work_dir / "runs"
        done: dict[tuple, Row] = {}
        for key, label, kw in variants:
            log(f"[{'+'.join(tasks)}] fusing: {label}")
            row, gates = _guarded_fuse(key, label, kw, parts, task_models, ds, test, tasks, seeds, budget,
                                       progress, runs, log=log)
            result.rows.append(row)
            result.gates[key] = gates
            done[tuple(sorted(kw.items()))] = row
        if ablate:
            for key, (label, kw) in ABLATION_VARIANTS.items():
                same = done.get(tuple(sorted(kw.items())))
                if same is None:
                    log(f"[{'+'.join(tasks)}] ablation: {label}")
                    same, _ = _guarded_fuse(f"ablation-{key}", label, kw, parts, task_models, ds, test, tasks,
                                            seeds, budget, progress, runs, log=log)
                result.ablation.append(Row(key, "emm", same.auc, same.parameters, same.trainable, same.seconds,
                                           same.epochs, label, {"fusion": kw, **({"error": same.extra["error"]}
                                                                                 if "error" in same.extra else {})}))
        shutil.rmtree(parts, ignore_errors=True)
    return result


def _versions() -> dict[str, str]:
    import torch

    return {"fusekit": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


@holds_output("out_dir")
def run_bench(dataset: str = "census-income", tasks: list[str] | None = None, seeds: int | list[int] = 3,
              quick: bool = False, out_dir: Path = Path("bench-out"), methods: list[str] | None = None, *,
              three_tasks: list[str] | None = THREE_TASKS, models_dir: Path | None = None,
              three_models_dir: Path | None = None, max_epochs: int | None = None, patience: int | None = None,
              device: str = "auto", force: bool = False, progress: bool = False, split_seed: int = 0,
              log: Callable[[str], None] = print) -> BenchResult | None:
    """Benchmark every method on ``tasks`` (Table I, Table II) and on ``three_tasks`` (Table I with
    fusion-gate statistics), same data, budget and early stopping for all; write ``out_dir``.

    ``seeds``: a count (seeds 0..N-1) or explicit seeds; ``quick`` uses one seed and 2 epochs on a row
    subsample (a smoke test: its numbers mean nothing). ``out_dir`` gets ``results.json``,
    ``tables.md`` and ``auc.png``, atomically. FusekitError on bad input before any training. Under
    torchrun, ranks other than 0 return None (see the module docstring).
    """
    from fusekit.bench.chart import write_chart
    from fusekit.bench.tables import render_markdown

    started = time.perf_counter()
    tasks = list(tasks or DEFAULT_TASKS)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list or any(int(s) < 0 for s in seed_list):
        raise FusekitError("{seeds} must be a positive number of seeds", owner="run_bench()")
    if quick and isinstance(seeds, int):
        seed_list = seed_list[:1]
    chosen = _check_methods(methods)
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise FusekitError(f"a multi-task benchmark needs two or more distinct tasks, got {tasks}")
    out_dir = Path(out_dir)
    check_output_paths(out_dir, [dataset, models_dir, three_models_dir], owner="run_bench()")
    check_output_dir(out_dir, force)
    budget = Budget.for_run(quick, max_epochs, patience, device, split_seed)
    task_sets = [(tasks, models_dir, True)]
    if three_tasks and list(three_tasks) != tasks:
        task_sets.append((list(three_tasks), three_models_dir, False))

    main = distributed.is_main()
    if not main:
        log = _silent
    with atomic_dir(out_dir, force=force) if main else _scratch() as tmp:
        sets = []
        for index, (set_tasks, set_models, ablation) in enumerate(task_sets):
            work = tmp / "runs" / "+".join(set_tasks)
            sets.append(run_task_set(dataset, set_tasks, seed_list, budget, chosen, work, set_models, ablation,
                                     progress, log))
        result = BenchResult(dataset, seed_list, quick, budget.__dict__, {
            name: {**cls.defaults} for name, cls in BASELINES.items()}, sets, out_dir,
            versions=_versions(), threads=current_threads())
        result.seconds = time.perf_counter() - started
        if not main:
            return None
        (tmp / "results.json").write_text(json.dumps(result.to_dict(), indent=1))
        (tmp / "tables.md").write_text(render_markdown(result))
        write_chart(result, tmp / "auc.png")
    return result


def _silent(text: str) -> None:
    """The log of the ranks that do not print."""


@contextlib.contextmanager
def _scratch():
    """The work directory of a rank that does not write the output (removed at the end)."""
    with tempfile.TemporaryDirectory(prefix="fusekit-bench-rank") as path:
        yield Path(path)
