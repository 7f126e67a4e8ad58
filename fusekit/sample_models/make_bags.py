"""A real EmbeddingBag (DLRM-style) pool from scikit-learn's handwritten digits (no download).

    python -m fusekit.sample_models.make_bags --out DIR

Each 8x8 image becomes a bag of ids and a few dense features: ``ids`` int64 [N, 8], the
positions (0-63) of its 8 brightest pixels (ties broken by position), and ``dense`` float32
[N, 8], its 8 row means (pixels / 16). The split and the tasks are make_digits' (seeded 60/20/20;
``digit_ge5`` binary, ``digit`` 10 classes), written as ``data/{train,val,test}.npz``.

Each model is ``nn.EmbeddingBag(64, 8, mode="sum")`` over the ids beside a Linear+ReLU of the
dense features, joined by a Concat, then an MLP of one (``a``) or two (``b``) hidden layers and
the task's head. Torch writes the bag as an ONNX Loop run once per bag, so these are the models
fuse splices into fused.onnx as their own graphs (fusekit/onnxio/splice.py). Model ``a`` of each
task is exported by torch's TorchScript exporter (its default opset), ``b`` by the dynamo
exporter: the two write the Loop differently. Each file names its task in the ``fusekit.task``
metadata; ``pool.json`` records the test metrics.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from fusekit.decompose.manifest import TASK_KEY
from fusekit.errors import FusekitError
from fusekit.io import atomic_dir
from fusekit.sample_models import make_digits as md

INPUTS = ("ids", "dense")
BAG = 8
DIM = 8
EPOCHS = 30


class BagMLP(nn.Module):
    """EmbeddingBag over the ids beside a dense layer, Concat, ``depth`` hidden layers, the task's head."""

    def __init__(self, depth: int, task: str, n_ids: int = 64, n_dense: int = 8, dim: int = DIM):
        super().__init__()
        self.bag = nn.EmbeddingBag(n_ids, dim, mode="sum")
        self.dense = nn.Linear(n_dense, dim)
        self.top = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(2 * dim, 2 * dim), nn.ReLU())])
        self.head = md._Head(2 * dim, task)

    def forward(self, ids: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        logits = self.head.linear(self.top(torch.cat([self.bag(ids), torch.relu(self.dense(dense))], dim=1)))
        # [:, 0] rather than the head's squeeze(-1), which the TorchScript exporter writes as an If
        return torch.sigmoid(logits[:, 0]) if self.head.binary else torch.softmax(logits, dim=-1)


def bag_arrays() -> dict[str, dict[str, np.ndarray]]:
    """make_digits' split, each image as ``ids`` and ``dense``, with its labels."""
    out = {}
    for split, arrays in md.digits_arrays().items():
        pixels = arrays["rows"].reshape(len(arrays["rows"]), -1)
        ids = np.argsort(-pixels, axis=1, kind="stable")[:, :BAG].astype(np.int64)
        out[split] = {"ids": ids, "dense": arrays["rows"].mean(axis=2).astype(np.float32),
                      **{t: arrays[t] for t in md.TASKS}}
    return out


def _export(model: BagMLP, path: Path, example: tuple[torch.Tensor, ...], task: str, dynamo: bool) -> None:
    from fusekit.onnxio.export import quiet_exporter

    with quiet_exporter(), torch.no_grad():
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, example, str(path), dynamo=True, input_names=list(INPUTS), output_names=[task],
                              dynamic_shapes=({0: batch}, {0: batch}), verbose=False, external_data=False)
        else:
            torch.onnx.export(model, example, str(path), dynamo=False, input_names=list(INPUTS), output_names=[task],
                              dynamic_axes={n: {0: "batch"} for n in (*INPUTS, task)})
    proto = onnx.load(str(path))
    proto.metadata_props.add(key=TASK_KEY, value=task)  # so fuse groups the pool by task without --tasks
    onnx.save(proto, str(path))


def make_bags(out_dir: Path, epochs: int = EPOCHS, seed: int = 0, force: bool = False) -> dict:
    """Write the bag data and the four models into ``out_dir`` atomically; returns the pool record
    (also ``pool.json``). A folder already holding the same settings is reused as it is."""
    if epochs < 1:
        raise FusekitError(f"epochs must be at least 1, got {epochs}")
    out_dir = Path(out_dir)
    settings = {"epochs": epochs, "seed": seed, "split": list(md.SPLIT), "split_seed": md.SPLIT_SEED,
                "batch_size": md.BATCH, "lr": md.LR, "bag": BAG, "dim": DIM}
    if (out_dir / "pool.json").is_file():
        record = json.loads((out_dir / "pool.json").read_text())
        if record.get("settings") == settings:
            return record
    arrays = bag_arrays()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bit-for-bit repeatable on CPU
    try:
        with atomic_dir(out_dir, force=force) as tmp:
            (tmp / "data").mkdir()
            for split, data in arrays.items():
                np.savez(tmp / "data" / f"{split}.npz", **data)
            models = []
            example = tuple(torch.from_numpy(arrays["val"][n][:4]) for n in INPUTS)
            for t, task in enumerate(md.TASKS):
                for m, (member, depth) in enumerate(md.DEPTH.items()):
                    model_seed = seed + 10 * t + m
                    torch.manual_seed(model_seed)
                    model = md.train(BagMLP(depth, task), tuple(arrays["train"][n] for n in INPUTS),
                                     arrays["train"][task], epochs, model_seed)
                    name = f"{task}_{member}"
                    _export(model, tmp / f"{name}.onnx", example, task, dynamo=member == "b")
                    with torch.no_grad():
                        probs = model(*(torch.from_numpy(arrays["test"][n]) for n in INPUTS)).numpy()
                    metric, value = md.metric(task, probs, arrays["test"][task])
                    models.append({"file": f"{name}.onnx", "task": task, "member": member, "depth": depth,
                                   "exporter": "dynamo" if member == "b" else "torchscript", "seed": model_seed,
                                   f"test_{metric}": round(value, 4)})
            record = {"pool": "digits_bags", "settings": settings, "inputs": list(INPUTS), "models": models}
            (tmp / "pool.json").write_text(json.dumps(record, indent=1) + "\n")
    finally:
        torch.set_num_threads(threads)
    return record


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="replace a folder made with other settings")
    args = parser.parse_args(argv)
    try:
        record = make_bags(args.out, args.epochs, args.seed, args.force)
    except FusekitError as exc:
        print(f"make_bags: error: {exc}", file=sys.stderr)
        return 2
    for entry in record["models"]:
        print(entry["file"], json.dumps({k: v for k, v in entry.items() if k.startswith("test_")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
