"""Fusing tasks of different kinds on real Census-Income data: a binary task (income), a
multiclass one (education level, 5 classes) and a regression one (weeks worked in the year),
each served by two single-task models that fusekit trains briefly, decomposed and fused."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from fusekit.data.dataset import TabularDataset
from fusekit.decompose.pipeline import decompose
from fusekit.deploy.evaluate import evaluate_onnx
from fusekit.fusion.fuse import fuse, prepare
from fusekit.fusion.options import FuseOptions, FusionOptions
from fusekit.models.architecture import Architecture
from fusekit.models.single import export_onnx, train_on_dataset
from fusekit.onnxio.sessions import run, session
from fusekit.train_config import TrainConfig
from tests.fusion_pool import untrained_outputs

TASKS = ["income", "education_level", "weeks_worked"]


@pytest.fixture(scope="module")
def mixed(census_dir, tmp_path_factory):
    """Two models per task, trained on 3,000 rows for two epochs, and their parts."""
    from fusekit.data import load_dataset

    full = load_dataset("census-income", TASKS, data_dir=census_dir)
    ds = TabularDataset(full.spec, TASKS, full.train.sample(3000, 1), full.val.sample(1500, 2),
                        full.test.sample(1500, 3), full.kinds)
    root = tmp_path_factory.mktemp("kinds")
    paths, tasks = [], {}
    for task in TASKS:
        for member, seed in (("a", 0), ("b", 1)):
            model, _, _, _ = train_on_dataset(ds, task, Architecture(hidden=[16, 8]),
                                              TrainConfig(max_epochs=2, seed=seed, progress=False, device="cpu"))
            path = export_onnx(model, ds.spec, root / f"{task}_{member}.onnx", ds.val)
            paths.append(path)
            tasks.setdefault(task, []).append(path.stem)
    decompose(paths, root / "parts")
    return {"ds": ds, "parts": root / "parts", "tasks": tasks, "root": root, "paths": paths}


def test_kinds_are_detected_from_the_source_outputs(mixed):
    plan = prepare(mixed["parts"], mixed["tasks"], mixed["ds"], FuseOptions(max_rows=500))
    kinds = {t: (k.kind, k.classes, k.output, k.shape) for t, k in plan.kinds.items()}
    assert kinds == {"income": ("binary", None, "probability", ()),
                     "education_level": ("multiclass", 5, "probability", (5,)),
                     "weeks_worked": ("regression", None, "value", ())}


def test_the_untrained_fused_model_is_the_plain_average_for_every_kind(mixed):
    plan = prepare(mixed["parts"], mixed["tasks"], mixed["ds"], FuseOptions(max_rows=400))
    fused, sources = untrained_outputs(plan)
    for task, out in zip(plan.task_names, fused):
        average = np.mean([sources[m] for m in plan.tasks[task]], axis=0)
        assert out.shape == average.shape
        np.testing.assert_allclose(out.numpy(), average, rtol=1e-5, atol=1e-5)


def test_fused_onnx_keeps_each_kind_and_eval_reports_the_same_scores(mixed, tmp_path):
    options = FuseOptions(training=TrainConfig(max_epochs=2, progress=False, device="cpu"), max_rows=1500)
    result = fuse(mixed["parts"], mixed["tasks"], mixed["ds"], tmp_path / "fused", options)
    per_task = result.metrics["per_task"]
    assert {t: per_task[t]["score"] for t in TASKS} == {"income": "auc", "education_level": "accuracy",
                                                        "weeks_worked": "r2"}
    assert {"rmse", "mae", "r2"} <= set(per_task["weeks_worked"]["test_metrics"])
    assert {"accuracy", "logloss", "macro_auc"} <= set(per_task["education_level"]["test_metrics"])
    path = tmp_path / "fused" / "fused.onnx"
    proto = onnx.load(str(path))
    shapes = {o.name: [d.dim_value or d.dim_param for d in o.type.tensor_type.shape.dim] for o in proto.graph.output}
    assert shapes == {"income": ["batch"], "education_level": ["batch", 5], "weeks_worked": ["batch"]}
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["fusekit.task_kinds"])["education_level"]["classes"] == 5
    test = mixed["ds"].test
    out = run(session(path, "cpu")[0], test)
    np.testing.assert_allclose(out["education_level"].sum(axis=1), 1.0, atol=1e-5)
    evaluation = evaluate_onnx(path, mixed["ds"], device="cpu")
    for task in TASKS:
        assert evaluation.scores[task] == pytest.approx(per_task[task]["test_score"], abs=1e-6)
    # each source file, scored alone in onnxruntime, matches what fuse reported for it
    for source in mixed["tasks"]["weeks_worked"]:
        alone = evaluate_onnx(mixed["root"] / f"{source}.onnx", mixed["ds"], device="cpu")
        assert alone.scores["weeks_worked"] == pytest.approx(per_task["weeks_worked"]["sources_test_score"][source],
                                                             abs=1e-4)


def test_models_of_one_task_with_different_kinds_are_refused(mixed):
    from fusekit.errors import FusekitError

    swapped = {"income": ["income_a", "education_level_b"], "weeks_worked": mixed["tasks"]["weeks_worked"]}
    with pytest.raises(FusekitError, match="disagree on its kind"):
        prepare(mixed["parts"], swapped, mixed["ds"], FuseOptions(max_rows=200, ignore_task_metadata=True))


def test_labels_that_do_not_fit_the_kind_are_refused(mixed):
    from fusekit.errors import FusekitError

    ds = mixed["ds"]
    bad = ds.test.subset(np.arange(len(ds.test)))
    bad.labels["education_level"] = bad.labels["education_level"] + 5  # class indices beyond the 5 outputs
    broken = TabularDataset(ds.spec, ds.tasks, ds.train, ds.val, bad, ds.kinds)
    with pytest.raises(FusekitError, match="is not a class index 0..4"):
        prepare(mixed["parts"], mixed["tasks"], broken, FuseOptions(max_rows=200))


@pytest.mark.parametrize("mode", ["residual", "paper"])
def test_a_task_trained_below_its_average_gets_the_average_back(mixed, tmp_path, mode):
    """A learning rate far too high wrecks the trained fusion; per task, the exported model must
    still score at least the sources' plain average on validation (residual: the untrained model;
    paper: the sources run whole inside fused.onnx)."""
    options = FuseOptions(fusion=FusionOptions(mode=mode),
                          training=TrainConfig(max_epochs=1, lr=10.0, progress=False, device="cpu"), max_rows=1000)
    result = fuse(mixed["parts"], mixed["tasks"], mixed["ds"], tmp_path / "wild", options)
    per_task = result.metrics["per_task"]
    restored = [t for t in TASKS if per_task[t]["restored_average"]]
    assert restored, per_task  # lr 10 leaves at least one task worse than its average
    for task in TASKS:
        entry = per_task[task]
        assert entry["val_score"] >= entry["average_val_score"] - 1e-6
        if task in restored:
            assert entry["trained_val_score"] < entry["average_val_score"]
            assert entry["test_score"] == pytest.approx(entry["average_test_score"], abs=1e-5)


def test_predict_writes_class_probabilities_as_columns_or_a_parquet_list(mixed, tmp_path):
    """A 5-class output: name[0]..name[4] columns in a CSV, a list column in Parquet."""
    import pandas as pd

    from fusekit.deploy.evaluate import predict_onnx

    rows = mixed["ds"].test.head(50)
    np.savez(tmp_path / "rows.npz", **rows.inputs)
    model = mixed["root"] / "education_level_a.onnx"
    predict_onnx(model, tmp_path / "rows.npz", tmp_path / "p.csv", device="cpu")
    predict_onnx(model, tmp_path / "rows.npz", tmp_path / "p.parquet", device="cpu")
    csv = pd.read_csv(tmp_path / "p.csv")
    assert list(csv.columns) == [f"education_level[{k}]" for k in range(5)]
    table = pd.read_parquet(tmp_path / "p.parquet")
    np.testing.assert_allclose(np.stack(table["education_level"].to_numpy()), csv.to_numpy(), atol=1e-7)
    np.testing.assert_allclose(csv.to_numpy().sum(axis=1), 1.0, atol=1e-5)
