"""``run_bench``: every method on the same data, splits, seeds, budget and early stopping.

The protocol (fusekit/bench/protocol.py): the dataset's test split is the evaluation pool; split
``k`` halves it with seed ``k`` into validation (early stopping) and test. Every method runs once
per split and seed, a **cell**, written to ``OUT/cells/`` as soon as it ends, so that a failure
loses no finished work and the same command resumes where it stopped.

Rows of Table I for a task set:

* the single-task source models (ONNX files in ``models_dir``), scored with onnxruntime;
* ``average``: the plain average of each task's source models' probabilities (no training);
* the baselines of ``fusekit.baselines`` trained from scratch by ``fusekit.train.fit`` on the
  training split (early stopping on mean validation AUC, best weights kept);
* ``emm-paper`` (the paper's fusion network), ``emm`` (fusekit's default residual mode, AKF at
  the last level), ``emm-all-levels`` (residual, AKF at every level) and ``emm-finetune``
  (residual, source weights fine-tuned at a tenth of the learning rate), made by
  ``fusekit.decompose.decompose`` and ``fusekit.fuse.fuse`` over the source models. ``fuse`` trains on
  the rows the source models did not see when their specification records a holdout, as a user
  would; the baselines train on the whole training split.

Table II (``ablation``) repeats the paper's Table II with ``emm-paper``: no trained
components and no MTM; MTM only; trained components without MTM; full.
Every test AUC is computed here on the same test rows of a split, with onnxruntime for ONNX models.

Started by torchrun, every rank runs the same cells in the same order (rank 0 says which cells are
still to run), so that every training run is data-parallel (fusekit/train.py); rank 0 alone logs,
scores fused models and writes ``out_dir``; the other ranks keep their cells in a scratch folder
and return None.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import platform
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from fusekit import __version__, distributed
from fusekit.models.baselines import BASELINES, build_baseline
from fusekit.errors import FusekitError, TrainingInterrupted
from fusekit.options import literal
from fusekit.io import atomic_file, check_output_paths, sha256_file
from fusekit.locks import holds_output
from fusekit.threads import current_threads
from fusekit.bench.budget import Budget
from fusekit.bench.methods import (ABLATION_VARIANTS, DEFAULT_TASKS, EMM_METHODS, EMM_VARIANTS, SOURCE_ROWS,
                                   THREE_TASKS, ablation_method, all_methods)
from fusekit.bench.protocol import (CELLS_DIR, Cell, CellStore, check_protocol, evaluation_splits, task_set_key,
                                    write_protocol)
from fusekit.bench.results import BenchResult, TaskSetResult
from fusekit.bench.rows import rebuild
from fusekit.bench.data import BenchData, default_tasks, load_bench_data
from fusekit.bench.sources import describe, find_sources, onnx_outputs, shared_spec, spec_summary
from fusekit.decompose.manifest import group_by_task

ALL_METHODS = all_methods()
__all__ = ["ALL_METHODS", "DEFAULT_TASKS", "THREE_TASKS", "EMM_METHODS", "EMM_VARIANTS", "ABLATION_VARIANTS",
           "Budget", "run_bench", "run_task_set"]


def default_models_dir(tasks: list[str], dataset: str | Path = "census-income", data_dir: Path | None = None) -> Path:
    """The source models a named dataset benchmarks by default: the bundled sample pool whose tasks
    are ``tasks`` (Census-Income), the digits CNN pool (digits, made on first use)."""
    from fusekit.bench.data import DIGITS

    if str(dataset) == DIGITS:
        from fusekit.bench.digits import digits_pool_dir

        return digits_pool_dir(data_dir)
    if str(dataset) != "census-income":
        raise FusekitError(f"{literal(dataset)} has no default source models; give the folder of the tasks' ONNX "
                           "models in {models_dir}", owner="run_bench()")
    from fusekit.sample_models import pool_for_tasks

    return pool_for_tasks(tasks).folder


def _scores(split, outputs: dict[str, np.ndarray], kinds: dict) -> dict[str, float]:
    """Each task's score (its kind's: AUC, accuracy, R2) of deployed ``outputs`` on ``split``."""
    return {t: kinds[t].score(split.labels[t], out) for t, out in outputs.items()}


def _check_methods(methods: list[str] | None) -> list[str]:
    chosen = list(ALL_METHODS if methods is None else methods)
    unknown = [m for m in chosen if m not in ALL_METHODS]
    if unknown:
        raise FusekitError(f"unknown bench method(s) {', '.join(unknown)}; choose from {', '.join(ALL_METHODS)}")
    if not chosen:
        raise FusekitError("no method to benchmark; pass at least one")
    return chosen


def _cell(tasks: list[str], method: str, split: int, seed: int | None, scores: dict[str, float], **info) -> Cell:
    seconds, epochs = info.pop("seconds", None), info.pop("epochs", None)
    return Cell(task_set_key(tasks), method, split, seed, {t: float(v) for t, v in scores.items()},
                None if seconds is None else float(seconds), None if epochs is None else int(epochs), info)


def _train_baseline(name: str, data: BenchData, tasks: list[str], train, val, test, split: int,
                    seed: int, budget: Budget, progress: bool, log: Callable[[str], None]) -> Cell:
    from fusekit.seeding import seed_everything
    from fusekit.train import evaluate, fit

    cardinalities, n_dense = data.baseline_sizes()
    seed_everything(seed)  # the initial weights depend on the seed only
    model = build_baseline(name, cardinalities, n_dense, tasks, kinds=data.kinds, layout=data.layout)
    result = fit(model, train, val, tasks, budget.train_config(seed, progress))
    test_auc = evaluate(model.cpu(), test, tasks, "cpu")
    log(f"  {name} split {split} seed {seed}: " + ", ".join(f"{t} {test_auc[t]:.5f}" for t in tasks)
        + f" ({result.seconds:.0f} s, best epoch {result.best_epoch})")
    return _cell(tasks, name, split, seed, test_auc, seconds=result.seconds, epochs=result.best_epoch,
                 kind="baseline", label=BASELINES[name].description.split(":")[0],
                 parameters=model.num_parameters(), trainable=model.num_parameters(trainable_only=True),
                 hyperparameters=model.hparams)


def _decompose(sources, parts_dir: Path) -> None:
    from fusekit.decompose.pipeline import decompose

    decompose([s.path for s in sources], parts_dir, names=[s.name for s in sources], force=True)


def _fuse_options(fusion_kw: dict, seed: int, budget: Budget, progress: bool, data_options: dict | None = None,
                  **kw):
    """The FuseOptions of one EMM variant and seed under ``budget`` (both fusion paths use these);
    ``data_options``: the run's task kinds and outputs (``--task-kind``, ``--task-output``)."""
    from fusekit.fusion.fuse import FuseOptions
    from fusekit.fusion.model import FusionOptions

    chosen = {k: v for k, v in (data_options or {}).items() if k in ("task_kinds", "outputs")}
    fusion_fields = {f.name for f in dataclasses.fields(FusionOptions)}
    run_kw = {k: v for k, v in fusion_kw.items() if k not in fusion_fields}  # e.g. train_rows
    fusion = FusionOptions(seed=seed, **{k: v for k, v in fusion_kw.items() if k in fusion_fields})
    return FuseOptions(fusion=fusion, training=budget.train_config(seed, progress),
                       max_rows=budget.train_rows, **chosen, **run_kw, **kw)


