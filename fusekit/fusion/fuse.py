"""``fuse``: train the AKF fusion network over decomposed components and write OUT/ atomically.

OUT/ gets fused.onnx, metrics.json, checkpoint.pt, training_curves.png, gates.json, gates.png.
While training, the per-epoch checkpoint lives in a work directory beside OUT
(``.<OUT name>.fusekit-run/``) so that it survives an interruption; ``resume`` continues from it,
and it is removed once OUT/ is complete.

``fuse`` is the composition of public steps that other callers (the bench) reuse:
:func:`prepare` (parts, tasks, data and rows checked: a :class:`FusePlan`), :func:`build`
(the :class:`FusedModel`), :func:`train`, :func:`score_sources`, :func:`export`,
:func:`compare` and :func:`write_outputs`.

Started by torchrun, every rank checks the inputs and trains (data-parallel, see
fusekit/train.py); rank 0 alone holds the lock, makes the work directory, writes OUT/ and prints,
and the other ranks return None once training ends. A bad input on any rank ends every rank
with one error before training (fusekit/distributed.py's agreements).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from fusekit import distributed
from fusekit.data.dataset import Split
from fusekit.decompose.manifest import Manifest
from fusekit.errors import FusekitError, TrainingDiverged, TrainingInterrupted
from fusekit.locks import holds_output
from fusekit.options import literal
from fusekit.provenance import run_record
from fusekit.io import atomic_dir, check_output_dir, check_output_paths, portable_path
from fusekit.data.labels import parse_labels
from fusekit.fusion.finetune import reinitialised_copy, trainable_copy
from fusekit.fusion.kinds import detect_kinds
from fusekit.fusion.model import FusedModel, SourceModel, run_head, split_carry
from fusekit.fusion.masks import SequenceMask
from fusekit.fusion.masks import resolve as resolve_mask
from fusekit.fusion.options import FuseOptions, FusionOptions
from fusekit.task_kinds import TaskKind

if TYPE_CHECKING:
    from fusekit.data.features import FeatureSpec
    from fusekit.train import TrainResult

@dataclass
class FuseResult:
    """What ``fuse`` produced: where, and the figures it printed."""

    out_dir: Path
    metrics: dict
    rows: list[dict]  # per task: kind, score (the metric's name), fused, sources, average


@dataclass
class FusePlan:
    """What :func:`prepare` checked and chose: the parts, the task mapping, the options and the rows."""

    parts: Manifest
    tasks: dict[str, list[str]]
    options: FuseOptions
    spec: FeatureSpec | None  # the feature specification the models share (None: they carry none)
    train_rows: Split  # what the fusion network trains on
    val: Split  # early stopping
    test: Split  # the figures fuse reports
    holdout: bool  # train_rows are the rows the source models never saw
    data_source: object = None  # what fuse was given as data: a name, a path or a loaded dataset
    kinds: dict[str, TaskKind] = dataclasses.field(default_factory=dict)  # each task's kind
    output_index: dict[str, int] = dataclasses.field(default_factory=dict)  # each model's task output
    data_report: object = None  # how files named after the inputs were read (fusekit.data.named.DataReport)
    reading: dict = dataclasses.field(default_factory=dict)  # whether the training rows stream, and why

    @property
    def task_names(self) -> list[str]:
        """Tasks, in output order."""
        return list(self.tasks)

    @property
    def model_names(self) -> list[str]:
        """The fused models, task by task."""
        return [m for ms in self.tasks.values() for m in ms]

    @property
    def train_source(self) -> str:
        """Which training rows the fusion network sees, in words (for reports)."""
        return "holdout rows the source models never saw" if self.holdout else "training split"


# -- step 1: validation ----------------------------------------------------------------------------
def load_data(data, tasks: Mapping[str, object], spec, options: FuseOptions, parts: Manifest | None = None):
    """The dataset for the models: encoded with their specification when they carry one, else read
    from columns/arrays named after their inputs (``parts.inputs``); checked for labels and encoding.
    ``tasks``: task -> the kind (name or TaskKind) its labels are read as."""
    from fusekit.data.registry import load_for_models

    if isinstance(data, (str, Path)):
        ds = load_for_models(data, dict(tasks), inputs=parts.inputs if parts is not None else [], spec=spec,
                             labels=options.labels, val=options.val, test=options.test, data_dir=options.data_dir,
                             seed=options.split_seed, streaming=options.streaming)
    else:
        if options.val is not None or options.test is not None:
            raise FusekitError("{val} and {test} name files; with a loaded dataset give its splits instead",
                               owner="FuseOptions")
        ds = data
    for name, split in (("train", ds.train), ("validation", ds.val), ("test", ds.test)):
        missing = [t for t in tasks if t not in split.labels]
        if missing:
            raise FusekitError(f"the {name} data has no label for task(s) {literal(', '.join(missing))}; "
                               "name the label column of each task in {labels}", owner="FuseOptions")
    if spec is not None and getattr(ds, "spec", None) is not None and ds.spec.fingerprint() != spec.fingerprint():
        raise FusekitError("the data was encoded with a different feature specification than the models; "
                           "encode it with the models' specification")
    return ds


def check_inputs(parts: Manifest, split: Split) -> None:
    """The data holds every input the models take, with the fixed dims the models record."""
    arrays = split.head(2).arrays()  # a streamed split reads only its first rows
    missing = [spec.name for spec in parts.inputs if spec.name not in arrays]
    if missing:
        raise FusekitError(f"the data has no input(s) {literal(', '.join(missing))} that the models take (it holds "
                           f"{literal(', '.join(arrays))}); give data with an array or column per model input")
    for spec in parts.inputs:
        got = arrays[spec.name].shape[1:]
        want = spec.shape[1:]
        if len(got) != len(want) or any(isinstance(w, int) and w != g for w, g in zip(want, got)):
            raise FusekitError(f"the data's {literal(spec.name)} has shape [N, {', '.join(map(str, got))}] but the "
                               f"models take [batch, {', '.join(map(str, want))}]; give data of the models' shape")


def prepare(parts: Path | str | Manifest, tasks: Mapping[str, Sequence[str]] | None, data,
            options: FuseOptions | None = None, out_dir: Path | None = None) -> FusePlan:
    """Check everything a fusion run needs before any training, and choose its rows.

    ``parts``: a parts directory (loaded and checksummed) or a loaded Manifest. ``tasks``: the
    models of each task, or None for the grouping by the models' ``fusekit.task`` metadata.
    ``data``: as for :func:`fuse`. ``out_dir``, when given, must be free (or ``options.force``).
    FusekitError on bad input; nothing is written.
    """
    from fusekit.train import check_global_batch, resolve_device

    options = options or FuseOptions()
    options.validate()  # a caller may have changed a field since it was made (train_rows='x')
    resolve_device(options.training.device)  # a missing GPU is reported before anything is written
    check_global_batch(options.training.batch_size)
    manifest = parts if isinstance(parts, Manifest) else Manifest.load(Path(parts))
    mapping = manifest.check_tasks(tasks if tasks is not None else manifest.task_groups(),
                                   ignore_metadata=options.ignore_task_metadata)
    manifest.boundary_layouts()  # refuses boundaries that are neither vectors, feature maps nor sequences, early
    sequence_mask(manifest, options.fusion)  # a mask the models do not read is refused before the data is
    names = [m for ms in mapping.values() for m in ms]
    _check_spliceable(manifest, names)
    spec = manifest.feature_spec(names)
    if out_dir is not None:
        check_output_dir(Path(out_dir), options.force)
    # Labels are read as each task's kind, detected from the sources' heads before any label is
    # seen; an output with no activation reads its labels as numbers, and the labels then decide.
    early, _ = detect_kinds(manifest, mapping, None, options.task_kinds, options.outputs)
    ds = load_data(data, early, spec, options, manifest)
    holdout = bool(spec is not None and spec.holdout) and options.train_rows == "holdout"
    seed = options.training.seed
    rows = (ds.fusion_rows() if holdout else ds.train).sample(options.max_rows, seed)
    plan = FusePlan(manifest, mapping, options, spec, rows, ds.val.sample(options.max_rows, seed + 1),
                    ds.test.sample(options.max_rows, seed + 2), holdout, data)
    plan.data_report = getattr(ds, "report", None)
    plan.reading = dict(getattr(ds, "reading", None) or {})
    check_inputs(manifest, plan.test)
    plan.kinds, plan.output_index = detect_kinds(manifest, mapping, ds.train.labels, options.task_kinds,
                                                 options.outputs)
    for task, kind in plan.kinds.items():
        for name, split in (("training", plan.train_rows), ("validation", plan.val), ("test", plan.test)):
            split.labels[task] = parse_labels(split.labels[task], kind, where=f"the {name} labels of task {task}")
    if plan.data_report is not None:
        plan.data_report.labels = [dataclasses.replace(lb, kind=plan.kinds[lb.task].kind, classes=plan.kinds[lb.task].classes)
                                   for lb in plan.data_report.labels]
        if options.on_data is not None and distributed.is_main():
            options.on_data(plan.data_report)
    return plan


def _check_spliceable(manifest: Manifest, names: list[str]) -> None:
    """FusekitError before any data is read when a part that fused.onnx must hold as its own graph
    (a Loop run once per row or bag: onnxio/splice.py) could not be written there."""
    from fusekit.onnxio.splice import is_spliced

    for name in names:
        head = manifest.head_path(name)
        for path in [*manifest.component_paths(name), *([head] if head else [])]:
            is_spliced(path)


# -- step 2: the model -----------------------------------------------------------------------------
def _onnx_inputs(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in inits]


def load_sources(parts: Manifest, names: list[str], heads: bool = True,
                 output_index: dict[str, int] | None = None) -> dict[str, SourceModel]:
    """The chosen models' components (and heads) as frozen torch modules; ``output_index``: which
    head output is each model's task output (default the first)."""
    from fusekit.onnxio.interpreter import load_component
    from fusekit.onnxio.splice import spliceable

    sources = {}
    for name in names:
        paths = parts.component_paths(name)
        head_path = parts.head_path(name) if heads else None
        sources[name] = SourceModel(
            name=name,
            components=[spliceable(load_component(p), p) for p in paths],
            level1_inputs=_onnx_inputs(paths[0]),
            head=spliceable(load_component(head_path), head_path) if head_path else None,
            component_paths=[str(p) for p in paths],
            head_path=str(head_path) if head_path else None,
            output_index=(output_index or {}).get(name, 0),
        )
    return sources


