"""Single-task models: embeddings + MLP + one prediction, trained by fusekit.train and exported to ONNX.

The exported model has inputs ``categorical`` int64 [batch, C] and ``dense`` float32 [batch, D]
and one output named after the task: the probability float32 [batch] of a binary task, the class
probabilities [batch, K] of a multiclass one, the value [batch] of a regression or count task.
Its metadata_props carry ``fusekit.feature_spec``, ``fusekit.task`` and ``fusekit.version``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusekit import distributed
from fusekit.decompose.manifest import TASK_KEY
from fusekit.data import FeatureSpec, Split, TabularDataset, load_dataset
from fusekit.errors import FusekitError
from fusekit.io import check_output_paths
from fusekit.locks import holds_output
from fusekit.options import SEED_LIMIT, literal
from fusekit.models.architecture import Architecture
from fusekit.seeding import seed_everything
from fusekit.models.tabular_input import TabularInput
from fusekit.data.labels import parse_labels
from fusekit.task_kinds import BINARY, TaskKind
from fusekit.train import TrainConfig, TrainResult, fit, predict


class Block(nn.Module):
    """Linear -> [BatchNorm] -> ReLU -> [Dropout]; with ``residual`` and equal widths, x + block(x)."""

    def __init__(self, d_in: int, d_out: int, batch_norm: bool, dropout: float, residual: bool):
        super().__init__()
        self.linear = nn.Linear(d_in, d_out)
        self.norm = nn.BatchNorm1d(d_out) if batch_norm else nn.Identity()
        self.act = nn.ReLU()
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.residual = residual and d_in == d_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.drop(self.act(self.norm(self.linear(x))))
        return x + y if self.residual else y


class SingleTaskModel(nn.Module):
    """TabularInput, an MLP of the given widths, and the task's prediction in training space:
    ``forward(cat, dense) -> {task: logit [B] | K logits [B, K] | value [B]}``."""

    input_names = ["categorical", "dense"]

    def __init__(self, cardinalities: list[int], n_dense: int, task: str, arch: Architecture,
                 kind: TaskKind = BINARY):
        super().__init__()
        arch.validate()
        self.task = task
        self.kind = kind
        self.task_kinds = {task: kind}
        self.arch = arch
        self.input = TabularInput(cardinalities, n_dense, emb_dim=arch.emb_dim)
        widths = [self.input.out_features] + [int(w) for w in arch.hidden]
        self.blocks = nn.Sequential(*[
            Block(widths[i], widths[i + 1], arch.batch_norm, arch.dropout, arch.residual) for i in range(len(arch.hidden))
        ])
        self.out = nn.Linear(widths[-1], kind.width)

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        out = self.out(self.blocks(self.input(cat, dense)))
        return {self.task: out if self.kind.kind == "multiclass" else out.squeeze(-1)}


class _Deployed(nn.Module):
    """The export view: named inputs, the task's deployed output (probability, class
    probabilities or value) as the only output."""

    def __init__(self, model: SingleTaskModel):
        super().__init__()
        self.model = model

    def forward(self, categorical: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return self.model.kind.deployed(self.model(categorical, dense)[self.model.task])


def build_model(spec: FeatureSpec, task: str, arch: Architecture, seed: int = 0,
                kind: TaskKind = BINARY) -> SingleTaskModel:
    """A freshly initialised model for ``spec``'s inputs (seeded)."""
    seed_everything(seed)
    return SingleTaskModel(spec.cardinalities, len(spec.dense), task, arch, kind)


