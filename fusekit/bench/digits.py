"""``fusekit bench digits``: scikit-learn's handwritten digits (no download) and the digits CNN pool.

make_digits (fusekit/sample_models/make_digits.py) splits the 1,797 images once (seed 0,
60/20/20) and trains every source model on the first 60 % for a fixed number of epochs: it
neither early-stops nor selects on the other rows. The benchmark keeps that split: its
evaluation pool is the last 20 % (rows no source, baseline or fused model trains or
early-stops on), the fused models train on the middle 20 % (rows the sources never saw, as
fuse trains on Census-Income's holdout) and the baselines on both (every training row).
The baselines read the pixels the sources read, flattened into 64 dense features.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from fusekit.data.dataset import Split, TabularDataset
from fusekit.errors import FusekitError
from fusekit.options import literal


def digits_pool_dir(data_dir: Path | None = None) -> Path:
    """The default source models: the digits CNN pool, made on first use as ``fusekit demo --pool digits`` makes it."""
    from fusekit.demo import DIGITS_POOLS
    from fusekit.sample_models import make_digits as md

    folder = Path(data_dir) / "digits" if data_dir else md.digits_dir()
    md.make_digits(folder, kinds=sorted(DIGITS_POOLS), epochs=md.EPOCHS)
    return folder / "cnn"


def _check_split(models_dir: Path | None) -> None:
    """The pool next to ``models_dir`` must have been made on this split (its digits.json says)."""
    import json

    from fusekit.sample_models import make_digits as md

    record = Path(models_dir).parent / "digits.json" if models_dir else None
    if record is None or not record.is_file():
        return
    settings = json.loads(record.read_text()).get("settings", {})
    if settings.get("split") != list(md.SPLIT) or settings.get("split_seed") != md.SPLIT_SEED:
        raise FusekitError(f"the digits pool at {literal(models_dir)} was trained on another split "
                           f"({settings.get('split')}, seed {settings.get('split_seed')}); remake it with make_digits")


def _inputs_of(models_dir: Path | None) -> list[str]:
    import onnx

    names: list[str] = []
    for path in sorted(Path(models_dir).glob("*.onnx")) if models_dir else []:
        graph = onnx.load(str(path), load_external_data=False).graph
        inits = {i.name for i in graph.initializer}
        names += [i.name for i in graph.input if i.name not in inits and i.name not in names]
    return names or ["image"]


def digits_data(tasks: list[str], models_dir: Path | None) -> tuple[TabularDataset, Split, str]:
    """(what fuse gets: train = the sources' unseen middle 20 %, test = the pool; the baselines'
    training rows; the data note) for the inputs the models in ``models_dir`` take."""
    from fusekit.sample_models.make_digits import TASKS, digits_arrays

    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise FusekitError(f"the digits have no task {literal(', '.join(unknown))}; choose from {', '.join(TASKS)}",
                           owner="run_bench()")
    _check_split(models_dir)
    arrays = digits_arrays()
    names = _inputs_of(models_dir)

    def split(*parts: str) -> Split:
        return Split({n: np.concatenate([arrays[p][n] for p in parts]) for n in names},
                     {t: np.concatenate([arrays[p][t] for p in parts]) for t in tasks})

    fusion, pool = split("val"), split("test")
    ds = TabularDataset(None, list(tasks), fusion, split("val"), pool)
    train = split("train", "val")
    note = (f"Data: scikit-learn's digits, make_digits' seeded 60/20/20 split. The source models trained on the "
            f"first 60 % (fixed epochs, no early stopping); the fused models train on the middle 20 % ({len(fusion)} "
            f"rows the sources never saw), the baselines on both ({len(train)} rows). Each split halves the last 20 % "
            f"({len(pool)} rows, which no method trains on) into validation (early stopping) and test.")
    return ds, train, note