def build_model(parts: Manifest, tasks: dict[str, list[str]], fusion: FusionOptions,
                kinds: dict[str, TaskKind] | None = None, output_index: dict[str, int] | None = None) -> FusedModel:
    """The fused model over the decomposed parts (components re-initialised when not pretrained)."""
    fusion.check_task_count(len(tasks))
    names = [m for ms in tasks.values() for m in ms]
    sources = load_sources(parts, names, heads=fusion.mode == "residual", output_index=output_index)
    torch.manual_seed(fusion.seed)
    if not fusion.pretrained:
        for k, name in enumerate(names):
            src = sources[name]
            src.components = [reinitialised_copy(c, p, fusion.seed * 1000 + 10 * k + i)
                              for i, (c, p) in enumerate(zip(src.components, src.component_paths))]
            if src.head is not None:
                src.head = reinitialised_copy(src.head, src.head_path, fusion.seed * 1000 + 10 * k + 9)
    elif fusion.finetune != "none":
        first = {"last": -1, "all": 0}.get(fusion.finetune)  # heads: no component is fine-tuned
        for name in names:
            src = sources[name]
            if first is not None:
                start = first % len(src.components)
                src.components = src.components[:start] + [
                    trainable_copy(c, p) for c, p in zip(src.components[start:], src.component_paths[start:])]
            if src.head is not None:
                src.head = trainable_copy(src.head, src.head_path)
    mask = sequence_mask(parts, fusion)
    return FusedModel(tasks, sources, parts.boundary_layouts(), parts.input_names, fusion, kinds, mask)


