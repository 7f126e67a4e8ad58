"""Real image and sequence pools from scikit-learn's handwritten digits (no download).

    python -m fusekit.sample_models.make_digits                     # into the cache (see digits_dir)
    python -m fusekit.sample_models.make_digits --out DIR --kinds cnn --epochs 1

The 1,797 8x8 images of ``sklearn.datasets.load_digits`` are split once (seeded, 60/20/20, the
same split for every task and model) and written as ``data/{train,val,test}.npz``: ``image``
float32 [N, 1, 8, 8] (pixels / 16), ``rows`` float32 [N, 8, 8] (the same image read as 8 rows of
8 pixels, for sequence models), and one label array per task: ``digit_ge5`` float32 0/1 and
``digit`` int64 0..9. Per kind of model, ``<kind>/`` holds two models per task, trained with
plain torch and exported through fusekit's one export path (:func:`fusekit.onnxio.export.export_onnx`),
with ``fusekit.task`` metadata, and a ``pool.json`` with their test metrics:

* ``cnn``: a conv stem (Conv 1->8, BatchNorm, ReLU, MaxPool) then one (``a``) or two (``b``)
  conv blocks, GlobalAveragePool and a Linear head;
* ``transformer``: rows embedded by a Linear layer plus a learned position embedding, then a
  ``nn.TransformerEncoder`` of one (``a``) or two (``b``) layers, mean pooling, Linear head;
* ``gru``: ``nn.GRU``, the last step's output, one (``a``) or two (``b``) Linear+ReLU blocks,
  Linear head.

Task ``digit_ge5`` outputs the probability of "digit >= 5" [batch] (Sigmoid), task ``digit``
the 10 class probabilities [batch, 10] (Softmax). The files are small but are not bundled: they
are made on demand (about a minute on one core for every kind) into a folder the caller
names, by default ``digits_dir()`` in the data cache, and reused while ``pool.json`` records
the same settings.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from fusekit.errors import FusekitError
from fusekit.io import atomic_dir, atomic_file, sha256_file

TASKS = ("digit_ge5", "digit")
KINDS = ("cnn", "transformer", "gru")
INPUT = {"cnn": "image", "transformer": "rows", "gru": "rows"}
DEPTH = {"a": 1, "b": 2}  # blocks (cnn) or layers (transformer, gru) after the shared stem
SPLIT = (0.6, 0.2)  # train, val; the rest is test
SPLIT_SEED = 0
EPOCHS = 20
BATCH = 64
LR = 3e-3
WIDTH = 16


def digits_dir() -> Path:
    """The default folder for the digits pools: ``digits/`` in the data cache."""
    from fusekit.data.census import cache_dir

    return cache_dir() / "digits"


def digits_arrays() -> dict[str, dict[str, np.ndarray]]:
    """The seeded train/val/test split of the digits, as arrays by input and label name."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise FusekitError("the digits pools need scikit-learn; install it with `pip install scikit-learn`") from None
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(labels))
    n_train, n_val = int(SPLIT[0] * len(order)), int(SPLIT[1] * len(order))
    parts = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}
    return {name: {"image": images[idx][:, None], "rows": images[idx], "digit_ge5": (labels[idx] >= 5).astype(np.float32),
                   "digit": labels[idx]} for name, idx in parts.items()}


class _Head(nn.Module):
    """Linear layer and the task's probability output: [batch] (binary) or [batch, 10]."""

    def __init__(self, width: int, task: str):
        super().__init__()
        self.binary = task == "digit_ge5"
        self.linear = nn.Linear(width, 1 if self.binary else 10)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.linear(h)
        return torch.sigmoid(logits.squeeze(-1)) if self.binary else torch.softmax(logits, dim=-1)

    def loss(self, probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        eps = 1e-7
        if self.binary:
            return nn.functional.binary_cross_entropy(probs.clamp(eps, 1 - eps), target)
        return nn.functional.nll_loss(torch.log(probs.clamp_min(eps)), target)


class DigitsCNN(nn.Module):
    """Conv stem (1->8, BatchNorm, ReLU, 2x2 MaxPool), ``depth`` conv blocks, global pooling, head."""

    def __init__(self, depth: int, task: str):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2)]
        width = 8
        for _ in range(depth):
            layers += [nn.Conv2d(width, WIDTH, 3, padding=1), nn.ReLU()]
            width = WIDTH
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = _Head(WIDTH, task)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(image))


class DigitsTransformer(nn.Module):
    """Rows [batch, 8, 8] -> Linear + position embedding -> TransformerEncoder -> mean over rows -> head."""

    def __init__(self, depth: int, task: str):
        super().__init__()
        self.embed = nn.Linear(8, WIDTH)
        self.position = nn.Parameter(torch.zeros(1, 8, WIDTH))
        layer = nn.TransformerEncoderLayer(WIDTH, 2, 2 * WIDTH, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = _Head(WIDTH, task)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(rows) + self.position).mean(dim=1))


class DigitsGRU(nn.Module):
    """Rows [batch, 8, 8] -> GRU -> output at the last row -> ``depth`` Linear+ReLU blocks -> head.

    The depth is in the blocks after the GRU, not in stacked GRU layers: a stacked GRU's first
    layer is exported differently from a single one's, so the two would share no layer.
    """

    def __init__(self, depth: int, task: str):
        super().__init__()
        self.gru = nn.GRU(8, WIDTH, batch_first=True)
        self.blocks = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(WIDTH, WIDTH), nn.ReLU())])
        self.head = _Head(WIDTH, task)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(rows)
        return self.head(self.blocks(out[:, -1]))


