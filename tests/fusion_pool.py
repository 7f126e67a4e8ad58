"""A small real pool for the fuse, export, runtime and CLI tests.

Four single-task models (two per task) trained briefly with fusekit.train on the source rows
of a 4,000-row sample of the Census-Income training file, exported to ONNX (one with the
dynamo exporter, the others with TorchScript) and decomposed with fusekit.decompose. The
session fixture ``pool`` in conftest.py builds it once.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import onnx
import pandas as pd
import torch
from torch import nn

from fusekit.data import load_dataset
from fusekit.models.tabular_input import TabularInput

CATEGORICAL = ["class_worker", "education", "sex", "race", "hisp_origin", "det_hh_summ", "citizenship"]
DENSE = ["age", "wage_per_hour", "capital_gains", "weeks_worked"]
TASKS = {"income": ["income_a", "income_b"], "never_married": ["married_a", "married_b"]}
LABELS = {"income": "income", "never_married": "never_married"}
N_ROWS = 4000


def census_sample_csv(census_dir: Path | None, path: Path, n_rows: int = N_ROWS) -> Path:
    """The first ``n_rows`` of the real Census-Income training file, with 0/1 task columns."""
    from fusekit.data.census import COLUMNS, locate

    files = locate(census_dir)
    raw = pd.read_csv(files["train"], header=None, names=COLUMNS, nrows=n_rows, dtype=str,
                      skipinitialspace=True, keep_default_na=False)
    frame = raw[CATEGORICAL + DENSE].copy()
    frame["income"] = (raw["income_50k"].str.strip() == "50000+.").astype(int)
    frame["never_married"] = (raw["marital_stat"].str.strip() == "Never married").astype(int)
    frame.to_csv(path, index=False)
    return path


def load_sample(csv: Path, spec=None, holdout: float = 0.3):
    """The sample as a TabularDataset (fitting the encoding unless ``spec`` is given)."""
    return load_dataset(csv, list(TASKS), labels=LABELS, spec=spec, categorical=CATEGORICAL, dense=DENSE,
                        holdout=holdout, holdout_seed=0)


class SingleTask(nn.Module):
    """Embeddings + two ReLU layers + a logit, like fusekit's own single-task models."""

    def __init__(self, task: str, cardinalities: list[int], n_dense: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.task = task
        self.inp = TabularInput(cardinalities, n_dense, emb_dim=3)
        self.body = nn.Sequential(nn.Linear(self.inp.out_features, 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
        self.out = nn.Linear(8, 1)

    def forward(self, categorical: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        return {self.task: self.out(self.body(self.inp(categorical, dense))).squeeze(-1)}


class Probability(nn.Module):
    """The deployed form: one probability output named after the task."""

    def __init__(self, model: SingleTask):
        super().__init__()
        self.model = model

    def forward(self, categorical: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(categorical, dense)[self.model.task])


def export_source(model: SingleTask, ds, path: Path, dynamo: bool) -> Path:
    """Export with the fusekit metadata (feature spec, task)."""
    from tests import onnx_fixtures as fx

    args = (torch.as_tensor(ds.test.cat[:3]), torch.as_tensor(ds.test.dense[:3]))
    fx.export(Probability(model).eval(), args, path, dynamo, ["categorical", "dense"], [model.task])
    proto = onnx.load(str(path))
    for key, value in {"fusekit.feature_spec": ds.spec.to_json(), "fusekit.task": model.task,
                       "fusekit.version": "0.1.0"}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    return path


def build_pool(root: Path, census_dir: Path | None) -> dict:
    """CSV sample, four trained source models, their parts. Returns paths and the dataset."""
    from fusekit.decompose.pipeline import decompose
    from fusekit.train import TrainConfig, fit

    root.mkdir(parents=True, exist_ok=True)
    csv = census_sample_csv(census_dir, root / "census_sample.csv")
    ds = load_sample(csv)
    paths = []
    for k, (task, models) in enumerate(TASKS.items()):
        for j, name in enumerate(models):
            model = SingleTask(task, ds.spec.cardinalities, len(ds.spec.dense), seed=10 * k + j)
            fit(model, ds.source_rows(), ds.val, [task],
                TrainConfig(max_epochs=2, batch_size=256, lr=3e-3, seed=j, progress=False, device="cpu"))
            paths.append(export_source(model.eval(), ds, root / f"{name}.onnx", dynamo=(k == 0 and j == 0)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        decompose(paths, root / "parts")
    return {"root": root, "csv": csv, "parts": root / "parts", "models": dict(zip(sum(TASKS.values(), []), paths)),
            "ds": ds}


def untrained_outputs(plan) -> tuple[list[torch.Tensor], dict]:
    """The untrained fused model's deployed outputs on ``plan.test`` (in task order) and each source's
    scores there: what the "untrained fusion is the plain average" tests compare."""
    from fusekit.fusion.fuse import build, score_sources
    from fusekit.fusion.model import DeployedOutputs

    model = build(plan).eval()
    arrays = plan.test.arrays()
    with torch.no_grad():
        fused = DeployedOutputs(model)(*[torch.as_tensor(arrays[n]) for n in model.input_names])
    return list(fused), score_sources(plan)