def sequence_mask(parts: Manifest, fusion: FusionOptions) -> SequenceMask | None:
    """The mask input that AKF pools sequence boundaries with (fusion/masks.py), or None."""
    return resolve_mask(fusion.sequence_mask, parts.inputs, parts.boundaries, parts.batch_name())


def build(plan: FusePlan) -> FusedModel:
    """The fused model of ``plan`` (untrained fusion network)."""
    return build_model(plan.parts, plan.tasks, plan.options.fusion, plan.kinds, plan.output_index)


# -- step 3: training ------------------------------------------------------------------------------
def training_config(options: FuseOptions):
    """The TrainConfig a fusion run trains with: paper mode warms up before early stopping counts
    (``PAPER_WARMUP_EPOCHS``, below the epoch budget) unless ``warmup_epochs`` is set."""
    from fusekit.fusion.options import PAPER_WARMUP_EPOCHS

    config = options.training
    if config.warmup_epochs is None and options.fusion.mode == "paper":
        config = dataclasses.replace(config, warmup_epochs=min(PAPER_WARMUP_EPOCHS, config.max_epochs - 1))
    return config


def train(plan: FusePlan, model: FusedModel, work_dir: Path | None = None) -> TrainResult:
    """Train ``model`` on the plan's rows with early stopping on its validation rows.

    The model ends on CPU in eval mode with the best epoch's weights. With ``work_dir`` a
    checkpoint is written there after every epoch, and continued from when ``options.resume``.
    """
    from fusekit.train import CHECKPOINT_NAME, fit

    config = training_config(plan.options)
    if work_dir is not None:
        config = dataclasses.replace(config, checkpoint_dir=work_dir,
                                     resume=plan.options.resume and (work_dir / CHECKPOINT_NAME).exists())
    result = fit(model, plan.train_rows, plan.val, plan.task_names, config, on_epoch=plan.options.on_epoch,
                 kinds=plan.kinds)
    model.cpu().eval()
    return result


