"""Make the bundled sample model pools (deterministic; see fusekit/sample_models/README.md).

    python -m fusekit.sample_models.make_pool            # both pools, into fusekit/sample_models/
    python -m fusekit.sample_models.make_pool --pool census2 --data-dir ../shared/data/census-income-kdd

Every model of a pool reads the same inputs (the pool's task source columns removed) and trains
on the same 80 % of the training split: the seeded 20 % holdout is kept for training the fusion.
One torch thread keeps the runs bit-for-bit repeatable on CPU.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from fusekit.data import load_dataset
from fusekit.io import atomic_file, sha256_file
from fusekit.models.single import Architecture, train_single
from fusekit.threads import apply_threads
from fusekit.train import TrainConfig

HOLDOUT = 0.2
HOLDOUT_SEED = 0
# Two members per task: different depth and width, identical layer types (Gemm + ReLU after
# BatchNorm folding), so decompose finds the shared 64-, 32- and 16-wide layers in order.
# "a" is trained to convergence (early stopping); "b", bigger, gets a small budget of epochs, so
# the pool differs in quality as real pools do (trained fully, both land within 0.0003 AUC).
MEMBERS = {
    "a": {"arch": Architecture(hidden=[64, 32, 16], emb_dim=4, batch_norm=True), "seed": 0, "max_epochs": None},
    "b": {"arch": Architecture(hidden=[64, 64, 32, 16], emb_dim=4, batch_norm=True, dropout=0.1), "seed": 1,
          "max_epochs": 2},
}
POOLS = {
    "census2": ["income", "never_married"],
    "census3": ["income", "never_married", "education"],
}


def make_pool(name: str, out_root: Path, data_dir: Path | None, max_epochs: int, patience: int) -> dict:
    """Train and export every model of one pool; returns its record (also written as pool.json)."""
    tasks = POOLS[name]
    dataset = load_dataset("census-income", tasks, data_dir=data_dir, seed=0, holdout=HOLDOUT, holdout_seed=HOLDOUT_SEED)
    out_dir = out_root / name
    out_dir.mkdir(parents=True, exist_ok=True)
    models = []
    for task in tasks:
        for member, setup in MEMBERS.items():
            epochs = setup["max_epochs"] or max_epochs
            config = TrainConfig(seed=setup["seed"], max_epochs=epochs, patience=patience, device="cpu", progress=False)
            path = out_dir / f"{task}_{member}.onnx"
            result = train_single("census-income", task, path, arch=setup["arch"], config=config, dataset=dataset,
                                  force=True)
            record = {
                "file": path.name, "task": task, "member": member, "seed": setup["seed"], "max_epochs": epochs,
                "architecture": vars(setup["arch"]), "test_auc": round(result.test_score, 5),
                "val_auc": round(result.val_score, 5), "best_epoch": result.best_epoch, "epochs": result.epochs,
                "train_rows": result.train_rows, "seconds": round(result.seconds, 1),
                "n_parameters": result.n_parameters, "bytes": path.stat().st_size, "sha256": sha256_file(path),
            }
            print(json.dumps(record), flush=True)
            models.append(record)
    pool = {
        "pool": name, "pool_tasks": tasks, "holdout": {"fraction": HOLDOUT, "seed": HOLDOUT_SEED},
        "feature_spec_sha256": dataset.spec.fingerprint(), "excluded": dataset.spec.excluded,
        "training": {"batch_size": 1024, "lr": 1e-3, "weight_decay": 1e-6, "max_epochs": max_epochs,
                     "patience": patience, "torch_threads": 1},
        "models": models,
    }
    with atomic_file(out_dir / "pool.json") as tmp:
        tmp.write_text(json.dumps(pool, indent=1) + "\n")
    return pool


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pool", choices=[*POOLS, "all"], default="all")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    parser.add_argument("--data-dir", type=Path, default=None, help="folder with the Census-Income files (default: cache, else download)")
    parser.add_argument("--max-epochs", type=int, default=60)
    parser.add_argument("--patience", type=int, default=6)
    args = parser.parse_args(argv)
    apply_threads(1, torch=True)
    began = time.perf_counter()
    for name in POOLS if args.pool == "all" else [args.pool]:
        make_pool(name, args.out, args.data_dir, args.max_epochs, args.patience)
    print(f"done in {time.perf_counter() - began:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
