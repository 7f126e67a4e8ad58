"""Fusing a pool of EmbeddingBag (DLRM-style) models, whose bags torch exports as a Loop run once per
bag: fused.onnx holds those components as their own graphs (fusekit/onnxio/splice.py).

The pool is fusekit.sample_models.make_bags: real data (scikit-learn's handwritten digits, each
image a bag of its 8 brightest pixel positions beside its row means), a binary and a 10-class
task, two models per task of different depth, one per torch exporter, trained here.
"""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from fusekit.cli.main import main
from fusekit.onnxio.sessions import run, session
from fusekit.sample_models import make_bags as mb
from fusekit.sample_models import make_digits as md

TASKS = {t: [f"{t}_a", f"{t}_b"] for t in md.TASKS}
TASK_FLAGS = [f"{t}={','.join(ms)}" for t, ms in TASKS.items()]


@pytest.fixture(scope="module")
def bags(tmp_path_factory) -> dict:
    from fusekit.decompose import decompose

    root = tmp_path_factory.mktemp("bags")
    mb.make_bags(root / "pool", epochs=5)
    sources = {m: root / "pool" / f"{m}.onnx" for ms in TASKS.values() for m in ms}
    decompose(list(sources.values()), root / "parts", names=list(sources))
    data = {s: dict(np.load(root / "pool" / "data" / f"{s}.npz")) for s in ("train", "val", "test")}
    return {"root": root, "parts": root / "parts", "data": data, "sources": sources}


def test_the_untrained_fused_file_is_the_plain_average_of_the_source_files_at_every_batch_size(bags, tmp_path):
    """fused.onnx of the untrained residual model, run in onnxruntime one row at a time and 300 rows at
    once, gives the mean of the original source files' probabilities: the spliced bag components
    run their Loop for whatever batch comes."""
    from fusekit.decompose.manifest import Manifest
    from fusekit.fusion.export import export_fused
    from fusekit.fusion.fuse import build_model
    from fusekit.fusion.kinds import detect_kinds
    from fusekit.fusion.options import FusionOptions
    from fusekit.onnxio.splice import SplicedComponent

    parts = Manifest.load(bags["parts"])
    kinds, outputs = detect_kinds(parts, TASKS, None, {}, {})
    assert kinds["digit"].classes == 10
    model = build_model(parts, TASKS, FusionOptions(), kinds, outputs).eval()
    assert all(isinstance(model.components[k][0], SplicedComponent) for k in model.components)
    rows = {n: bags["data"]["test"][n][:300] for n in mb.INPUTS}
    path = export_fused(model, tmp_path / "fused.onnx", tuple(torch.from_numpy(rows[n][:64]) for n in mb.INPUTS))
    proto = onnx.load(str(path))
    assert [n.op_type for n in proto.graph.node].count("Loop") == 4
    fused, _ = session(path, "cpu", threads=1)
    whole = run(fused, rows)
    one_by_one = {t: np.concatenate([run(fused, {n: a[i:i + 1] for n, a in rows.items()})[t] for i in range(40)])
                  for t in TASKS}
    for task, names in TASKS.items():
        mean = np.mean([run(session(bags["sources"][m], "cpu", threads=1)[0], rows)[task] for m in names], axis=0)
        np.testing.assert_allclose(whole[task], mean, atol=2e-6)
        np.testing.assert_allclose(one_by_one[task], whole[task][:40], atol=1e-6)


def test_fuse_trains_on_a_bag_pool_and_its_file_scores_as_fuse_reports(bags, tmp_path, capsys):
    out = tmp_path / "fused"
    pool = bags["root"] / "pool" / "data"
    code = main(["fuse", str(bags["parts"]), "--tasks", *TASK_FLAGS, "--data", str(pool / "train.npz"),
                 "--val", str(pool / "val.npz"), "--test", str(pool / "test.npz"), "--out", str(out),
                 "--epochs", "2", "--batch-size", "256"])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] >= 1 and metrics["onnx_parity_max_abs_diff"] <= 1e-5
    from fusekit.deploy.evaluate import evaluate_onnx

    result = evaluate_onnx(out / "fused.onnx", pool / "train.npz", val=pool / "val.npz", test=pool / "test.npz",
                           split="test", device="cpu")
    for task in TASKS:
        assert result.scores[task] == pytest.approx(metrics["per_task"][task]["test_score"], abs=1e-9)