def work_dir_for(out_dir: Path) -> Path:
    """Where the per-epoch checkpoint of an unfinished run is kept."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.fusekit-run"


def _run_identity(plan: FusePlan) -> dict:
    # Epochs and patience are left out on purpose: a resumed run may be given a larger budget.
    options = plan.options
    return {"tasks": plan.tasks, "components": {m: plan.parts.model(m).component_sha256 for m in plan.model_names},
            "fusion": options.fusion.to_dict(), "lr": options.training.lr, "batch_size": options.training.batch_size,
            "weight_decay": options.training.weight_decay, "seed": options.training.seed, "max_rows": options.max_rows,
            "split_seed": options.split_seed, "train_rows": options.train_rows,
            "kinds": {t: k.to_dict() for t, k in plan.kinds.items()}, "outputs": plan.output_index}


def _start_work_dir(plan: FusePlan, out_dir: Path) -> Path:
    """The work directory of ``out_dir``'s run: a new one, or the interrupted one to resume."""
    work = work_dir_for(out_dir)
    identity = _run_identity(plan)
    marker = work / "run.json"
    if plan.options.resume:
        if not marker.is_file():
            raise FusekitError(f"nothing to resume: no interrupted run at {literal(work)}; run without {{resume}}",
                               owner="FuseOptions")
        try:
            recorded = json.loads(marker.read_text())
        except (OSError, ValueError):
            recorded = None  # unreadable: not a run this fuse can continue
        if recorded != json.loads(json.dumps(identity)):
            raise FusekitError(f"the interrupted run at {literal(work)} used other tasks, parts or options; "
                               "repeat them exactly to resume, or pass {force=True} to start over", owner="FuseOptions")
        return work
    if work.exists():
        if not plan.options.force:
            raise FusekitError(f"an interrupted run exists at {literal(work)}; pass {{resume=True}} to continue it or "
                               "{force=True} to start over", owner="FuseOptions")
        shutil.rmtree(work)
    with atomic_dir(work) as tmp:  # a full or read-only disk: one line, and no half-made work dir
        (tmp / "run.json").write_text(json.dumps(identity, indent=1))
    return work


def _end_failed_run(work: Path, resumed: bool, error: BaseException) -> BaseException:
    """What a failed run leaves: an interruption keeps its work directory (``resume`` continues
    it), and so does a failed resumed run (the user's earlier checkpoint); a new run that failed
    on its input removes it, so that the next plain run is not refused. Returns the error to raise.
    Only rank 0 owns the work directory."""
    if isinstance(error, (TrainingInterrupted, KeyboardInterrupt)) or resumed or not distributed.is_main():
        return error
    shutil.rmtree(work, ignore_errors=True)
    return error.without_checkpoint() if isinstance(error, TrainingDiverged) else error