def _fuse_variant(key: str, label: str, fusion_kw: dict, parts_dir: Path, task_models: dict[str, list[str]], ds,
                  tasks: list[str], split: int, seed: int, budget: Budget, progress: bool, runs_dir: Path,
                  log: Callable[[str], None], want_gates: bool, data_options: dict) -> Cell:
    from fusekit.fusion.fuse import fuse

    out = runs_dir / f"{key}-split{split}-seed{seed}"
    result = fuse(parts_dir, task_models, ds, out,
                  _fuse_options(fusion_kw, seed, budget, progress, data_options, force=True))
    if result is None:  # another process of a torchrun run: rank 0 scores and writes
        return _cell(tasks, key, split, seed, {}, kind="emm", label=label, fusion=fusion_kw)
    fused = Path(result.out_dir) / "fused.onnx"
    # Scored here on the bench's own test split, like every other row (fused.onnx names its outputs after the tasks).
    kinds = {t: _kind_of(result.metrics, t) for t in tasks}
    test_auc = _scores(ds.test, onnx_outputs(fused, ds.test, {t: t for t in tasks}), kinds)
    metrics = result.metrics
    gates_path = Path(result.out_dir) / "gates.json"
    gates = json.loads(gates_path.read_text()) if want_gates and gates_path.is_file() else None
    shutil.rmtree(result.out_dir, ignore_errors=True)  # reproducible and large; the cell keeps the numbers
    per_task = metrics.get("per_task", {})
    log(f"  {key} split {split} seed {seed}: " + ", ".join(f"{t} {test_auc[t]:.5f}" for t in tasks)
        + f" ({float(metrics.get('train_seconds', 0.0)):.0f} s)")
    return _cell(tasks, key, split, seed, test_auc, seconds=metrics.get("train_seconds", 0.0),
                 epochs=metrics.get("best_epoch", 0), kind="emm", label=label, fusion=fusion_kw,
                 parameters=metrics.get("parameters"), trainable=metrics.get("trainable_parameters"),
                 train_rows=metrics.get("rows", {}).get("train_source"),
                 restored_average={t: bool(per_task.get(t, {}).get("restored_average")) for t in tasks},
                 **({"gates": gates} if gates else {}))