MODELS = {"cnn": DigitsCNN, "transformer": DigitsTransformer, "gru": DigitsGRU}


def metric(task: str, probs: np.ndarray, labels: np.ndarray) -> tuple[str, float]:
    """The task's test metric: AUC for ``digit_ge5``, accuracy for ``digit``."""
    from fusekit.metrics import roc_auc

    if task == "digit_ge5":
        return "auc", float(roc_auc(labels, probs))
    return "accuracy", float(np.mean(np.argmax(probs, axis=1) == labels))


def train(model: nn.Module, x: np.ndarray | tuple[np.ndarray, ...], y: np.ndarray, epochs: int, seed: int) -> nn.Module:
    """Adam on mini-batches, seeded shuffling; returns the model in eval mode. ``x``: the model's
    input, or a tuple of its inputs in call order."""
    generator = torch.Generator().manual_seed(seed)
    xs, ys = [torch.from_numpy(a) for a in (x if isinstance(x, tuple) else (x,))], torch.from_numpy(y)
    optimiser = torch.optim.Adam(model.parameters(), lr=LR)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(ys), generator=generator).split(BATCH):
            optimiser.zero_grad()
            model.head.loss(model(*(a[idx] for a in xs)), ys[idx]).backward()
            optimiser.step()
    return model.eval()


def _settings(kinds: list[str], epochs: int, seed: int) -> dict:
    return {"kinds": sorted(kinds), "epochs": epochs, "seed": seed, "split": list(SPLIT), "split_seed": SPLIT_SEED,
            "batch_size": BATCH, "lr": LR, "width": WIDTH}


def make_digits(out_dir: Path | None = None, kinds: list[str] | tuple[str, ...] = KINDS, epochs: int = EPOCHS,
                seed: int = 0, force: bool = False) -> dict:
    """Write the digits data and pools into ``out_dir`` (default :func:`digits_dir`); returns the record.

    A folder already holding the same settings is reused as it is; one with other settings is
    refused unless ``force``. Written atomically: a failed run leaves nothing behind.
    """
    from fusekit.decompose.manifest import TASK_KEY
    from fusekit.onnxio.export import export_onnx

    kinds = list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds:
        raise FusekitError(f"unknown digits pool kind(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(KINDS)}")
    if epochs < 1:
        raise FusekitError(f"epochs must be at least 1, got {epochs}")
    out_dir = Path(out_dir) if out_dir is not None else digits_dir()
    settings = _settings(kinds, epochs, seed)
    record_path = out_dir / "digits.json"
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("settings") == settings:
            return record
    arrays = digits_arrays()
    began = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-for-bit repeatable on CPU, and polite on a shared machine
    try:
        with atomic_dir(out_dir, force=force) as tmp:
            (tmp / "data").mkdir()
            for split, data in arrays.items():
                np.savez(tmp / "data" / f"{split}.npz", **data)
            pools = {kind: _make_pool(tmp / kind, kind, arrays, epochs, seed, export_onnx, TASK_KEY) for kind in kinds}
            record = {"settings": settings, "rows": {k: int(len(v["digit"])) for k, v in arrays.items()},
                      "pools": pools, "seconds": round(time.perf_counter() - began, 1)}
            (tmp / "digits.json").write_text(json.dumps(record, indent=1) + "\n")
    finally:
        torch.set_num_threads(threads)
    return record


def _make_pool(folder: Path, kind: str, arrays: dict, epochs: int, seed: int, export_onnx, task_key: str) -> list:
    folder.mkdir()
    name = INPUT[kind]
    models = []
    for t, task in enumerate(TASKS):
        for m, (member, depth) in enumerate(DEPTH.items()):
            model_seed = seed + 10 * t + m
            torch.manual_seed(model_seed)
            model = train(MODELS[kind](depth, task), arrays["train"][name], arrays["train"][task], epochs, model_seed)
            path = folder / f"{task}_{member}.onnx"
            example = torch.from_numpy(arrays["val"][name][:64])
            export_onnx(model, path, [example], [name], [task], {task_key: task},
                        f"fusekit digits {kind} model {member} for task {task}")
            with torch.no_grad():
                probs = model(torch.from_numpy(arrays["test"][name])).numpy()
            metric_name, value = metric(task, probs, arrays["test"][task])
            models.append({"file": path.name, "task": task, "member": member, "depth": depth, "seed": model_seed,
                           "input": name, f"test_{metric_name}": round(value, 4), "sha256": sha256_file(path)})
    pool = {"pool": f"digits_{kind}", "pool_tasks": list(TASKS), "input": name, "models": models}
    with atomic_file(folder / "pool.json") as tmp:
        tmp.write_text(json.dumps(pool, indent=1) + "\n")
    return models


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: digits/ in the data cache)")
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace a folder made with other settings")
    args = parser.parse_args(argv)
    try:
        record = make_digits(args.out, args.kinds, args.epochs, args.seed, args.force)
    except FusekitError as exc:
        print(f"make_digits: error: {exc}", file=sys.stderr)
        return 2
    for kind, models in record["pools"].items():
        for entry in models:
            score = {k: v for k, v in entry.items() if k.startswith("test_")}
            print(kind, entry["file"], json.dumps(score))
    print(f"done in {record['seconds']} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