# -- step 4: scoring -------------------------------------------------------------------------------
class SourcePaths(nn.Module):
    """Every source model alone, through its own components and head, fed as the fused model is:
    ``forward(*inputs)`` (in ``input_names`` order) -> each source's task output, as it gives it."""

    def __init__(self, sources: dict[str, SourceModel], input_names: list[str]):
        super().__init__()
        self.names = list(sources)
        self.input_names = list(input_names)
        self.level1_inputs = [list(src.level1_inputs) for src in sources.values()]
        self.output_index = [src.output_index for src in sources.values()]
        missing = [m for m, src in sources.items() if src.head is None]
        if missing:
            raise FusekitError(f"model(s) {', '.join(missing)} were loaded without their heads; load them with heads")
        self.paths = nn.ModuleList(nn.ModuleList([*src.components, src.head]) for src in sources.values())

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        named = dict(zip(self.input_names, inputs))
        out = []
        for path, level1, index in zip(self.paths, self.level1_inputs, self.output_index):
            h, carry = split_carry(path[0](*[named[n] for n in level1]))
            for module in path[1:-1]:
                h, carry = split_carry(module(h, *carry))
            out.append(run_head(path[-1], h, carry, index))
        return tuple(out)


def source_outputs(sources: dict[str, SourceModel], input_names: list[str], split: Split,
                   batch_size: int = 16384) -> dict[str, np.ndarray]:
    """Each source model's task output on ``split``, computed through its own components and head
    by the batched runner that also gives the fused model's torch outputs."""
    from fusekit.onnxio.export import torch_outputs_of

    batches = ([b[n] for n in input_names] for b in split.input_batches(batch_size))
    return dict(zip(sources, torch_outputs_of(SourcePaths(sources, input_names), batches)))



def score_sources(plan: FusePlan, split: Split | None = None) -> dict[str, np.ndarray]:
    """Each fused source model's task output on ``split`` (default the plan's test rows)."""
    sources = load_sources(plan.parts, plan.model_names, heads=True, output_index=plan.output_index)
    return source_outputs(sources, plan.parts.input_names, plan.test if split is None else split)


def compare(plan: FusePlan, fused: dict[str, np.ndarray], sources: dict[str, np.ndarray],
            val_score: dict[str, float]) -> tuple[dict[str, dict], list[dict]]:
    """Per task, the test metrics of the fused model, of each source and of the sources' plain
    average (in the kind's mix space); scores are each kind's (AUC, accuracy, R²).

    Returns metrics.json's ``per_task`` and the rows fuse prints (task, fused, sources, average).
    """
    test = plan.test
    rows, per_task = [], {}
    for task in plan.task_names:
        kind = plan.kinds[task]
        y = test.labels[task]
        fused_metrics = kind.metrics(y, fused[task])
        src = {m: kind.score(y, sources[m]) for m in plan.tasks[task]}
        average = kind.mix_metrics(y, kind.average([sources[m] for m in plan.tasks[task]]))
        name = kind.score_name
        per_task[task] = {"kind": kind.to_dict(), "score": name, "val_score": val_score[task],
                          "test_score": fused_metrics[name], "test_metrics": fused_metrics,
                          "sources_test_score": src, "average_test_score": average[name],
                          "average_test_metrics": average, "gain_over_average": fused_metrics[name] - average[name]}
        rows.append({"task": task, "kind": kind.kind, "score": name, "fused": fused_metrics[name], "sources": src,
                     "average": average[name]})
    return per_task, rows


@dataclass
class Guard:
    """Per task, the validation score of the trained model and of the sources' plain average, and
    the tasks whose trained output was replaced by the average because it scored below it."""

    trained: dict[str, float]
    average: dict[str, float]
    restored: list[str]
    final: dict[str, float]


