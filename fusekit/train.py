"""The one training loop of fusekit: single-task models, the fusion network and the baselines.

A model takes its inputs as tensors, in the order of its ``input_names`` (fusekit's tabular
models: ``categorical``, ``dense``), and returns ``{task: prediction}`` in the training space of
each task's kind (fusekit/task_kinds.py: a logit, K logits, a value). Only parameters with
``requires_grad`` are optimised, so frozen components stay frozen. Data stays in memory as
tensors on the training device; batches are slices of a seeded permutation (no per-row Python).
Early stopping watches the mean over tasks of each kind's score (AUC, accuracy, R²).
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
    names = list(getattr(model, "input_names", None) or split.inputs)
    missing = [n for n in names if n not in split.inputs]
    if missing:
        raise FusekitError(f"the data has no input(s) {literal(', '.join(missing))} that the model takes "
                           f"(the data holds {literal(', '.join(split.inputs))}); give data with those inputs")
    return names


def kinds_of(model: nn.Module, tasks: list[str], kinds: dict[str, TaskKind] | None = None) -> dict[str, TaskKind]:
    """Each task's kind: given, else the model's ``task_kinds``, else binary."""
    known = dict(getattr(model, "task_kinds", None) or {})
    known.update(kinds or {})
    return {t: known.get(t, BINARY) for t in tasks}


def _as_tensor(array: np.ndarray, device: torch.device | None = None) -> torch.Tensor:
    tensor = torch.from_numpy(np.require(array, requirements=["C", "W"]))  # torch cannot wrap read-only arrays
    return tensor.to(device) if device is not None else tensor


def _tensors(split: Split, names: list[str], tasks: list[str], kinds: dict[str, TaskKind], device: torch.device):
    missing = [t for t in tasks if t not in split.labels]
    if missing:
        raise FusekitError(f"the data has no labels for task(s) {', '.join(missing)}; give labels for every task")
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
    inputs = [_as_tensor(split.inputs[n]) for n in names]
    out: dict[str, list[np.ndarray]] = {t: [] for t in tasks}
    for start in range(0, len(split), batch_size):
        preds = model(*[x[start:start + batch_size].to(device) for x in inputs])
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


def _save_checkpoint(path: Path, state: dict) -> None:
    # Serialised in memory and written by Python, so that a full or read-only disk is an OSError
    # with its errno (atomic_file's one-line error), not torch's RuntimeError from its own writer.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getbuffer())


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
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
    """
    config = config or TrainConfig()
    from fusekit.threads import apply_threads

    apply_threads(config.threads, torch=True)  # before any torch work of this run
    if len(train) == 0 or len(val) == 0:
        raise FusekitError("training and validation data must not be empty")
    check_labels(train, tasks, "training", kinds_of(model, tasks, kinds))
    check_labels(val, tasks, "validation", kinds_of(model, tasks, kinds))
    device = resolve_device(config.device)
    use_amp = bool(config.amp and device.type == "cuda")
    generator = seed_everything(config.seed)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise FusekitError("the model has no trainable parameters")
    # A model may ask for per-group learning rates (fine-tuned source weights train slower).
    groups = model.optimizer_groups() if hasattr(model, "optimizer_groups") else [{"params": params, "lr_scale": 1.0}]
    optimizer = torch.optim.Adam([{"params": g["params"], "lr": config.lr * g["lr_scale"]} for g in groups if g["params"]],
                                 lr=config.lr, weight_decay=config.weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    kinds = kinds_of(model, tasks, kinds)
    names = input_names_of(model, train)
    inputs, labels = _tensors(train, names, tasks, kinds, device)

    result = TrainResult(device=str(device), amp=use_amp)
    best_score = -math.inf
    best_state = copy.deepcopy(model.state_dict())
    bad_epochs = 0
    start_epoch = 1
    ckpt_path = Path(config.checkpoint_dir) / CHECKPOINT_NAME if config.checkpoint_dir else None
    if config.resume:
        if ckpt_path is None or not ckpt_path.exists():
            raise OptionError(f"no checkpoint to resume from at {literal(ckpt_path)}; run without {{resume}}",
                              owner="TrainConfig")
        state = _load_checkpoint(ckpt_path)
        if state.get("tasks") != list(tasks):
            raise OptionError(f"checkpoint {literal(ckpt_path)} was made for tasks {literal(state.get('tasks'))}, "
                              f"not {literal(tasks)}; use another output directory or drop {{resume}}",
                              owner="TrainConfig")
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            best_state = state["best_model"]
            best_score = state["best_score"]
            bad_epochs = state["bad_epochs"]
            result.best_epoch = state["best_epoch"]
            result.history = [EpochRecord(**r) for r in state["history"]]
            result.best_val_score = dict(state["best_val_score"])
            generator.set_state(state["generator"])
            torch.set_rng_state(state["torch_rng"])
            start_epoch = state["epoch"] + 1
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            what = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OptionError(f"checkpoint {literal(ckpt_path)} was made for another model or by another fusekit "
                              f"({literal(what[:160])}); train without {{resume}} to start over", owner="TrainConfig") \
                from None
        if bad_epochs >= config.patience:
            start_epoch = config.max_epochs + 1

    began = time.perf_counter() - sum(r.seconds for r in result.history)
    n = len(train)
    # Bars only on a terminal: in a redirected log every redraw would be kept as text.
    tqdm = _progress_bars() if config.progress and _is_terminal(sys.stderr) else None
    epoch = start_epoch - 1
    try:
        for epoch in range(start_epoch, config.max_epochs + 1):
            t0 = time.perf_counter()
            model.train()
            order = torch.randperm(n, generator=generator).to(device)
            total = torch.zeros((), device=device)
            steps = range(0, n, config.batch_size)
            bar = tqdm(steps, desc=f"epoch {epoch}", leave=False, unit="batch", file=sys.stderr) if tqdm else steps
            for i, start in enumerate(bar):
                idx = order[start:start + config.batch_size]
                with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
                    out = model(*[x[idx] for x in inputs])
                    loss = sum(kinds[t].loss(out[t], labels[k][idx]) for k, t in enumerate(tasks))
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                total += loss.detach()
                if tqdm is not None and i % 20 == 0:
                    bar.set_postfix(loss=f"{total.item() / (i + 1):.4f}")
            train_loss = total.item() / max(1, len(steps))
            if not math.isfinite(train_loss):
                raise TrainingDiverged(train_loss, epoch, ckpt_path if ckpt_path and ckpt_path.is_file() else None)
            val_score = evaluate(model, val, tasks, device, config.eval_batch_size, kinds)
            mean_score = float(np.mean(list(val_score.values())))
            record = EpochRecord(epoch, train_loss, val_score, mean_score, time.perf_counter() - t0)
            result.history.append(record)
            if mean_score > best_score:
                best_score, bad_epochs = mean_score, 0
                best_state = copy.deepcopy(model.state_dict())
                result.best_epoch, result.best_val_score = epoch, dict(val_score)
            elif epoch > (config.warmup_epochs or 0):
                bad_epochs += 1
            if ckpt_path is not None:
                _save_checkpoint(ckpt_path, {
                    "epoch": epoch, "tasks": list(tasks), "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "best_model": best_state, "best_score": best_score,
                    "best_epoch": result.best_epoch, "best_val_score": result.best_val_score,
                    "bad_epochs": bad_epochs, "history": [asdict(r) for r in result.history],
                    "generator": generator.get_state(), "torch_rng": torch.get_rng_state(),
                })
            if config.progress:
                _progress_line(f"epoch {epoch}: loss {train_loss:.4f}, validation: "
                               + ", ".join(f"{t} {kinds[t].score_label} {a:.5f}" for t, a in val_score.items())
                               + (" (best so far)" if bad_epochs == 0 else ""), tqdm)
            if on_epoch is not None:
                on_epoch(record)
            if bad_epochs >= config.patience:
                result.stopped_early = True
                break
    except KeyboardInterrupt:
        where = f"; rerun with {{resume=True}} to continue from {literal(ckpt_path)}" if ckpt_path else ""
        raise TrainingInterrupted(f"training interrupted in epoch {epoch}{where}", owner="TrainConfig") from None
    model.load_state_dict(best_state)
    result.seconds = time.perf_counter() - began
    return result
