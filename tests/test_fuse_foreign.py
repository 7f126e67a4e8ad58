"""Fusing models fusekit did not make: plain torch models with one ONNX input per feature
(raw int64 codes ``[B]`` per sparse feature, raw floats ``[B]`` per dense one, names with
spaces), a logit output ``[B, 1]`` and no fusekit metadata, trained here on real Census-Income
rows and exported by both torch exporters. Data reaches them exactly as they were trained on it."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from fusekit.data.dataset import Split, TabularDataset
from fusekit.decompose.pipeline import decompose
from fusekit.fusion.fuse import build, fuse, prepare, score_sources
from fusekit.fusion.options import FuseOptions
from fusekit.onnxio.sessions import run, session
from fusekit.sample_models.make_foreign import INPUTS, export
from fusekit.train_config import TrainConfig
from tests.fusion_pool import untrained_outputs

SPARSE = {"industry code": ("det_ind_code", 52), "occupation code": ("det_occ_code", 47)}  # INPUTS' first two
DENSE = {"age": "age", "weeks worked": "weeks_worked", "capital gains": "capital_gains"}
TASKS = {"income": ["inc_script", "inc_dynamo"], "never_married": ["nm_script", "nm_dynamo"]}


class PerFeatureModel(nn.Module):
    """An embedding per sparse feature, the dense features as they come (log1p of gains inside
    the model), an MLP and a logit [B, 1]."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.embeddings = nn.ModuleList(nn.Embedding(size, 4) for _, size in SPARSE.values())
        self.mlp = nn.Sequential(nn.Linear(4 * len(SPARSE) + len(DENSE), 16), nn.ReLU(), nn.Linear(16, 8), nn.ReLU())
        self.out = nn.Linear(8, 1)

    def forward(self, industry, occupation, age, weeks, gains):
        parts = [e(x) for e, x in zip(self.embeddings, (industry, occupation))]
        dense = torch.stack([age / 100.0, weeks / 52.0, torch.log1p(gains) / 10.0], dim=1)
        return self.out(self.mlp(torch.cat(parts + [dense], dim=1)))


def _arrays(frame) -> dict[str, np.ndarray]:
    arrays = {name: frame[col].astype(np.int64).to_numpy() for name, (col, _) in SPARSE.items()}
    arrays.update({name: frame[col].to_numpy(np.float32) for name, col in DENSE.items()})
    return arrays


def _labels(frame) -> dict[str, np.ndarray]:
    return {"income": (frame["income_50k"] == "50000+.").to_numpy(np.float32),
            "never_married": (frame["marital_stat"] == "Never married").to_numpy(np.float32)}


@pytest.fixture(scope="module")
def foreign(census_dir, tmp_path_factory):
    from fusekit.data.census import read_census

    train_df, test_df = read_census(census_dir)
    rng = np.random.default_rng(0)
    rows = train_df.iloc[np.sort(rng.choice(len(train_df), 6000, replace=False))].reset_index(drop=True)
    held = test_df.iloc[np.sort(rng.choice(len(test_df), 3000, replace=False))].reset_index(drop=True)
    arrays, labels = _arrays(rows), _labels(rows)
    root = tmp_path_factory.mktemp("foreign")
    paths = []
    for task, names in TASKS.items():
        for k, name in enumerate(names):
            model = PerFeatureModel(seed=k + (10 if task == "income" else 0))
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            inputs = [torch.as_tensor(np.array(arrays[n])) for n in list(SPARSE) + list(DENSE)]
            y = torch.as_tensor(labels[task])
            for _ in range(60):  # a few full-batch steps: enough to be far better than chance
                opt.zero_grad()
                nn.functional.binary_cross_entropy_with_logits(model(*inputs).squeeze(1), y).backward()
                opt.step()
            model.eval()
            path = root / f"{name}.onnx"
            export(model, path, dynamo=name.endswith("dynamo"))  # the walkthrough pool's export, same inputs
            paths.append(path)
    decompose(paths, root / "parts")
    part = len(held) // 2
    ds = TabularDataset(None, list(TASKS), Split(arrays, labels),
                        Split(_arrays(held.iloc[:part]), _labels(held.iloc[:part])),
                        Split(_arrays(held.iloc[part:]), _labels(held.iloc[part:])))
    return {"ds": ds, "parts": root / "parts", "paths": {p.stem: p for p in paths}}


def test_logit_outputs_are_detected_and_kept(foreign):
    plan = prepare(foreign["parts"], TASKS, foreign["ds"], FuseOptions(max_rows=300))
    assert {t: (k.kind, k.output, k.shape) for t, k in plan.kinds.items()} == {
        "income": ("binary", "logit", (1,)), "never_married": ("binary", "logit", (1,))}