def guard(plan: FusePlan, model: FusedModel, untrained: dict[str, torch.Tensor]) -> Guard:
    """Keep, per task, the better on validation of the trained output and the sources' plain average.

    Residual mode: the untrained output is exactly the plain average of the task's sources, so
    the task's own entries go back to ``untrained`` (the model's state before training). Paper mode
    has no average inside its network: the task's output becomes the average of its source
    models run whole (components and heads as decomposed, :class:`SourcePaths`; fused.onnx then
    holds them). Either way the exported model is never below that average on validation.
    """
    from fusekit.train import evaluate

    trained = evaluate(model, plan.val, plan.task_names, "cpu", kinds=plan.kinds)
    average = average_scores(plan, plan.val, score_sources(plan, plan.val))
    restored = [t for t in plan.task_names if trained[t] < average[t]]
    if restored and plan.options.fusion.mode == "residual":
        model.restore_tasks(restored, untrained)
    for task in restored if plan.options.fusion.mode == "paper" else []:
        names = plan.tasks[task]
        sources = load_sources(plan.parts, names, heads=True, output_index=plan.output_index)
        model.use_average(task, SourcePaths(sources, plan.parts.input_names).eval())
    final = evaluate(model, plan.val, plan.task_names, "cpu", kinds=plan.kinds) if restored else dict(trained)
    return Guard(trained, average, restored, final)


# -- step 5: outputs -------------------------------------------------------------------------------
@dataclass
class Exported:
    """fused.onnx as written, checked against the torch model on the test rows."""

    path: Path
    parity: float  # max abs difference of the outputs, torch vs onnxruntime
    outputs: dict[str, np.ndarray]  # onnxruntime's, per task, on the plan's test rows



def export(plan: FusePlan, model: FusedModel, path: Path) -> Exported:
    """Write ``model`` as ONNX with fusekit's metadata and check it on the plan's test rows."""
    from fusekit.fusion.export import export_fused, parity_and_outputs

    test = plan.test
    metadata = {"fusekit.source_sha256": json.dumps({m: plan.parts.model(m).sha256 for m in plan.model_names}),
                "fusekit.task_models": json.dumps(plan.tasks)}
    if plan.spec is not None:
        metadata["fusekit.feature_spec"] = plan.spec.to_json()
    arrays = test.head(2).arrays()
    example = tuple(torch.from_numpy(np.require(arrays[n], requirements=["C", "W"])) for n in model.input_names)
    specs = {spec.name: spec for spec in plan.parts.inputs}
    dynamic = [specs[n].dynamic_axes() if n in specs else {} for n in model.input_names]
    onnx_path = export_fused(model, path, example, metadata, dynamic_axes=dynamic)
    parity, deployed = parity_and_outputs(model, onnx_path, test, tol=plan.options.parity_tol)
    return Exported(onnx_path, parity, deployed)


def average_scores(plan: FusePlan, split: Split, sources: dict[str, np.ndarray]) -> dict[str, float]:
    """Per task, the score (AUC, accuracy, R²) of the plain average of the task's sources on ``split``."""
    return {task: plan.kinds[task].mix_metrics(split.labels[task],
                                               plan.kinds[task].average([sources[m] for m in plan.tasks[task]]))
            [plan.kinds[task].score_name] for task in plan.task_names}



def write_outputs(plan: FusePlan, model: FusedModel, result: TrainResult, per_task: dict[str, dict], parity: float,
                  out: Path, checkpoint: Path | None, seconds: float) -> dict:
    """Write gates.json, gates.png, training_curves.png, checkpoint.pt (a copy of ``checkpoint``)
    and metrics.json into ``out``; returns the metrics. ``seconds``: the run's time so far.

    The training curves draw the sources' average on the validation rows (``per_task``'s
    ``average_val_score``, when present) as the reference the fusion has to beat."""
    from fusekit.fusion.report import gate_statistics, plot_gates, plot_training

    out = Path(out)
    options, training = plan.options, plan.options.training
    history = result.to_dict()["history"]
    gates = gate_statistics(model, plan.test)
    (out / "gates.json").write_text(json.dumps(gates, indent=1))
    plot_gates(gates, out / "gates.png")
    reference = {t: per_task[t]["average_val_score"] for t in plan.task_names if "average_val_score" in per_task[t]}
    plot_training(history, out / "training_curves.png", best_epoch=result.best_epoch, reference=reference or None)
    if checkpoint is not None:
        shutil.copy2(checkpoint, out / "checkpoint.pt")
    metrics = {
        "tasks": plan.tasks, "per_task": per_task,
        "mean_test_score": float(np.mean([per_task[t]["test_score"] for t in plan.task_names])),
        "epochs": len(result.history), "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
        "train_seconds": result.seconds, "total_seconds": seconds,
        "device": result.device, "amp": result.amp, "processes": result.processes,
        "rows": {"train": len(plan.train_rows), "validation": len(plan.val), "test": len(plan.test),
                 "train_source": plan.train_source},
        "trainable_parameters": sum(p.numel() for p in model.fusion_parameters()),
        "parameters": model.parameter_count(),
        "fusion": options.fusion.to_dict(),
        "sequence_mask": model.sequence_mask.to_dict() if model.sequence_mask else None,
        "training": {"lr": training.lr, "batch_size": training.batch_size, "weight_decay": training.weight_decay,
                     "max_epochs": training.max_epochs, "patience": training.patience, "seed": training.seed,
                     "warmup_epochs": training_config(options).warmup_epochs or 0},
        "onnx_parity_max_abs_diff": parity, "history": history,
        # How to repeat this run from its output alone: command line, data and checksums, split, versions.
        "run": run_record(options.command, plan.data_source, split_seed=options.split_seed, data_dir=options.data_dir),
        "parts": portable_path(plan.parts.root or ".", out),
    }
    if plan.data_report is not None:
        metrics["data"] = plan.data_report.to_dict()
    if plan.reading:
        metrics.setdefault("data", {})["reading"] = dict(plan.reading)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return metrics