def _bag_tables(path) -> list[np.ndarray]:
    """The EmbeddingBag tables [64, DIM] of ``path``, in any scope (TorchScript keeps one in the Loop body)."""
    from onnx import numpy_helper

    from fusekit.onnxio.optable import subgraphs

    def walk(graph):
        found = [numpy_helper.to_array(i) for i in graph.initializer if list(i.dims) == [64, mb.DIM]]
        return found + [t for node in graph.node for sub in subgraphs(node) for t in walk(sub)]

    return walk(onnx.load(str(path)).graph)


@pytest.mark.parametrize("flags", [["--finetune", "all"], ["--from-scratch"]])
def test_training_the_bag_parts_writes_their_trained_weights_into_fused_onnx(bags, tmp_path, capsys, flags):
    """Fine-tuned or trained from scratch, the spliced parts carry the trained tables: fused.onnx
    matches the torch model (fuse's parity check), its tables are not the sources', and it scores
    as fuse reports."""
    from fusekit.deploy.evaluate import evaluate_onnx

    out = tmp_path / "fused"
    pool = bags["root"] / "pool" / "data"
    code = main(["fuse", str(bags["parts"]), "--tasks", *TASK_FLAGS, "--data", str(pool / "train.npz"),
                 "--val", str(pool / "val.npz"), "--test", str(pool / "test.npz"), "--out", str(out),
                 "--epochs", "1", "--batch-size", "256", "--patience", "1", *flags])
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["onnx_parity_max_abs_diff"] <= 1e-5
    fused = _bag_tables(out / "fused.onnx")
    sources = [t for ms in TASKS.values() for m in ms for t in _bag_tables(bags["parts"] / m / "level1.onnx")]
    assert len(fused) == len(sources) == 4
    # every trained table differs from every source's (none kept its file's value)
    assert not any(np.allclose(f, s) for f in fused for s in sources)
    result = evaluate_onnx(out / "fused.onnx", pool / "train.npz", val=pool / "val.npz", test=pool / "test.npz",
                           split="test", device="cpu")
    for task in TASKS:
        assert result.scores[task] == pytest.approx(metrics["per_task"][task]["test_score"], abs=1e-9)


def test_fine_tuning_makes_the_bag_tables_trainable(bags):
    from fusekit.decompose.manifest import Manifest
    from fusekit.fusion.fuse import build_model
    from fusekit.fusion.options import FusionOptions

    model = build_model(Manifest.load(bags["parts"]), TASKS, FusionOptions(finetune="all"))
    for k in model.components:
        part = model.components[k][0]
        assert any(list(p.shape) == [64, mb.DIM] and p.requires_grad for p in part.parameters())
        assert len(part.trained) >= 3  # the table, the dense layer's weight and bias at least


def test_bench_scores_the_sources_and_emm_on_a_bag_pool_and_only_a_baseline_needs_every_test_id(bags, tmp_path, capsys):
    """A column of the test ids holds an id that the column never holds in the training rows: the
    sources and EMM read it as the models do, a baseline (an embedding per column, from the
    training rows) is refused for it."""
    train, test = bags["data"]["train"]["ids"], bags["data"]["test"]["ids"]
    assert any(set(test[:, k]) - set(train[:, k]) for k in range(train.shape[1]))
    pool = bags["root"] / "pool" / "data"
    common = ["bench", str(pool / "train.npz"), "--val", str(pool / "val.npz"), "--test", str(pool / "test.npz"),
              "--models", str(bags["root"] / "pool"), "--tasks", *TASK_FLAGS, "--quick"]
    assert main([*common, "--methods", "sources,average,emm", "-o", str(tmp_path / "ok")]) == 0, capsys.readouterr().err
    cells = json.loads((tmp_path / "ok" / "results.json").read_text())
    assert "emm" in json.dumps(cells) and (tmp_path / "ok" / "tables.md").is_file()
    capsys.readouterr()
    assert main([*common, "--methods", "sources,shared-bottom", "-o", str(tmp_path / "baseline")]) == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]  # after the progress lines
    assert last.startswith("fusekit: error: ") and "a baseline has no embedding for it" in last
    assert "Traceback" not in err and not (tmp_path / "baseline").exists()