def _kind_of(metrics: dict, task: str):
    from fusekit.task_kinds import TaskKind

    return TaskKind.from_dict(metrics["per_task"][task]["kind"])


def _fuse_in_process(key: str, label: str, fusion_kw: dict, parts_dir: Path, task_models: dict[str, list[str]], ds,
                     tasks: list[str], split: int, seed: int, budget: Budget, progress: bool, runs_dir: Path,
                     log: Callable[[str], None], want_gates: bool, data_options: dict) -> Cell:
    """Quick runs: ``fuse``'s own steps (prepare, build, train, guard) without its ONNX export, scored in torch.

    ``fuse`` also exports and checks fused.onnx, which takes longer than a quick run's training;
    the full benchmark goes through ``fuse`` itself (``_fuse_variant``).
    """
    import copy

    from fusekit.decompose.manifest import Manifest
    from fusekit.fusion.fuse import build, guard, prepare, train
    from fusekit.fusion.report import gate_statistics
    from fusekit.train import evaluate

    plan = prepare(Manifest.load(parts_dir), task_models, ds,
                   _fuse_options(fusion_kw, seed, budget, progress, data_options))
    model = build(plan)
    untrained = copy.deepcopy(model.state_dict())
    result = train(plan, model)
    kept = guard(plan, model, untrained)  # as fuse does: no task below its sources' average on validation
    test_auc = evaluate(model, ds.test, tasks, "cpu", kinds=plan.kinds)
    log(f"  {key} split {split} seed {seed}: " + ", ".join(f"{t} {test_auc[t]:.5f}" for t in tasks)
        + f" ({result.seconds:.0f} s, in-process)")
    gates = gate_statistics(model, ds.test) if want_gates else None
    return _cell(tasks, key, split, seed, test_auc, seconds=result.seconds, epochs=result.best_epoch, kind="emm",
                 label=label, fusion=fusion_kw, path="in-process", parameters=model.parameter_count(),
                 trainable=sum(p.numel() for p in model.fusion_parameters()), train_rows=plan.train_source,
                 restored_average={t: t in kept.restored for t in tasks}, **({"gates": gates} if gates else {}))


