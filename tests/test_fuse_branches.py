"""Fusing models with a branch beside the deep part: Wide&Deep and DeepFM models (plain torch,
one ONNX input per feature) trained on real Census-Income rows for two tasks. decompose carries
the wide/FM branch's tensors through the components; fuse chains them and keeps the average."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fusekit.data.dataset import Split, TabularDataset
from fusekit.decompose.manifest import Manifest
from fusekit.decompose.pipeline import decompose
from fusekit.fusion.fuse import fuse, prepare, score_sources
from fusekit.fusion.options import FuseOptions
from fusekit.onnxio.sessions import run, session
from fusekit.train_config import TrainConfig
from tests.fusion_pool import untrained_outputs

SPARSE = {"industry code": ("det_ind_code", 52), "occupation code": ("det_occ_code", 47)}
DENSE = {"age": "age", "weeks worked": "weeks_worked"}
NAMES = list(SPARSE) + list(DENSE)
TASKS = {"income": ["inc_wide", "inc_fm"], "never_married": ["nm_wide", "nm_fm"]}


class WideAndDeep(nn.Module):
    """Embeddings + MLP, plus a wide term on the raw ids and dense values added to the logit;
    ``fm`` adds the factorisation-machine term of the MLP's own embeddings (DeepFM)."""

    def __init__(self, widths: tuple[int, ...], fm: bool, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.fm = fm
        self.tables = nn.ModuleList(nn.Embedding(n, 4) for _, n in SPARSE.values())
        self.wide = nn.ModuleList(nn.Embedding(n, 1) for _, n in SPARSE.values())
        self.wide_dense = nn.Linear(len(DENSE), 1)
        layers, width = [], 4 * len(SPARSE) + len(DENSE)
        for out in widths:
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(width, 1)

    def forward(self, industry, occupation, age, weeks):
        ids = (industry, occupation)
        dense = torch.stack([age / 100.0, weeks / 52.0], dim=1)
        emb = torch.stack([t(i) for t, i in zip(self.tables, ids)], dim=1)
        logit = self.out(self.mlp(torch.cat([emb.flatten(1), dense], dim=1)))
        logit = logit + sum(w(i) for w, i in zip(self.wide, ids)) + self.wide_dense(dense)
        if self.fm:
            logit = logit + 0.5 * (emb.sum(1) ** 2 - (emb ** 2).sum(1)).sum(1, keepdim=True)
        return torch.sigmoid(logit).squeeze(-1)


def _split(frame) -> Split:
    inputs = {name: frame[col].astype(np.int64).to_numpy() for name, (col, _) in SPARSE.items()}
    inputs.update({name: frame[col].to_numpy(np.float32) for name, col in DENSE.items()})
    return Split(inputs, {"income": (frame["income_50k"] == "50000+.").to_numpy(np.float32),
                          "never_married": (frame["marital_stat"] == "Never married").to_numpy(np.float32)})


@pytest.fixture(scope="module")
def branches(census_dir, tmp_path_factory):
    from fusekit.data.census import read_census

    train_df, test_df = read_census(census_dir)
    rng = np.random.default_rng(5)
    rows = _split(train_df.iloc[np.sort(rng.choice(len(train_df), 5000, replace=False))].reset_index(drop=True))
    held = test_df.iloc[np.sort(rng.choice(len(test_df), 2000, replace=False))].reset_index(drop=True)
    root = tmp_path_factory.mktemp("wide")
    paths = []
    for task, names in TASKS.items():
        for k, name in enumerate(names):
            fm = name.endswith("fm")
            model = WideAndDeep((16, 12, 8) if fm else (16, 8), fm, seed=k)
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            inputs = [torch.as_tensor(np.array(rows.inputs[n])) for n in NAMES]
            y = torch.as_tensor(rows.labels[task])
            for _ in range(40):
                opt.zero_grad()
                nn.functional.binary_cross_entropy(model(*inputs).clamp(1e-6, 1 - 1e-6), y).backward()
                opt.step()
            model.eval()
            path = root / f"{name}.onnx"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, tuple(x[:4] for x in inputs), str(path), input_names=NAMES,
                                  output_names=["p"], dynamo=False, dynamic_axes={n: {0: "batch"} for n in NAMES + ["p"]})
            paths.append(path)
    # The first common layer is one feature's embedding [B, 1, 4], a boundary fuse cannot mix:
    # decompose's default cuts only at vector boundaries when the models have such common layers.
    decompose(paths, root / "parts")
    ds = TabularDataset(None, list(TASKS), rows, _split(held.iloc[:1000]), _split(held.iloc[1000:]))
    return {"ds": ds, "parts": root / "parts", "paths": {p.stem: p for p in paths}}


def test_the_side_branch_is_carried(branches):
    manifest = Manifest.load(branches["parts"])
    assert manifest.levels >= 1 and all(len(b.shape) == 2 for b in manifest.boundaries)
    for name in manifest.names:
        assert sum(manifest.model(name).carried_counts) > 0, name


def test_sources_through_their_components_equal_the_original_files(branches):
    plan = prepare(branches["parts"], TASKS, branches["ds"], FuseOptions())
    scored = score_sources(plan)
    for name, path in branches["paths"].items():
        np.testing.assert_allclose(scored[name], run(session(path, "cpu")[0], plan.test)["p"], rtol=1e-5, atol=1e-6)


def test_untrained_fusion_is_the_average_and_fuse_exports(branches, tmp_path):
    plan = prepare(branches["parts"], TASKS, branches["ds"], FuseOptions(max_rows=500))
    fused, sources = untrained_outputs(plan)
    for task, p in zip(plan.task_names, fused):
        np.testing.assert_allclose(p.numpy(), np.mean([sources[m] for m in TASKS[task]], axis=0), atol=1e-6)
    result = fuse(branches["parts"], TASKS, branches["ds"], tmp_path / "out",
                  FuseOptions(training=TrainConfig(max_epochs=2, progress=False, device="cpu")))
    assert result.metrics["onnx_parity_max_abs_diff"] <= 1e-5
    for task in TASKS:
        assert result.metrics["per_task"][task]["val_score"] >= result.metrics["per_task"][task]["average_val_score"]