def export_onnx(model: SingleTaskModel, spec: FeatureSpec, path: Path, sample: Split | None = None,
                extra_metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` through fusekit's one export path, with its feature specification and task in
    the metadata; parity with onnxruntime is checked on ``sample``'s first rows."""
    from fusekit.onnxio.export import export_onnx as write_onnx

    model = model.eval().cpu()
    if sample is None or len(sample) < 2:
        sample = Split.tabular(np.zeros((4, len(spec.categorical)), np.int64),
                               np.zeros((4, len(spec.dense)), np.float32))
    rows = sample.head(64)
    example = (torch.as_tensor(rows.cat, dtype=torch.int64), torch.as_tensor(rows.dense, dtype=torch.float32))
    meta = {"fusekit.feature_spec": spec.to_json(), TASK_KEY: model.task, **(extra_metadata or {})}
    doc = (f"fusekit single-task model for task {model.task!r}: inputs categorical int64 [batch, "
           f"{len(spec.categorical)}] and dense float32 [batch, {len(spec.dense)}] encoded by the feature "
           f"specification in metadata 'fusekit.feature_spec'; output {model.task!r}: {model.kind.describe()}.")
    return write_onnx(_Deployed(model).eval(), Path(path), example, ["categorical", "dense"], [model.task],
                      meta, doc, serving=False)


@dataclass
class SingleResult:
    """What train_single did."""

    task: str
    path: str | None
    kind: str
    score: str  # the metric of test_score and val_score: AUC, accuracy or R²
    test_score: float
    val_score: float
    test_metrics: dict
    best_epoch: int
    epochs: int
    train_rows: int
    seconds: float
    rows_per_second: float
    fingerprint: str
    n_parameters: int

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def train_on_dataset(dataset: TabularDataset, task: str, arch: Architecture, config: TrainConfig,
                     train_rows: int | None = None) -> tuple[SingleTaskModel, TrainResult, dict, int]:
    """Train one model on ``dataset``'s source rows; returns (model, fit result, test metrics, rows used).

    The task's kind is the dataset's (binary unless the data says otherwise). Under torchrun
    every rank trains (fusekit/train.py) and a bad input ends every rank alike.

    ``train_rows`` takes a seeded random subset of the source rows (for quick runs).
    """
    with distributed.agreement("checking the training data"):
        train, kind = _training_rows(dataset, task, config, train_rows)
    model = build_model(dataset.spec, task, arch, config.seed, kind)
    result = fit(model, train, dataset.val, [task], config)
    outputs = predict(model, dataset.test, [task], "cpu" if result.device == "cpu" else None)
    return model, result, kind.metrics(dataset.test.labels[task], outputs[task]), len(train)


def _training_rows(dataset: TabularDataset, task: str, config: TrainConfig,
                   train_rows: int | None) -> tuple[Split, TaskKind]:
    if task not in dataset.tasks:
        raise FusekitError(f"task {task!r} is not in the dataset (tasks: {', '.join(dataset.tasks)})")
    train = dataset.source_rows()
    if train_rows is not None and train_rows < len(train):
        if train_rows < 2:
            raise FusekitError(f"{{train_rows}} must be at least 2, got {train_rows}", owner="train_single()")
        pick = np.sort(np.random.default_rng([config.seed, 7]).choice(len(train), train_rows, replace=False))
        train = train.subset(pick)
    kind = dataset.kinds.get(task, BINARY)
    for name, split in (("training", train), ("validation", dataset.val), ("test", dataset.test)):
        labels = parse_labels(split.labels[task], kind, where=f"the {name} labels of task {task}")
        if kind.kind != "regression" and kind.kind != "count" and (len(labels) == 0 or labels.min() == labels.max()):
            raise FusekitError(f"the {name} rows of task {task!r} hold a single class; a {kind.kind} task needs "
                               "two or more")
    return train, kind


def check_seeds(**seeds: int) -> None:
    """FusekitError naming the first of :func:`train_single`'s seed arguments that is not a seed."""
    for name, value in seeds.items():
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < SEED_LIMIT:
            raise FusekitError(f"{{{name}}} must be a whole number from 0 to {SEED_LIMIT - 1}, got {value!r}",
                               owner="train_single()")


def _checked_dataset(data, task: str, out: Path | None, label: str | None, pool_tasks: list[str] | None,
                     holdout: float, holdout_seed: int, seed: int, split_seed: int, data_dir: Path | None,
                     dataset: TabularDataset | None, force: bool, arch: Architecture,
                     streaming=None) -> TabularDataset:
    """:func:`train_single`'s checks of its arguments, and its dataset (loaded unless given)."""
    check_seeds(seed=seed, split_seed=split_seed, holdout_seed=holdout_seed)
    if out is not None:
        check_output_paths(out, [data], owner="train_single()", argument="out", around=[data_dir])
        if Path(out).exists() and not force:
            raise FusekitError(f"{literal(out)} exists; choose another {{out}} or pass {{force=True}}",
                               owner="train_single()")
    arch.validate()
    if dataset is None:
        pool = list(pool_tasks or [task])
        if task not in pool:
            pool = [task] + pool
        others = [t for t in pool if t != task]
        if str(data) == "census-income":
            dataset = load_dataset("census-income", [task], exclude_tasks=others, data_dir=data_dir,
                                   seed=split_seed, holdout=holdout, holdout_seed=holdout_seed)
        else:
            if others:
                # The command line checks this itself, with its --exclude, before calling here.
                raise FusekitError("pool_tasks applies to census-income only; for a file, load it with "
                                   "load_dataset(..., exclude=[columns]) and pass it as dataset")
            dataset = load_dataset(data, [task], labels={task: label or task}, seed=split_seed,
                                   holdout=holdout, holdout_seed=holdout_seed, streaming=streaming)
    return dataset


@holds_output("out")
def train_single(
    data: str | Path,
    task: str,
    out: Path | None,
    *,
    label: str | None = None,
    pool_tasks: list[str] | None = None,
    arch: Architecture | None = None,
    holdout: float = 0.0,
    holdout_seed: int = 0,
    seed: int = 0,
    split_seed: int = 0,
    config: TrainConfig | None = None,
    data_dir: Path | None = None,
    train_rows: int | None = None,
    dataset: TabularDataset | None = None,
    force: bool = False,
    streaming=None,
) -> SingleResult | None:
    """Load ``data`` (``census-income`` or a CSV/Parquet path), train a model for ``task``, report
    its test metrics and export it to ``out`` (skipped when ``out`` is None).

    Census: ``pool_tasks`` are the tasks of the whole model pool (their source columns are removed
    from every model's inputs so that the pool shares inputs); default: just ``task``.
    ``holdout``: fraction of the training split kept out (recorded in the spec with ``holdout_seed``,
    which is independent of the training ``seed`` so that a whole pool shares one holdout); likewise
    ``split_seed`` fixes the validation/test split so that the pool's test AUCs are comparable.
    ``force``: replace an existing ``out``. ``streaming`` (``fusekit.stream_config.StreamOptions``): whether
    a training file is read in batches (its feature specification fitted in passes over it). Under torchrun every rank trains and rank 0 alone
    exports; the other ranks return None.
    """
    arch = arch or Architecture()
    with distributed.agreement("checking the inputs"):
        dataset = _checked_dataset(data, task, out, label, pool_tasks, holdout, holdout_seed, seed, split_seed,
                                   data_dir, dataset, force, arch, streaming)
    config = config or TrainConfig(seed=seed)
    began = time.perf_counter()
    model, result, test_metrics, n_rows = train_on_dataset(dataset, task, arch, config, train_rows)
    if not distributed.is_main():
        return None  # rank 0 exports and reports
    train_seconds = sum(r.seconds for r in result.history)
    written = None
    if out is not None:
        written = str(export_onnx(model, dataset.spec, Path(out), dataset.test))
    epochs = len(result.history)
    return SingleResult(
        task=task,
        path=written,
        kind=model.kind.kind,
        score=model.kind.score_name,
        test_score=float(test_metrics[model.kind.score_name]),
        val_score=float(result.best_val_score.get(task, float("nan"))),
        test_metrics=test_metrics,
        best_epoch=result.best_epoch,
        epochs=epochs,
        train_rows=n_rows,
        seconds=time.perf_counter() - began,
        rows_per_second=n_rows * epochs / train_seconds if train_seconds > 0 else float("nan"),
        fingerprint=dataset.spec.fingerprint(),
        n_parameters=sum(p.numel() for p in model.parameters()),
    )


def onnx_probabilities(path: Path, split: Split) -> np.ndarray:
    """Run an exported single-task model with onnxruntime on ``split``; its output (probabilities [N])."""
    from fusekit.onnxio.sessions import run, session

    sess, _ = session(path, "cpu")
    return next(iter(run(sess, split).values()))


__all__ = [
    "Architecture", "SingleTaskModel", "SingleResult", "build_model", "export_onnx", "train_on_dataset",
    "train_single", "onnx_probabilities", "predict",
]
