"""The data of one benchmark task set, read the way ``fusekit fuse`` reads it.

DATA is ``census-income``, ``digits`` (scikit-learn's handwritten digits, fusekit/bench/digits.py)
or a CSV/Parquet/``.npz`` file (with ``val``/``test`` files, or splits carved from it). With source
models, each task's kind and the labels come from fuse's own steps (``detect_kinds`` on the
decomposed heads, ``load_data``): models that carry a feature specification get data encoded
with it, others get the columns/arrays named after their inputs. The evaluation pool is the
data's test split; the baselines train on every training row and fuse on the rows it would
choose itself (the holdout the sources' specification records, else the training split).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusekit.data.dataset import Split, TabularDataset
from fusekit.errors import FusekitError
from fusekit.task_kinds import TaskKind, parse_kind

DIGITS = "digits"


@dataclass
class BenchData:
    """One task set's data: ``ds`` is what fuse is given (its test split is the evaluation pool),
    ``train`` the baselines' training rows, each task's kind, and how the baselines read the inputs."""

    ds: TabularDataset
    train: Split
    kinds: dict[str, TaskKind]
    layout: Any = None  # fusekit.models.baselines.inputs.InputLayout; None: the spec's tabular block
    note: str = ""  # which rows train what, when it differs from the Census-Income note

    @property
    def pool(self) -> Split:
        """The rows every method is scored on (halved per split into validation and test)."""
        return self.ds.test

    def baseline_sizes(self) -> tuple[list[int], int]:
        """The tabular block's (cardinalities, dense width); unused when ``layout`` is set."""
        spec = self.ds.spec
        return (list(spec.cardinalities), len(spec.dense)) if spec is not None else ([], 0)


def _parse_all(ds: TabularDataset, kinds: dict[str, TaskKind]) -> None:
    from fusekit.data.labels import parse_labels

    for task, kind in kinds.items():
        for name in ("train", "val", "test"):
            split = getattr(ds, name)
            split.labels[task] = parse_labels(split.labels[task], kind, where=f"the {name} labels of task {task}")


def _kinds_without_sources(ds: TabularDataset, tasks: list[str], overrides: dict[str, str] | None) -> dict[str, TaskKind]:
    """Kinds of a baselines-only run: ``--task-kind``, else what the data says, else binary."""
    kinds = {}
    for task in tasks:
        if task in (overrides or {}):
            kind, output = parse_kind(overrides[task])
            if kind == "multiclass":
                classes = int(np.max(np.asarray(ds.train.labels[task]))) + 1
                kinds[task] = TaskKind(kind, classes, output or "probability", (classes,))
            else:
                kinds[task] = TaskKind(kind, None, output or ("probability" if kind == "binary" else "value"))
        else:
            kinds[task] = ds.kinds.get(task) or TaskKind()
    return kinds


def load_bench_data(dataset: str | Path, tasks: list[str], task_models: dict[str, list[str]], parts: Path | None,
                    options, models_dir: Path | None = None, baselines: bool = True) -> BenchData:
    """The data of a task set. ``parts``: the sources decomposed (None without sources); ``options``:
    a FuseOptions carrying the data options (labels, task kinds, outputs, val, test, data_dir, split seed).
    ``baselines``: whether a baseline will train, so that its input layout is made and checked."""
    if str(dataset) == DIGITS:
        from fusekit.bench.digits import digits_data

        if options.val is not None or options.test is not None:
            raise FusekitError("the digits come with their own split; give no {val} or {test}", owner="run_bench()")
        ds, train, note = digits_data(tasks, models_dir)
    else:
        train = None
        note = ""
    if parts is not None:
        from fusekit.decompose.manifest import Manifest
        from fusekit.fusion.fuse import load_data
        from fusekit.fusion.kinds import detect_kinds

        manifest = Manifest.load(parts)
        spec = manifest.feature_spec([m for ms in task_models.values() for m in ms])
        early, _ = detect_kinds(manifest, task_models, None, options.task_kinds, options.outputs)
        if str(dataset) != DIGITS:
            ds = load_data(str(dataset), early, spec, options, manifest)
        kinds, _ = detect_kinds(manifest, task_models, ds.train.labels, options.task_kinds, options.outputs)
    else:
        if str(dataset) != DIGITS:
            from fusekit.data.registry import load_dataset

            ds = load_dataset(dataset, tasks, labels=options.labels, data_dir=options.data_dir,
                              seed=options.split_seed, val=options.val, test=options.test,
                              kinds=options.task_kinds, streaming=options.streaming)
        kinds = _kinds_without_sources(ds, tasks, options.task_kinds)
    _parse_all(ds, kinds)
    if train is None:
        train = ds.train
    else:
        from fusekit.data.labels import parse_labels

        train.labels.update({t: parse_labels(train.labels[t], kinds[t], where=f"the training labels of task {t}")
                             for t in tasks})
    layout = None
    if ds.spec is None and baselines:  # the baselines' id check does not concern the sources and EMM
        from fusekit.models.baselines.inputs import InputLayout

        layout = InputLayout.from_split(train)
        layout.check(ds.test, "test")
    return BenchData(ds, train, kinds, layout, note)


def default_tasks(dataset: str | Path) -> list[str] | None:
    """The task set a named dataset benchmarks by default (None: the caller must name the tasks)."""
    from fusekit.bench.methods import DEFAULT_TASKS

    if str(dataset) == DIGITS:
        from fusekit.sample_models.make_digits import TASKS

        return list(TASKS)
    if str(dataset) == "census-income":
        return list(DEFAULT_TASKS)
    return None