def test_sources_are_fed_the_raw_arrays_unchanged(foreign):
    plan = prepare(foreign["parts"], TASKS, foreign["ds"], FuseOptions())
    scored = score_sources(plan)
    for name, path in foreign["paths"].items():
        alone = run(session(path, "cpu")[0], plan.test)["logit"]
        np.testing.assert_allclose(scored[name], alone, rtol=1e-5, atol=1e-5)


def test_untrained_fusion_averages_probabilities_and_outputs_a_logit(foreign):
    plan = prepare(foreign["parts"], TASKS, foreign["ds"], FuseOptions(max_rows=500))
    fused, sources = untrained_outputs(plan)
    for task, logit in zip(plan.task_names, fused):
        assert tuple(logit.shape) == (len(plan.test), 1)
        average = np.mean([1 / (1 + np.exp(-sources[m])) for m in TASKS[task]], axis=0)
        np.testing.assert_allclose(torch.sigmoid(logit).numpy(), average, rtol=1e-5, atol=1e-6)


def test_fuse_writes_a_file_with_the_sources_inputs_and_outputs(foreign, tmp_path):
    options = FuseOptions(training=TrainConfig(max_epochs=2, progress=False, device="cpu"))
    result = fuse(foreign["parts"], TASKS, foreign["ds"], tmp_path / "out", options)
    proto = onnx.load(str(tmp_path / "out" / "fused.onnx"))
    assert [i.name for i in proto.graph.input] == list(SPARSE) + list(DENSE)
    assert [o.name for o in proto.graph.output] == list(TASKS)
    for task in TASKS:
        entry = result.metrics["per_task"][task]
        assert entry["score"] == "auc" and entry["test_score"] > 0.75
        assert entry["kind"]["output"] == "logit"