def _guarded_fuse(key: str, label: str, fusion_kw: dict, parts_dir: Path, task_models: dict[str, list[str]], ds,
                  tasks: list[str], split: int, seed: int, budget: Budget, progress: bool, runs_dir: Path,
                  log: Callable[[str], None], want_gates: bool, data_options: dict) -> Cell:
    """One fused cell; a failing variant becomes a cell that says why (kept in memory only, so that a
    resumed run tries it again) instead of losing the run."""
    runner = _fuse_in_process if budget.in_process_fusion else _fuse_variant
    try:
        return runner(key, label, fusion_kw, parts_dir, task_models, ds, tasks, split, seed, budget, progress,
                      runs_dir, log, want_gates, data_options)
    except FusekitError as exc:
        message = str(exc).splitlines()[0][:300]
        log(f"  {key} split {split} seed {seed} FAILED: {message}")
        return _cell(tasks, key, split, seed, {}, kind="emm", label=label, fusion=fusion_kw, error=message)


def _missing(store: CellStore, *key) -> bool:
    """Whether a cell is still to run; rank 0's store decides for every rank of a torchrun run."""
    return bool(distributed.broadcast_object(store.get(*key) is None))


def _evaluation_data(ds, val_idx, test_idx, budget: Budget):
    """The dataset of one evaluation split: the same training rows, the pool halved into validation and test."""
    val = ds.test.subset(val_idx).sample(budget.val_rows, 1)
    test = ds.test.subset(test_idx).sample(budget.test_rows, 2)
    return dataclasses.replace(ds, val=val, test=test)


def _data_options(data_options: dict | None, budget: Budget):
    """The FuseOptions that carry how the data is read (labels, task kinds, outputs, files, split seed)."""
    from fusekit.fusion.options import FuseOptions

    given = {k: v for k, v in (data_options or {}).items() if v is not None}
    return FuseOptions(split_seed=budget.split_seed, **given)