# -- the command -----------------------------------------------------------------------------------
@holds_output("out_dir")  # one run per output and work directory
def fuse(parts_dir: Path, tasks: Mapping[str, Sequence[str]] | None, data, out_dir: Path,
         options: FuseOptions | None = None) -> FuseResult | None:
    """Train the fusion network on the fusion rows, export fused.onnx, and write OUT/ atomically.

    ``tasks``: the models of each task (None: grouped by their ``fusekit.task`` metadata).
    ``data`` is ``"census-income"``, a CSV/Parquet path (with ``options.labels``), or an already
    loaded TabularDataset. Raises FusekitError on bad input before anything is written.
    Under torchrun, ranks other than 0 return None after training (rank 0 writes OUT/).
    """
    from fusekit.train import check_labels

    started = time.perf_counter()
    out_dir = Path(out_dir)
    with distributed.agreement("checking the inputs"):
        check_output_paths(out_dir, [parts_dir if not isinstance(parts_dir, Manifest) else parts_dir.root,
                                     data if isinstance(data, (str, Path)) else None], owner="fuse()",
                           around=[getattr(options, "data_dir", None)])
        plan = prepare(parts_dir, tasks, data, options, out_dir)
        for rows, what in ((plan.train_rows, "training"), (plan.val, "validation"), (plan.test, "test")):
            check_labels(rows, plan.task_names, what, plan.kinds)  # before any training, not after it
        model = build(plan)
        untrained = copy.deepcopy(model.state_dict())
        work = _start_work_dir(plan, out_dir) if distributed.is_main() else work_dir_for(out_dir)
    try:
        return _train_and_write(plan, model, untrained, work, out_dir, started)
    except BaseException as exc:
        raise _end_failed_run(work, plan.options.resume, exc) from None


def _train_and_write(plan: FusePlan, model: FusedModel, untrained: dict, work: Path, out_dir: Path,
                     started: float) -> FuseResult | None:
    from fusekit.train import CHECKPOINT_NAME

    result = train(plan, model, work)
    if not distributed.is_main():
        return None  # rank 0 scores, exports and writes
    kept = guard(plan, model, untrained)
    source_out = score_sources(plan)
    with atomic_dir(out_dir, force=plan.options.force) as tmp:
        exported = export(plan, model, tmp / "fused.onnx")
        # The test scores are the deployed file's (onnxruntime), so `fusekit eval fused.onnx` prints the same.
        per_task, rows = compare(plan, exported.outputs, source_out, kept.final)
        for task, row in zip(plan.task_names, rows):
            per_task[task].update({"average_val_score": kept.average[task], "trained_val_score": kept.trained[task],
                                   "restored_average": task in kept.restored,
                                   "below_average_on_validation": kept.final[task] < kept.average[task]})
            row["restored_average"] = task in kept.restored
        metrics = write_outputs(plan, model, result, per_task, exported.parity, tmp, work / CHECKPOINT_NAME,
                                time.perf_counter() - started)
    shutil.rmtree(work, ignore_errors=True)
    return FuseResult(out_dir, metrics, rows)
