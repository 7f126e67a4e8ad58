"""``fuse`` end to end on a small pool trained on real Census-Income rows.

The pool: four single-task models (two per task) trained briefly with fusekit.train on the
source rows of a 4,000-row sample of the Census-Income training file, exported to ONNX (one
with the dynamo exporter, the others with TorchScript), decomposed with fusekit.decompose.
Helpers here are reused by test_export.py, test_runtime.py and test_cli_fuse.py.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from torch import nn

from fusekit.data import load_dataset
from fusekit.errors import FusekitError
from fusekit.tabular_input import TabularInput


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models: a second intra-op thread only adds contention (100x slower on a loaded 2-core box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

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
    from fusekit.decompose import decompose
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


_POOL: dict = {}


@pytest.fixture(scope="session")
def pool(tmp_path_factory, census_dir) -> dict:
    """One pool for every fuse/export/runtime/CLI test (built once even when several modules import this)."""
    if not _POOL:
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            _POOL.update(build_pool(tmp_path_factory.mktemp("pool"), census_dir))
        finally:
            torch.set_num_threads(before)
    return _POOL


def quick_options(**kw):
    """Small, fast fuse options (2 epochs, no progress bar, CPU)."""
    from fusekit.fuse import FuseOptions
    from fusekit.model import FusionOptions

    fusion = FusionOptions(**{k: kw.pop(k) for k in list(kw) if k in FusionOptions.__dataclass_fields__})
    base = dict(fusion=fusion, epochs=2, patience=5, batch_size=256, progress=False, device="cpu",
                labels=dict(LABELS))
    base.update(kw)
    return FuseOptions(**base)


# -- tests ----------------------------------------------------------------------------------------
def test_residual_model_over_real_parts_starts_at_the_source_ensemble(pool):
    from fusekit.fuse import build_model, read_parts
    from fusekit.model import FusionOptions, ProbabilityOutputs
    from fusekit.runtime import run, session

    manifest = read_parts(pool["parts"])
    model = build_model(pool["parts"], manifest, TASKS, FusionOptions(mode="residual")).eval()
    test = pool["ds"].test
    with torch.no_grad():
        fused = ProbabilityOutputs(model)(torch.as_tensor(test.cat), torch.as_tensor(test.dense))
    for task, probs in zip(model.task_names, fused):
        # The untrained fused model is the plain average of the original ONNX models (run by onnxruntime).
        sources = [run(session(pool["models"][m], "cpu")[0], test)[task] for m in TASKS[task]]
        assert np.abs(probs.numpy() - np.mean(sources, axis=0)).max() <= 1e-5


def test_interrupted_fuse_resumes_from_the_saved_epoch(pool, tmp_path):
    from fusekit.fuse import fuse, work_dir_for

    out = tmp_path / "fused"
    seen = []

    def interrupt_after_first(record):
        seen.append(record)
        raise KeyboardInterrupt

    with pytest.raises(FusekitError, match="resume"):
        fuse(pool["parts"], TASKS, pool["csv"], out, quick_options(epochs=3, on_epoch=interrupt_after_first))
    assert not out.exists()  # nothing half-written where the result goes
    state = torch.load(work_dir_for(out) / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    result = fuse(pool["parts"], TASKS, pool["csv"], out, quick_options(epochs=3, resume=True))
    history = result.metrics["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert history[0]["train_loss"] == pytest.approx(seen[0].train_loss)  # epoch 1 was not trained again
    assert not work_dir_for(out).exists()
    # A changed configuration cannot silently resume someone else's run.
    with pytest.raises(FusekitError, match="nothing to resume"):
        fuse(pool["parts"], TASKS, pool["csv"], tmp_path / "other", quick_options(resume=True))


def test_fuse_refuses_data_encoded_with_another_feature_specification(pool, tmp_path):
    from fusekit.fuse import fuse

    other = load_sample(pool["csv"], spec=pool["ds"].spec)
    other.spec = load_sample(pool["csv"], holdout=0.0).spec  # refit encoding...
    other.spec.dense[0].mean += 1.0  # ...that scales a column differently
    with pytest.raises(FusekitError, match="feature specification"):
        fuse(pool["parts"], TASKS, other, tmp_path / "out", quick_options())
    assert not (tmp_path / "out").exists()


def test_from_scratch_components_are_trainable_copies_with_fresh_weights(pool):
    from fusekit.fuse import build_model, read_parts
    from fusekit.model import FusionOptions

    manifest = read_parts(pool["parts"])
    pretrained = build_model(pool["parts"], manifest, TASKS, FusionOptions(mode="paper")).eval()
    scratch = build_model(pool["parts"], manifest, TASKS, FusionOptions(mode="paper", pretrained=False)).eval()
    names = {n for n, p in scratch.named_parameters() if n.startswith("components.")}
    assert names and not any(n.startswith("components.") for n, _ in pretrained.named_parameters())
    cat, dense = torch.as_tensor(pool["ds"].test.cat[:8]), torch.as_tensor(pool["ds"].test.dense[:8])
    a = pretrained.components[pretrained.mkey["income_a"]][0](cat, dense)
    b = scratch.components[scratch.mkey["income_a"]][0](cat, dense)
    assert a.shape == b.shape and not torch.allclose(a, b)
    b.sum().backward()
    grads = [p.grad for n, p in scratch.named_parameters() if n.startswith(f"components.{scratch.mkey['income_a']}.0")]
    assert grads and all(g is not None for g in grads)


def test_a_loss_that_becomes_nan_stops_training_and_writes_no_output(pool, tmp_path):
    from fusekit.fuse import fuse, work_dir_for

    out = tmp_path / "fused"
    with pytest.raises(FusekitError, match="loss became"):
        fuse(pool["parts"], TASKS, pool["csv"], out, quick_options(mode="paper", lr=1e12))
    assert not out.exists()
    assert (work_dir_for(out) / "run.json").exists()  # kept: --resume/--force say what to do next