def run_task_set(dataset: str, tasks: list[str], seeds: list[int], splits: list[int], budget: Budget,
                 methods: list[str], work_dir: Path, store: CellStore, models_dir: Path | None = None,
                 ablation: bool = True, progress: bool = False,
                 log: Callable[[str], None] = print, mapping: dict[str, list[str]] | None = None,
                 data_options: dict | None = None) -> TaskSetResult:
    """Every cell (method × split × seed) of one task set that ``store`` does not hold yet; then the
    task set's rows, made from the stored cells. Work files go under ``work_dir``.

    ``mapping``: the models of each task (file stems in ``models_dir``), default by their
    ``fusekit.task``; ``data_options``: FuseOptions fields saying how the data is read
    (``labels``, ``task_kinds``, ``outputs``, ``val``, ``test``, ``data_dir``)."""
    data_options = dict(data_options or {})
    needs_sources = any(m in methods for m in SOURCE_ROWS + EMM_METHODS) or (ablation and "ablation" in methods)
    folder = models_dir or (default_models_dir(tasks, dataset, data_options.get("data_dir")) if needs_sources
                            else None)
    sources = find_sources(folder, tasks, mapping) if needs_sources else []
    if sources:
        shared_spec(sources)  # sources that disagree on their encoding are refused before any work
    task_models = group_by_task(((s.name, s.task) for s in sources), tasks) if sources else {}
    name = "+".join(tasks)
    parts = work_dir / "parts"
    if sources and not (parts / "manifest.json").is_file():
        log(f"[{name}] decomposing {len(sources)} source models")
        _decompose(sources, parts)
    log(f"[{name}] loading {dataset}")
    options = _data_options(data_options, budget)
    data = load_bench_data(dataset, tasks, task_models, parts if sources else None, options, folder,
                           baselines=any(m in BASELINES for m in methods))
    ds, kinds = data.ds, data.kinds
    train = data.train.sample(budget.train_rows, 0)  # the baselines'; fuse takes its rows from ds itself
    plan = evaluation_splits(len(ds.test), splits)
    record = {"rows": {"train": len(train), "pool": len(ds.test),
                       "validation": len(plan[0][1]) if budget.val_rows is None else min(budget.val_rows, len(plan[0][1])),
                       "test": len(plan[0][2]) if budget.test_rows is None else min(budget.test_rows, len(plan[0][2]))},
              "spec": spec_summary(getattr(ds, "spec", None))}
    if data.note:
        record["note"] = data.note
    if getattr(ds, "reading", None):
        record["reading"] = dict(ds.reading)
        log(f"[{name}] training rows {ds.reading['train']}")
    variants = [(k, *EMM_VARIANTS[k]) for k in EMM_METHODS if k in methods]
    if ablation and "ablation" in methods:
        variants += [(f"ablation-{k}", label, kw) for k, (label, kw) in ABLATION_VARIANTS.items()
                     if ablation_method(k) == f"ablation-{k}"]
    baselines = [m for m in methods if m in BASELINES]
    failed: list[Cell] = []
    for split, val_idx, test_idx in plan:
        ds_k = _evaluation_data(ds, val_idx, test_idx, budget)
        if sources and ("sources" in methods or "average" in methods) and _missing(store, name, "average", split, None):
            named = data_options.get("outputs") or {}
            outputs = {s.name: onnx_outputs(s.path, ds_k.test, {s.task: named.get(s.task)})[s.task] for s in sources}
            for s in sources:
                store.put(_cell(tasks, s.name, split, None, _scores(ds_k.test, {s.task: outputs[s.name]}, kinds),
                                kind="single", label=f"{s.name} (single task)", parameters=s.parameters, trainable=0))
            # The plain average in each kind's mix space (probabilities, values), as fuse computes it.
            avg = {t: kinds[t].mix_metrics(ds_k.test.labels[t], kinds[t].average([outputs[m] for m in task_models[t]]))
                   [kinds[t].score_name] for t in tasks}
            store.put(_cell(tasks, "average", split, None, avg, kind="ensemble",
                            label="average of source models (untrained)",
                            parameters=sum(s.parameters for s in sources), trainable=0))
        for method in baselines:
            for seed in seeds:
                if _missing(store, name, method, split, seed):
                    log(f"[{name}] training {method} (split {split}, seed {seed})")
                    store.put(_train_baseline(method, data, tasks, train, ds_k.val, ds_k.test, split, seed, budget,
                                              progress, log))
        for key, label, kw in variants:
            for seed in seeds:
                if not _missing(store, name, key, split, seed):
                    continue
                log(f"[{name}] fusing: {label} (split {split}, seed {seed})")
                want_gates = split == plan[0][0] and seed == seeds[0]
                cell = _guarded_fuse(key, label, kw, parts, task_models, ds_k, tasks, split, seed, budget, progress,
                                     work_dir / "runs", log, want_gates, data_options)
                (failed.append if cell.info.get("error") else store.put)(cell)
    shutil.rmtree(parts, ignore_errors=True)
    wanted = {s.name for s in sources} if "sources" in methods else set()
    wanted |= ({"average"} if "average" in methods else set()) | set(baselines) | {k for k, _, _ in variants}
    cells = [c for c in store.all() if c.task_set == name and c.split in splits and (c.seed is None or c.seed in seeds)
             and c.method in wanted] + failed
    result = TaskSetResult(list(tasks), sources=describe(sources), data=record,
                           cells=[asdict(c) for c in cells], kinds={t: k.to_dict() for t, k in kinds.items()})
    rebuild(result, ablation and "ablation" in methods, list(BASELINES))
    return result


