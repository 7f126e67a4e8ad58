"""The one training loop of fusekit: single-task models, the fusion network and the baselines.

A model takes its inputs as tensors, in the order of its ``input_names`` (fusekit's tabular
models: ``categorical``, ``dense``), and returns ``{task: prediction}`` in the training space of
each task's kind (fusekit/task_kinds.py: a logit, K logits, a value). Only parameters with
``requires_grad`` are optimised, so frozen components stay frozen. Data stays in memory as
tensors on the training device; batches are slices of a seeded permutation (no per-row Python).
A split streamed from a file (``fusekit.data.batches.StreamedSplit``) gives its batches from a
seeded shuffle buffer instead, cast to the tensors' dtypes batch by batch; validation and
prediction read such a split in order, batch by batch.
Early stopping watches the mean over tasks of each kind's score (AUC, accuracy, R²).

Started by torchrun (fusekit/distributed.py), ``fit`` trains data-parallel: the model is wrapped
in DistributedDataParallel (trainable parameters only), every rank draws the same seeded
permutation and takes a rank-strided share of each global batch (``TrainConfig.batch_size`` is
the global batch, divided among the ranks), rank 0 computes the validation score and sends it to
the others, so that every rank takes the same early-stopping decision, and only rank 0 writes
checkpoints. A streamed training split is sharded instead: each rank reads only its rows of the
file (``StreamedSplit.shard(rank, world, equal=True)``: a contiguous block, so that a rank reads
only its own Parquet row groups; the last ``rows % world`` rows of the split are left out so that
every shard has as many rows), shuffles them with the run's
seed and takes batches of ``batch_size / world`` rows; the shards being equal, every rank takes
the same number of steps (DDP's all-reduce needs that) and every step's batches are the same
size, so the ranks' mean losses weigh 1 each, as :func:`shard` weighs them for an even split, and
DDP's averaged gradient is that of one batch of ``batch_size`` rows (other rows than one process
draws, since each rank shuffles its own shard). Outside torchrun none of this runs.
"""
from __future__ import annotations

import copy
import io
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from fusekit import distributed
from fusekit.data.dataset import Split
from fusekit.errors import FusekitError, OptionError, TrainingDiverged, TrainingInterrupted
from fusekit.io import atomic_file
from fusekit.options import literal
from fusekit.seeding import seed_everything
from fusekit.task_kinds import BINARY, TaskKind
from fusekit.train_config import DEVICES, TrainConfig  # noqa: F401  (TrainConfig's home before train_config.py)

CHECKPOINT_NAME = "checkpoint.pt"


@dataclass
class EpochRecord:
    """What one epoch did."""

    epoch: int
    train_loss: float
    val_score: dict[str, float]  # per task, its kind's score (AUC for binary tasks)
    mean_val_score: float
    seconds: float


@dataclass
class TrainResult:
    """The outcome of :func:`fit`; the model holds the best epoch's weights."""

    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_val_score: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"
    amp: bool = False
    stopped_early: bool = False
    processes: int = 1  # the data-parallel processes that trained (torchrun's world)

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return asdict(self)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name != "cpu" and not name.startswith("cuda"):
        raise OptionError(f"{{device}} must be one of {', '.join(DEVICES)}; got {name!r}", owner="TrainConfig")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise OptionError(f"{{device={name!r}}} was asked for but torch sees no CUDA GPU; "
                          "use {device='cpu'} or {device='auto'}", owner="TrainConfig")
    return torch.device(name)


def check_labels(split: Split, tasks: list[str], what: str, kinds: dict[str, TaskKind] | None = None) -> None:
    """FusekitError unless every classification task's labels on ``split`` hold two classes or more:
    early stopping and the reported AUC need them, so a constant label or too few rows is refused
    before training (regression and count tasks are not checked here)."""
    for task in tasks:
        if task not in split.labels or (kinds or {}).get(task, BINARY).kind in ("regression", "count"):
            continue  # _tensors names a missing label
        labels = np.asarray(split.labels[task]).reshape(-1)
        values = np.unique(labels[np.isfinite(labels)]) if labels.size else labels
        if len(values) < 2:
            held = f"only the value {values[0]:g}" if len(values) else "no rows"
            raise FusekitError(f"the {what} rows ({len(labels)}) of task {literal(task)} have {held}; "
                               "a classification task needs two classes or more: use more rows or check the label column")