def test_the_command_line_reads_columns_named_after_the_inputs(foreign, tmp_path, capsys):
    """CSV files whose columns are the model inputs and the labels: fuse, then eval, from the CLI."""
    import json

    import pandas as pd

    from fusekit.cli.main import main

    files = {}
    for part in ("train", "val", "test"):
        split = getattr(foreign["ds"], part)
        frame = pd.DataFrame({**split.inputs, **split.labels})
        frame[list(TASKS)] = frame[list(TASKS)].astype(int)
        files[part] = tmp_path / f"{part}.csv"
        frame.to_csv(files[part], index=False)
    tasks = [f"{t}={','.join(ms)}" for t, ms in TASKS.items()]
    code = main(["fuse", str(foreign["parts"]), "--tasks", *tasks, "--data", str(files["train"]),
                 "--val", str(files["val"]), "--test", str(files["test"]), "--epochs", "1", "-q",
                 "-o", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    import re

    assert re.search(r"input 'industry code' \[batch\] text -> int64\s+from 'industry code'", err), err
    assert "label 'income' (binary)" in err
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["data"]["split"]["rows"]["test"] == len(foreign["ds"].test)
    # the CSV path feeds the same arrays as the loaded dataset: the sources score the same
    plan = prepare(foreign["parts"], TASKS, foreign["ds"], FuseOptions())
    sources = score_sources(plan)
    from fusekit.task_kinds import TaskKind

    kind = TaskKind("binary", None, "logit", (1,))
    for task, models in TASKS.items():
        for m in models:
            expected = kind.score(plan.test.labels[task], sources[m])
            assert metrics["per_task"][task]["sources_test_score"][m] == pytest.approx(expected, abs=1e-9)
    code = main(["eval", str(tmp_path / "out" / "fused.onnx"), "--data", str(files["train"]),
                 "--test", str(files["test"]), "--val", str(files["val"]), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    scores = json.loads(out)["scores"]
    assert scores == pytest.approx({t: metrics["per_task"][t]["test_score"] for t in TASKS}, abs=1e-6)


def test_the_inputs_are_the_walkthrough_pools():
    assert INPUTS == list(SPARSE) + list(DENSE)


def test_sources_with_large_logits_fuse_to_the_exact_logit_of_their_average(foreign, tmp_path):
    """Sources sure of themselves (|logit| past 30): the untrained fused.onnx gives, in onnxruntime,
    the logit of their average probability, finite and exact to float tolerance (a probability
    clamped at 1e-6 would saturate at +-13.8)."""
    from fusekit.fusion.fuse import export as export_fused

    paths = []
    for task, names in TASKS.items():
        for k, name in enumerate(names):
            # The task's two models agree (one seed, two scales), so their average is sure too.
            model = PerFeatureModel(seed=10 if task == "income" else 0)
            with torch.no_grad():
                model.out.weight.mul_(300.0 - 100.0 * k)
            path = tmp_path / f"{name}.onnx"
            export(model.eval(), path, dynamo=name.endswith("dynamo"))
            paths.append(path)
    decompose(paths, tmp_path / "parts")
    plan = prepare(tmp_path / "parts", TASKS, foreign["ds"], FuseOptions(max_rows=300))
    fused = export_fused(plan, build(plan).eval(), tmp_path / "fused.onnx").outputs
    sources = score_sources(plan)
    for task, models in TASKS.items():
        logits = np.stack([sources[m].astype(np.float64).reshape(-1) for m in models])
        assert np.abs(logits).max() > 30
        # log p - log(1 - p) of the average p, in float64 log space: log sigmoid(x) = -logaddexp(0, -x)
        log_p = np.logaddexp.reduce(-np.logaddexp(0.0, -logits), axis=0) - np.log(len(models))
        log_q = np.logaddexp.reduce(-np.logaddexp(0.0, logits), axis=0) - np.log(len(models))
        expected = log_p - log_q
        got = fused[task].astype(np.float64).reshape(-1)
        assert np.isfinite(got).all() and np.abs(expected).max() > 30
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_validation_and_test_files_read_in_batches_score_as_held_in_memory(foreign, tmp_path, capsys):
    """stream=always reads the --val and --test Parquet files batch by batch wherever fuse uses them
    (early stopping, the guard, the sources' scores, the export's parity check, the gate statistics):
    the sources and their average score exactly as on the rows held in memory, and so does eval."""
    import json

    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fusekit.data.batches import StreamedSplit
    from fusekit.deploy.evaluate import evaluate_onnx
    from fusekit.fusion.fuse import load_sources, source_outputs
    from fusekit.stream_config import StreamOptions
    from fusekit.task_kinds import TaskKind

    files = {}
    for part in ("train", "val", "test"):
        split = getattr(foreign["ds"], part)
        frame = pd.DataFrame({**split.inputs, **{t: y.astype(np.int64) for t, y in split.labels.items()}})
        files[part] = tmp_path / f"{part}.parquet"
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), files[part], row_group_size=250)
    streaming = StreamOptions(stream="always", shuffle_buffer=1000)
    options = FuseOptions(training=TrainConfig(max_epochs=1, progress=False, device="cpu", eval_batch_size=256),
                          val=files["val"], test=files["test"], streaming=streaming)
    plan = prepare(foreign["parts"], TASKS, files["train"], options)
    assert isinstance(plan.val, StreamedSplit) and isinstance(plan.test, StreamedSplit)
    held = prepare(foreign["parts"], TASKS, foreign["ds"], FuseOptions())
    sources = load_sources(held.parts, held.model_names, output_index=held.output_index)
    streamed_out = source_outputs(sources, held.parts.input_names, plan.test, batch_size=256)  # 6 batches
    for name, out in source_outputs(sources, held.parts.input_names, held.test).items():
        np.testing.assert_array_equal(streamed_out[name], out)

    result = fuse(foreign["parts"], TASKS, files["train"], tmp_path / "out", options)
    metrics = result.metrics
    assert "val: streamed" in metrics["data"]["reading"]["eval"] and "test: streamed" in metrics["data"]["reading"]["eval"]
    assert metrics["onnx_parity_max_abs_diff"] <= 1e-5
    kind = TaskKind("binary", None, "logit", (1,))
    for task, models in TASKS.items():
        y = held.test.labels[task]
        entry = metrics["per_task"][task]
        for m in models:
            assert entry["sources_test_score"][m] == pytest.approx(kind.score(y, streamed_out[m]), abs=1e-12)
        assert entry["average_test_score"] == pytest.approx(
            kind.mix_metrics(y, kind.average([streamed_out[m] for m in models]))["auc"], abs=1e-12)
    gates = json.loads((tmp_path / "out" / "gates.json").read_text())
    assert gates["rows"] == len(held.test)  # every test row, read batch by batch
    assert all(sum(t["task_gate"].values()) == pytest.approx(1, abs=1e-6) for lvl in gates["levels"] for t in lvl["tasks"].values())
    evaluation = evaluate_onnx(tmp_path / "out" / "fused.onnx", files["train"], val=files["val"], test=files["test"],
                               device="cpu", streaming=streaming)
    assert "test: streamed" in evaluation.reading["eval"]
    assert evaluation.scores == pytest.approx({t: metrics["per_task"][t]["test_score"] for t in TASKS}, abs=1e-6)
    from fusekit.cli.main import main

    assert main(["eval", str(tmp_path / "out" / "fused.onnx"), "--data", str(files["train"]), "--val", str(files["val"]),
                 "--test", str(files["test"]), "--stream", "never", "--json"]) == 0
    held_eval = json.loads(capsys.readouterr().out)
    assert "eval" not in held_eval["reading"] and held_eval["scores"] == pytest.approx(evaluation.scores, abs=1e-12)