def _versions() -> dict[str, str]:
    import torch

    return {"fusekit": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


def _protocol(dataset: str, budget: Budget, task_sets: list[tuple[list[str], Path | None, bool]],
              methods: list[str], mapping: dict[str, list[str]] | None = None, data_options: dict | None = None) -> dict:
    """What the cells of a run depend on; a resume must match it (splits, seeds and methods may grow)."""
    needs_sources = any(m in methods for m in SOURCE_ROWS + EMM_METHODS + ["ablation"])
    data_dir = (data_options or {}).get("data_dir")
    sets = {}
    for index, (tasks, models_dir, _) in enumerate(task_sets):
        folder = models_dir or (default_models_dir(tasks, dataset, data_dir) if needs_sources else None)
        sources = find_sources(folder, tasks, mapping if index == 0 else None) if needs_sources else []
        sets[task_set_key(tasks)] = {s.name: sha256_file(s.path) for s in sources}
    budget_record = {k: v for k, v in budget.__dict__.items() if k != "device"}
    protocol = {"dataset": str(dataset), "budget": budget_record, "sources": sets, "fusekit": __version__,
                "protocol": "test split halved per split seed (fusekit.bench.protocol)"}
    # Recorded only when given, so that a Census-Income run made before these options resumes.
    reading = {k: str(v) if isinstance(v, Path) else dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
               for k, v in (data_options or {}).items() if v is not None and k != "data_dir"}
    if mapping:
        reading["tasks"] = mapping
    if reading:
        protocol["data"] = reading
    return protocol


@holds_output("out_dir")
def run_bench(dataset: str = "census-income", tasks: list[str] | None = None, seeds: int | list[int] = 3,
              quick: bool = False, out_dir: Path = Path("bench-out"), methods: list[str] | None = None, *,
              splits: int | list[int] = 1, three_tasks: list[str] | None = THREE_TASKS,
              models_dir: Path | None = None, three_models_dir: Path | None = None, max_epochs: int | None = None,
              patience: int | None = None, batch_size: int | None = None, device: str = "auto",
              force: bool = False, progress: bool = False, split_seed: int = 0,
              log: Callable[[str], None] = print, task_models: dict[str, list[str]] | None = None,
              labels: dict[str, str] | None = None, task_kinds: dict[str, str] | None = None,
              outputs: dict[str, str] | None = None, val: Path | None = None, test: Path | None = None,
              data_dir: Path | None = None, streaming=None) -> BenchResult | None:
    """Benchmark every method on ``tasks`` (Table I, Table II) and on ``three_tasks`` (Table I with
    fusion-gate statistics), same data, splits, seeds, budget and early stopping for all; write ``out_dir``.

    ``seeds``/``splits``: a count (0..N-1) or explicit seeds. ``quick`` uses one seed and 2 epochs on
    a row subsample (a smoke test: its numbers mean nothing). Each finished cell is written to
    ``out_dir/cells`` at once; run the same call again to resume. ``out_dir`` finally gets
    ``results.json``, ``tables.md`` and ``auc.png``. FusekitError on bad input before any training.
    Under torchrun, ranks other than 0 return None (see the module docstring).

    ``dataset``: ``census-income``, ``digits`` or a CSV/Parquet/``.npz`` file (``val``/``test``: its other
    splits' files), read as ``fusekit fuse`` reads it (fusekit/bench/data.py). ``task_models``: the
    source models of each task (file stems in ``models_dir``), as ``fuse --tasks`` takes them;
    ``labels``, ``task_kinds``, ``outputs``: as ``fuse --label``, ``--task-kind``, ``--task-output``.
    ``three_tasks`` applies to Census-Income only. ``streaming`` (``fusekit.stream_config.StreamOptions``):
    whether a CSV/Parquet training file is read in batches, as for ``fuse`` (recorded in the protocol
    unless it is the default).
    """
    started = time.perf_counter()
    if task_models:
        tasks = list(task_models)
    tasks = list(tasks or default_tasks(dataset) or [])
    if not tasks:
        raise FusekitError(f"name the tasks to benchmark on {literal(dataset)} in {{tasks}}", owner="run_bench()")
    if str(dataset) != "census-income" and three_tasks is THREE_TASKS:
        three_tasks = None  # the default three-task table is Census-Income's
    seed_list = _seed_list(seeds, "seeds")
    split_list = _seed_list(splits, "splits")
    if quick and isinstance(seeds, int):
        seed_list = seed_list[:1]
    chosen = _check_methods(methods)
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise FusekitError(f"a multi-task benchmark needs two or more distinct tasks, got {tasks}")
    out_dir = Path(out_dir)
    check_output_paths(out_dir, [dataset, models_dir, three_models_dir, val, test], owner="run_bench()")
    if out_dir.exists() and not out_dir.is_dir():
        raise FusekitError(f"output path {out_dir} exists and is not a directory; choose another {{out_dir}}",
                           owner="run_bench()")
    budget = Budget.for_run(quick, max_epochs, patience, device, split_seed, batch_size)
    task_sets = [(tasks, models_dir, True)]
    if three_tasks and list(three_tasks) != tasks:
        task_sets.append((list(three_tasks), three_models_dir, False))
    from fusekit.stream_config import StreamOptions

    data_options = {"labels": labels, "task_kinds": task_kinds, "outputs": outputs, "val": val, "test": test,
                    "data_dir": data_dir, "streaming": None if streaming in (None, StreamOptions()) else streaming}
    protocol = _protocol(dataset, budget, task_sets, chosen, task_models, data_options)
    main = distributed.is_main()
    with distributed.agreement("checking the output folder"):
        resuming = check_protocol(out_dir, protocol, force) if main else False
    with _scratch() if not main else contextlib.nullcontext(out_dir) as home:
        if main:
            if not resuming and out_dir.is_dir():
                shutil.rmtree(out_dir)  # force: start over
            write_protocol(out_dir, protocol)
        else:
            log = _silent
        store = CellStore(home / CELLS_DIR)
        if resuming:
            log(f"resuming {out_dir}: {len(store.all())} finished cells kept")
        sets = []
        try:
            for set_tasks, set_models, ablation in task_sets:
                work = home / "work" / task_set_key(set_tasks)
                sets.append(run_task_set(dataset, set_tasks, seed_list, split_list, budget, chosen, work, store,
                                         set_models, ablation, progress, log, task_models if ablation else None,
                                         data_options))
        except FusekitError as exc:
            # bad input found before any result: leave nothing (an interrupted run stays resumable)
            if main and not resuming and not store.all() and not isinstance(exc, TrainingInterrupted):
                shutil.rmtree(out_dir, ignore_errors=True)
            raise
        shutil.rmtree(home / "work", ignore_errors=True)
    if not main:
        return None
    result = BenchResult(dataset, seed_list, quick, budget.__dict__, {
        name: {**cls.defaults} for name, cls in BASELINES.items()}, sets, out_dir,
        versions=_versions(), threads=current_threads(), splits=split_list, processes=distributed.world())
    result.seconds = time.perf_counter() - started
    write_report(result)
    return result


def write_report(result: BenchResult) -> None:
    """results.json, tables.md and auc.png of ``result`` in its ``out_dir`` (each file atomically)."""
    from fusekit.bench.chart import write_chart
    from fusekit.bench.tables import render_markdown

    out = Path(result.out_dir)
    with atomic_file(out / "results.json") as tmp:
        Path(tmp).write_text(json.dumps(result.to_dict(), indent=1))
    with atomic_file(out / "tables.md") as tmp:
        Path(tmp).write_text(render_markdown(result))
    with atomic_file(out / "auc.png") as tmp:
        write_chart(result, Path(tmp))


def _silent(text: str) -> None:
    """The log of the ranks that do not print."""


@contextlib.contextmanager
def _scratch():
    """The cells and work files of a rank that does not write the output (removed at the end)."""
    with tempfile.TemporaryDirectory(prefix="fusekit-bench-rank") as path:
        yield Path(path)


def _seed_list(value: int | list[int], name: str) -> list[int]:
    """A count N (0..N-1) or explicit non-negative, distinct seeds."""
    values = list(range(value)) if isinstance(value, int) else [int(v) for v in value]
    if not values or any(v < 0 for v in values) or len(set(values)) != len(values):
        raise FusekitError(f"{{{name}}} must be a positive count or distinct non-negative seeds, got {value!r}",
                           owner="run_bench()")
    return values