def input_names_of(model: nn.Module, split: Split) -> list[str]:
    """The order in which ``model`` takes the split's inputs: its ``input_names``, else the split's."""
    held = split.input_names
    names = list(getattr(model, "input_names", None) or held)
    missing = [n for n in names if n not in held]
    if missing:
        raise FusekitError(f"the data has no input(s) {literal(', '.join(missing))} that the model takes "
                           f"(the data holds {literal(', '.join(held))}); give data with those inputs")
    return names


def kinds_of(model: nn.Module, tasks: list[str], kinds: dict[str, TaskKind] | None = None) -> dict[str, TaskKind]:
    """Each task's kind: given, else the model's ``task_kinds``, else binary."""
    known = dict(getattr(model, "task_kinds", None) or {})
    known.update(kinds or {})
    return {t: known.get(t, BINARY) for t in tasks}


def _as_tensor(array: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    tensor = torch.from_numpy(np.require(array, requirements=["C", "W"]))  # torch cannot wrap read-only arrays
    return tensor.to(device) if device is not None else tensor


def _streamed(split) -> bool:
    """A split read from its file batch by batch (``fusekit.data.batches.StreamedSplit``)."""
    return hasattr(split, "batches")


def _check_tasks(split, tasks: list[str]) -> None:
    missing = [t for t in tasks if t not in split.labels]
    if missing:
        raise FusekitError(f"the data has no labels for task(s) {', '.join(missing)}; give labels for every task")


def _train_batches(split, names: list[str], tasks: list[str], kinds: dict[str, TaskKind], device: torch.device,
                   seed: int, place: "distributed.Launch | None" = None):
    """The epoch source of ``fit``: tensors in memory, or the streamed split's batches made tensors
    (under torchrun: this rank's equal shard of them, see the module docstring)."""
    from fusekit.data.batches import MemoryBatches

    _check_tasks(split, tasks)
    if not _streamed(split):
        return MemoryBatches(*_tensors(split, names, tasks, kinds, device), device)
    if place is not None and place.world > 1:
        if len(split) < place.world:
            raise FusekitError(f"the training split has {len(split)} rows, fewer than the {place.world} processes "
                               "of this run; give more rows or start fewer processes")
        split = split.shard(place.rank, place.world, equal=True)
    return _StreamedBatches(split, names, tasks, kinds, device, seed)


class _StreamedBatches:
    """A streamed split's epochs as tensors on ``device`` (ids cast to the models' dtype per batch)."""

    def __init__(self, split, names, tasks, kinds, device, seed: int):
        self.split, self.names, self.tasks, self.kinds, self.device, self.seed = split, names, tasks, kinds, device, seed

    def steps(self, batch_size: int) -> int:
        return self.split.steps(batch_size)

    def probe(self) -> list[torch.Tensor]:
        """The inputs of the split's first two rows (for :func:`_data_parallel`'s probe step)."""
        inputs, _ = next(iter(self.split.batches(2)))
        return [_as_tensor(inputs[n], self.device) for n in self.names]

    def epoch(self, batch_size: int, generator: torch.Generator, epoch: int):
        # The shuffle is drawn from (run seed, epoch), not from the generator: a resumed run needs no state.
        for inputs, labels in self.split.batches(batch_size, seed=self.seed, epoch=epoch):
            yield ([_as_tensor(inputs[n], self.device) for n in self.names],
                   [_as_tensor(np.asarray(labels[t], dtype=self.kinds[t].label_dtype), self.device) for t in self.tasks])


def _tensors(split: Split, names: list[str], tasks: list[str], kinds: dict[str, TaskKind], device: torch.device):
    inputs = [_as_tensor(split.inputs[n], device) for n in names]
    labels = [_as_tensor(np.asarray(split.labels[t], dtype=kinds[t].label_dtype), device) for t in tasks]
    return inputs, labels


@torch.no_grad()
def predict(model: nn.Module, split: Split, tasks: list[str], device: torch.device | str | None = None,
            batch_size: int = 16384, kinds: dict[str, TaskKind] | None = None) -> dict[str, np.ndarray]:
    """Deployed outputs per task for every row of ``split`` (model in eval mode): probabilities of
    binary and multiclass tasks (or logits, when that is the task's output form), values otherwise."""
    device = torch.device(device) if device is not None else next(
        (t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
    kinds = kinds_of(model, tasks, kinds)
    names = input_names_of(model, split)
    was_training = model.training
    model.eval()
    if _streamed(split):
        chunks = ([_as_tensor(inputs[n], device) for n in names] for inputs, _ in split.batches(batch_size))
    else:
        inputs = [_as_tensor(split.inputs[n]) for n in names]
        chunks = ([x[start:start + batch_size].to(device) for x in inputs] for start in range(0, len(split), batch_size))
    out: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    for batch in chunks:
        preds = model(*batch)
        for t in tasks:
            out[t].append(kinds[t].deployed(preds[t].float()).cpu().numpy())
    model.train(was_training)
    return {t: np.concatenate(v) if v else np.zeros((0, *kinds[t].shape), np.float32) for t, v in out.items()}


def evaluate(model: nn.Module, split: Split, tasks: list[str], device: torch.device | str | None = None,
             batch_size: int = 16384, kinds: dict[str, TaskKind] | None = None) -> dict[str, float]:
    """Each task's score on ``split`` (its kind's: AUC for binary tasks, accuracy, R²)."""
    kinds = kinds_of(model, tasks, kinds)
    outputs = predict(model, split, tasks, device, batch_size, kinds)
    return {t: kinds[t].score(split.labels[t], outputs[t]) for t in tasks}


def check_global_batch(batch_size: int, processes: int | None = None) -> None:
    """OptionError unless the global ``batch_size`` divides among the run's processes (1 outside torchrun)."""
    processes = distributed.world() if processes is None else processes
    if processes > 1 and batch_size % processes:
        raise OptionError(f"{{batch_size={batch_size}}} is the global batch of the {processes} processes of this run "
                          f"and must divide among them; give a multiple of {processes}", owner="TrainConfig")


def batch_starts(n: int, batch_size: int, processes: int = 1) -> range | list[int]:
    """Where each global batch of an epoch over ``n`` rows starts. With several processes a last
    batch of fewer rows than processes is left out (every rank needs a row to take a step)."""
    starts = range(0, n, batch_size)
    if processes > 1 and n % batch_size and n % batch_size < processes:
        return starts[:-1]
    return starts


def shard(batch: torch.Tensor, place: "distributed.Launch") -> tuple[torch.Tensor, float]:
    """This rank's rows of one global batch (rank-strided) and the weight of its mean loss.

    DDP averages the ranks' gradients; weighting each rank's mean by its share of the batch
    (``rows * world / batch rows``) makes that average the gradient of the whole batch's mean
    loss, as one process computes it, also when a last batch does not divide evenly.
    """
    if place.world == 1:
        return batch, 1.0
    mine = batch[place.rank::place.world]
    return mine, len(mine) * place.world / len(batch)


def _sharded_epoch(source, batch_size: int, generator: torch.Generator, place: "distributed.Launch"):
    """One epoch of an in-memory source under torchrun: the same seeded permutation on every rank,
    each global batch split rank-strided (``shard``); yields (inputs, labels, loss weight)."""
    order = torch.randperm(source.rows, generator=generator).to(source.device)
    for start in batch_starts(source.rows, batch_size, place.world):
        idx, weight = shard(order[start:start + batch_size], place)
        yield [x[idx] for x in source.inputs], [y[idx] for y in source.labels], weight


def _data_parallel(model: nn.Module, inputs: list[torch.Tensor], device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel; ``find_unused_parameters`` only when a probe step
    shows a trainable parameter that the forward pass does not reach (it costs a graph walk per step)."""
    from torch.nn.parallel import DistributedDataParallel

    was_training = model.training
    model.eval()  # the probe draws no dropout and moves no normalisation statistics
    out = model(*[x[:2] for x in inputs])
    sum(o.float().sum() for o in out.values()).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    unused = any(p.grad is None for p in trainable)
    for p in trainable:
        p.grad = None
    model.train(was_training)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=unused)


def _save_checkpoint(path: Path, state: dict) -> None:
    # Serialised in memory and written by Python, so that a full or read-only disk is an OSError
    # with its errno (atomic_file's one-line error), not torch's RuntimeError from its own writer.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def _read_checkpoint(path: Path | None) -> bytes:
    if path is None or not path.exists():
        raise OptionError(f"no checkpoint to resume from at {literal(path)}; run without {{resume}}",
                          owner="TrainConfig")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise OptionError(f"cannot read checkpoint {literal(path)} ({type(exc).__name__}); delete it and train "
                          "without {resume}", owner="TrainConfig") from exc


def _load_checkpoint(path: Path, data: bytes | None = None) -> dict:
    """The checkpoint's state: from ``data`` (its bytes, as rank 0 read and sent them) or the file."""
    try:
        return torch.load(io.BytesIO(data) if data is not None else path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise OptionError(f"cannot read checkpoint {literal(path)} ({type(exc).__name__}); delete it and train "
                          "without {resume}", owner="TrainConfig") from exc


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def _progress_bars():
    """tqdm, or None when it is not installed."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm


def _progress_line(text: str, tqdm=None) -> None:
    """One progress line on stderr (through tqdm while a bar is drawn, so the bar is not torn)."""
    if tqdm is not None:
        tqdm.write(text, file=sys.stderr)
    else:
        print(text, file=sys.stderr, flush=True)


def fit(model: nn.Module, train: Split, val: Split, tasks: list[str], config: TrainConfig | None = None,
        on_epoch: Callable[[EpochRecord], None] | None = None,
        kinds: dict[str, TaskKind] | None = None) -> TrainResult:
    """Train ``model`` with Adam on the sum over tasks of each kind's mean loss; early-stop on the
    mean validation score (``kinds``: each task's kind, default the model's ``task_kinds`` or binary).

    Early stopping: after ``config.patience`` epochs without a better mean validation score,
    counted only after the first ``config.warmup_epochs`` (the best weights are kept from every
    epoch, warm-up included). Returns the history; the model ends with the best epoch's weights. With
    ``config.checkpoint_dir`` a checkpoint is written after every epoch and
    ``config.resume`` continues from it. A non-finite loss stops training with a
    FusekitError and leaves the last good checkpoint in place.

    Under torchrun every rank calls ``fit`` with the same data and config (see the module
    docstring); a bad input on any rank raises the same error on all of them, and ``on_epoch``
    and the progress lines run on rank 0 only.
    """
    config = config or TrainConfig()
    from fusekit.threads import apply_threads

    apply_threads(config.threads, torch=True)  # before any torch work of this run
    place = distributed.start()
    with distributed.agreement("checking the training data"):
        check_global_batch(config.batch_size, place.world)
        if len(train) == 0 or len(val) == 0:
            raise FusekitError("training and validation data must not be empty")
        check_labels(train, tasks, "training", kinds_of(model, tasks, kinds))
        check_labels(val, tasks, "validation", kinds_of(model, tasks, kinds))
        device = distributed.device_for(resolve_device(config.device))
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise FusekitError("the model has no trainable parameters")
    use_amp = bool(config.amp and device.type == "cuda")
    generator = seed_everything(config.seed)
    model.to(device)
    # A model may ask for per-group learning rates (fine-tuned source weights train slower).
    groups = model.optimizer_groups() if hasattr(model, "optimizer_groups") else [{"params": params, "lr_scale": 1.0}]
    optimizer = torch.optim.Adam([{"params": g["params"], "lr": config.lr * g["lr_scale"]} for g in groups if g["params"]],
                                 lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    kinds = kinds_of(model, tasks, kinds)
    names = input_names_of(model, train)
    with distributed.agreement("reading the training data"):
        source = _train_batches(train, names, tasks, kinds, device, config.seed, place)
    in_memory = hasattr(source, "inputs")

    result = TrainResult(device=str(device), amp=use_amp, processes=place.world)
    best_score = -math.inf
    best_state = copy.deepcopy(model.state_dict())
    bad_epochs = 0
    start_epoch = 1
    ckpt_path = Path(config.checkpoint_dir) / CHECKPOINT_NAME if config.checkpoint_dir else None
    # Rank 0's disk holds the checkpoint: it decides whether to resume, reads the file and sends its bytes.
    if distributed.broadcast_object(bool(config.resume)):
        with distributed.agreement("reading the checkpoint"):
            data = _read_checkpoint(ckpt_path) if place.is_main else None
        data = distributed.broadcast_bytes(data)
        with distributed.agreement("loading the checkpoint"):
            start_epoch, best_state, best_score, bad_epochs = _resume(
                model, optimizer, generator, result, tasks, config, ckpt_path, data)
    if place.world > 1:
        with distributed.agreement("reading the training data"):
            probe = source.inputs if in_memory else source.probe()
        step_model = _data_parallel(model, probe, device)
    else:
        step_model = model

    began = time.perf_counter() - sum(r.seconds for r in result.history)
    # Bars only on a terminal: in a redirected log every redraw would be kept as text.
    tqdm = _progress_bars() if config.progress and place.is_main and _is_terminal(sys.stderr) else None
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, config.max_epochs + 1):
            t0 = time.perf_counter()
            step_model.train()
            total = torch.zeros((), device=device)
            if place.world > 1 and in_memory:
                steps = len(batch_starts(source.rows, config.batch_size, place.world))
                batches = _sharded_epoch(source, config.batch_size, generator, place)
            else:  # one process, or this rank's equal shard of a streamed split (weights 1: module docstring)
                local = config.batch_size // place.world
                steps = source.steps(local)
                batches = ((xs, ys, 1.0) for xs, ys in source.epoch(local, generator, epoch))
            bar = tqdm(batches, total=steps, desc=f"epoch {epoch}", leave=False, unit="batch", file=sys.stderr) \
                if tqdm else batches
            for i, (xs, ys, weight) in enumerate(bar):
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    out = step_model(*xs)
                    loss = sum(kinds[t].loss(out[t], ys[k]) for k, t in enumerate(tasks))
                    if weight != 1.0:
                        loss = loss * weight
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += loss.detach()
                if tqdm is not None and i % 20 == 0:
                    bar.set_postfix(loss=f"{total.item() / (i + 1):.4f}")
            train_loss = distributed.all_reduce(total, "mean").item() / max(1, steps)
            with distributed.agreement(f"validating epoch {epoch}"):
                if not math.isfinite(train_loss):
                    raise TrainingDiverged(train_loss, epoch, ckpt_path if ckpt_path and ckpt_path.is_file() else None)
                val_score = evaluate(model, val, tasks, device, config.eval_batch_size, kinds) if place.is_main else None
            val_score = distributed.broadcast_object(val_score)  # every rank takes rank 0's decision
            mean_score = float(np.mean(list(val_score.values())))
            record = EpochRecord(epoch, train_loss, val_score, mean_score, time.perf_counter() - t0)
            result.history.append(record)
            if mean_score > best_score:
                best_score, bad_epochs = mean_score, 0
                best_state = copy.deepcopy(model.state_dict())
                result.best_epoch, result.best_val_score = epoch, dict(val_score)
            elif epoch > (config.warmup_epochs or 0):
                bad_epochs += 1
            with distributed.agreement(f"writing the checkpoint of epoch {epoch}"):
                if ckpt_path is not None and place.is_main:
                    _save_checkpoint(ckpt_path, {
                        "epoch": epoch, "tasks": list(tasks), "model": model.state_dict(),
                        "optimizer": optimizer.state_dict(), "best_model": best_state, "best_score": best_score,
                        "best_epoch": result.best_epoch, "best_val_score": result.best_val_score,
                        "bad_epochs": bad_epochs, "history": [asdict(r) for r in result.history],
                        "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                    })
            if config.progress and place.is_main:
                _progress_line(f"epoch {epoch}: loss {train_loss:.4f}, validation: "
                               + ", ".join(f"{t} {kinds[t].score_label} {a:.5f}" for t, a in val_score.items())
                               + (" (best so far)" if bad_epochs == 0 else ""), tqdm)
            if on_epoch is not None and place.is_main:
                on_epoch(record)
            if bad_epochs >= config.patience:
                result.stopped_early = True
                break
    except KeyboardInterrupt:
        where = f"; rerun with {{resume=True}} to continue from {literal(ckpt_path)}" if ckpt_path else ""
        raise TrainingInterrupted(f"training interrupted in epoch {epoch}{where}", owner="TrainConfig") from None
    except RuntimeError as exc:  # DDP's gradient exchange with a rank that ended
        lost = distributed.peer_lost(exc)
        if lost is None:
            raise
        raise lost from None
    model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - began
    return result


def _resume(model: nn.Module, optimizer, generator: torch.Generator, result: TrainResult, tasks: list[str],
            config: TrainConfig, ckpt_path: Path | None, data: bytes) -> tuple[int, dict, float, int]:
    """Load a checkpoint's state into the model, optimizer, generator and ``result``; returns
    (first epoch to run, best state, best score, epochs without improvement)."""
    state = _load_checkpoint(ckpt_path, data)
    if state.get("tasks") != list(tasks):
        raise OptionError(f"checkpoint {literal(ckpt_path)} was made for tasks {literal(state.get('tasks'))}, "
                          f"not {literal(tasks)}; use another output directory or drop {{resume}}",
                          owner="TrainConfig")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        result.best_epoch = state["best_epoch"]
        result.history = [EpochRecord(**r) for r in state["history"]]
        result.best_val_score = dict(state["best_val_score"])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start_epoch, bad_epochs = state["epoch"] + 1, state["bad_epochs"]
        best = (state["best_model"], state["best_score"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
        what = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OptionError(f"checkpoint {literal(ckpt_path)} was made for another model or by another fusekit "
                          f"({literal(what[:160])}); train without {{resume}} to start over", owner="TrainConfig") \
            from None
    if bad_epochs >= config.patience:
        start_epoch = config.max_epochs + 1
    return start_epoch, best[0], best[1], bad_epochs
