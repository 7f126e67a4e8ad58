"""``fusekit fuse``, ``fusekit eval`` and ``fusekit predict`` through the command line."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pandas as pd
import pytest
import torch

from fusekit.cli.main import main
from tests.fusion_pool import LABELS, TASKS


TASK_ARGS = [f"{t}={','.join(ms)}" for t, ms in TASKS.items()]
LABEL_ARGS = sum((["--label", f"{t}={c}"] for t, c in LABELS.items()), [])


def fuse_argv(pool, out, *extra):
    return ["fuse", str(pool["parts"]), "--tasks", *TASK_ARGS, "--data", str(pool["csv"]), *LABEL_ARGS,
            "-o", str(out), "--epochs", "2", "--batch-size", "256", "--device", "cpu", "--quiet", *extra]


_RUN: dict = {}


@pytest.fixture()
def fused(pool, tmp_path_factory, capsys):
    """One successful ``fusekit fuse`` run shared by the tests below: (out dir, stdout, stderr).

    Its options are written down in run.toml (what fuse_argv passes as flags), except the
    parts and output, and --epochs overrides the file's: the tests below check the run got them.
    """
    if not _RUN:
        root = tmp_path_factory.mktemp("cli")
        out = root / "fused"
        tasks = "\n".join(f"{t} = {json.dumps(ms)}" for t, ms in TASKS.items())
        labels = "\n".join(f"{t} = {json.dumps(c)}" for t, c in LABELS.items())
        (root / "run.toml").write_text(f'data = {json.dumps(str(pool["csv"]))}\nepochs = 5\nbatch-size = 256\n'
                                       f'device = "cpu"\n[tasks]\n{tasks}\n[label]\n{labels}\n')
        code = main(["fuse", str(pool["parts"]), "-o", str(out), "--config", str(root / "run.toml"), "--epochs", "2"])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        _RUN.update(out=out, stdout=captured.out, stderr=captured.err)
    return _RUN


def test_fuse_prints_fused_auc_beside_sources_and_average_and_writes_everything(fused, pool):
    out = fused["out"]
    names = {p.name for p in out.iterdir()}
    assert {"fused.onnx", "metrics.json", "checkpoint.pt", "training_curves.png", "gates.json", "gates.png"} <= names
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["device"] == "cpu"  # --epochs 2 over the file's 5
    assert metrics["training"]["batch_size"] == 256  # from run.toml
    # Progress on stderr, one line per epoch; results alone on stdout.
    assert [ln.split(":")[0] for ln in fused["stderr"].splitlines() if ln.startswith("epoch")] == ["epoch 1", "epoch 2"]
    assert not [ln for ln in fused["stdout"].splitlines() if ln.startswith("epoch")]
    assert metrics["rows"]["train"] == len(pool["ds"].fusion_rows())  # the holdout rows only
    assert metrics["onnx_parity_max_abs_diff"] <= 1e-5
    run = metrics["run"]  # enough to repeat the run from its output alone
    assert {"torch", "onnx", "onnxruntime", "fusekit"} <= set(run["versions"])
    assert run["command"][:2] == ["fusekit", "fuse"] and run["data"]["files"]
    assert all(len(f["sha256"]) == 64 and not f["path"].startswith("/") for f in run["data"]["files"].values())
    assert not any(token.startswith("/") for token in run["command"])
    lines = fused["stdout"].splitlines()
    for task, models in TASKS.items():
        entry = metrics["per_task"][task]
        assert set(entry["sources_test_score"]) == set(models)
        row = next(line for line in lines if line.startswith(task + " "))
        # fused, average, then every source model with its AUC, as in metrics.json
        assert f"{entry['test_score']:.5f}" in row and f"{entry['average_test_score']:.5f}" in row
        assert f"{entry['test_score'] - entry['average_test_score']:+.5f}" in row
        for m in models:
            assert f"{m} {entry['sources_test_score'][m]:.5f}" in row
    proto = onnx.load(str(out / "fused.onnx"))
    assert [o.name for o in proto.graph.output] == list(TASKS)
    assert [i.name for i in proto.graph.input] == ["categorical", "dense"]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["fusekit.tasks"]) == list(TASKS)
    assert set(json.loads(meta["fusekit.source_sha256"])) == set(sum(TASKS.values(), []))
    assert "fusekit.feature_spec" in meta and meta["fusekit.version"]
    # The one export path: no exporter stack traces (they carry this machine's paths), a doc string.
    assert not any(node.metadata_props for node in proto.graph.node)
    assert "fusekit fused multi-task model" in proto.doc_string and "/" not in proto.doc_string
    # Outputs name no absolute path; the training curves' reference is the validation average.
    assert not metrics["parts"].startswith("/") and (out / metrics["parts"] / "manifest.json").is_file()
    for task in TASKS:
        assert 0.5 < metrics["per_task"][task]["average_val_score"] < 1.0
    gates = json.loads((out / "gates.json").read_text())
    levels = json.loads((pool["parts"] / "manifest.json").read_text())["levels"]
    assert [lv["level"] for lv in gates["levels"]] == [levels]  # residual mode fuses at the last level
    income = gates["levels"][0]["tasks"]["income"]
    assert set(income["task_gate"]) == set(TASKS["income"])
    assert abs(sum(income["task_gate"].values()) - 1.0) < 1e-5
    assert income["selected_fraction"] == {"never_married": 1.0}  # two tasks: always the other one


def test_eval_reports_the_same_auc_for_the_fused_model_and_works_on_sources(fused, pool, capsys):
    metrics = json.loads((fused["out"] / "metrics.json").read_text())
    assert main(["eval", str(fused["out"] / "fused.onnx"), "--data", str(pool["csv"]), *LABEL_ARGS,
                 "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "CPUExecutionProvider" in text
    for task in TASKS:
        assert f"{task:<16} AUC {metrics['per_task'][task]['test_score']:.5f}" in text
    assert main(["eval", str(fused["out"] / "fused.onnx"), "--data", str(pool["csv"]), *LABEL_ARGS,
                 "--device", "cpu", "--split-seed", "0", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["split"] == "test" and data["split_seed"] == 0 and data["provider"] == "CPUExecutionProvider"
    assert data["scores"] == pytest.approx({t: metrics["per_task"][t]["test_score"] for t in TASKS}, abs=1e-12)
    source = TASKS["income"][0]
    assert main(["eval", str(pool["models"][source]), "--data", str(pool["csv"]), "--label", "income=income"]) == 0
    text = capsys.readouterr().out
    # metrics.json scored the source through fusekit's torch interpreter, eval through onnxruntime:
    # the barely trained fixture has near-tied scores whose order can differ at 1e-7, hence 4 decimals.
    printed = float(text.split(" AUC ")[1].split()[0])
    assert printed == pytest.approx(metrics["per_task"]["income"]["sources_test_score"][source], abs=1e-4)


def test_predict_writes_one_probability_column_per_task(fused, pool, tmp_path, capsys):
    rows = pd.read_csv(pool["csv"], dtype=str, keep_default_na=False).head(50)
    raw = tmp_path / "rows.csv"
    rows.to_csv(raw, index=False)
    out_csv = tmp_path / "pred.csv"
    assert main(["predict", str(fused["out"] / "fused.onnx"), str(raw), "-o", str(out_csv)]) == 0
    assert "CPUExecutionProvider" in capsys.readouterr().out
    pred = pd.read_csv(out_csv)
    assert list(pred.columns) == list(TASKS) and len(pred) == 50
    assert ((pred.to_numpy() > 0) & (pred.to_numpy() < 1)).all()
    # The same rows give the same probabilities when predicted one at a time in a separate file.
    one = tmp_path / "one.csv"
    rows.iloc[[7]].to_csv(one, index=False)
    assert main(["predict", str(fused["out"] / "fused.onnx"), str(one), "-o", str(tmp_path / "p1.csv")]) == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p1.csv").to_numpy()[0], pred.to_numpy()[7], atol=1e-6)
    # Already-encoded inputs (.npz, arrays named after the model inputs) give the same predictions.
    from fusekit.data import FeatureSpec
    from fusekit.deploy.evaluate import model_info

    spec = FeatureSpec.from_json(model_info(fused["out"] / "fused.onnx").spec_json)
    cat, dense = spec.encode(pd.read_csv(raw, dtype=str, keep_default_na=False))
    np.savez(tmp_path / "rows.npz", categorical=cat, dense=dense)
    assert main(["predict", str(fused["out"] / "fused.onnx"), str(tmp_path / "rows.npz"),
                 "-o", str(tmp_path / "p2.csv")]) == 0
    np.testing.assert_allclose(pd.read_csv(tmp_path / "p2.csv").to_numpy(), pred.to_numpy(), atol=1e-6)
    capsys.readouterr()
    assert main(["predict", str(fused["out"] / "fused.onnx"), str(raw), "-o", str(tmp_path / "p3.csv"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"model": str(fused["out"] / "fused.onnx"), "input": str(raw),
                                                   "output": str(tmp_path / "p3.csv"), "rows": 50,
                                                   "provider": "CPUExecutionProvider",
                                                   "encoding": {"rows": 50, "unseen": {}, "normalised": {}}}
    # No silent overwrite.
    assert main(["predict", str(fused["out"] / "fused.onnx"), str(raw), "-o", str(out_csv)]) == 2


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fusekit: error: "), err
    return err[0]


def _changed_parts(pool, tmp_path):
    parts = tmp_path / "parts"
    shutil.copytree(pool["parts"], parts)
    return parts


@pytest.mark.parametrize("case, expected", [
    ("no_manifest", "manifest.json"),
    ("changed_component", "changed"),
    ("unknown_model", "unknown model"),
    ("model_in_two_tasks", "two tasks (income and never_married); put each model in one task of --tasks"),
    ("one_task", "at least two tasks; map two or more tasks to their models in --tasks"),
    ("missing_label", "name the task's label column in --label"),
    ("spec_mismatch", "encode their inputs differently"),
    ("bad_top_k", "--top-k"),
    ("paper_at_last_level", "--fuse-at all"),
    ("paper_finetune_heads", "residual"),
    ("bad_finetune_lr", "--finetune-lr"),
    ("finetune_from_scratch", "--from-scratch"),
    ("no_gpu", "cuda"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, expected, pool, tmp_path, capsys):
    out = tmp_path / "out"
    argv = fuse_argv(pool, out)
    if case == "no_manifest":
        parts = _changed_parts(pool, tmp_path)
        (parts / "manifest.json").unlink()
        argv[1] = str(parts)
    elif case == "changed_component":
        parts = _changed_parts(pool, tmp_path)
        comp = parts / json.loads((parts / "manifest.json").read_text())["models"][0]["components"][0]
        comp.write_bytes(comp.read_bytes() + b"\0")
        argv[1] = str(parts)
    elif case == "unknown_model":
        argv[argv.index(TASK_ARGS[0])] = "income=income_a,nobody"
    elif case == "model_in_two_tasks":
        argv[argv.index(TASK_ARGS[1])] = "never_married=married_a,income_b"
    elif case == "one_task":
        argv.remove(TASK_ARGS[1])
    elif case == "missing_label":
        argv[argv.index("never_married=never_married")] = "never_married=no_such_column"
    elif case == "spec_mismatch":
        parts = _changed_parts(pool, tmp_path)
        manifest = json.loads((parts / "manifest.json").read_text())
        entry = next(m for m in manifest["models"] if m["name"] == "married_b")
        spec = json.loads(entry["metadata"]["fusekit.feature_spec"])
        spec["dense"][0]["mean"] += 1.0
        entry["metadata"]["fusekit.feature_spec"] = json.dumps(spec)
        (parts / "manifest.json").write_text(json.dumps(manifest))
        argv[1] = str(parts)
    elif case == "bad_top_k":
        argv += ["--top-k", "0"]
    elif case == "paper_at_last_level":
        argv += ["--mode", "paper", "--fuse-at", "last"]
    elif case == "paper_finetune_heads":
        argv += ["--mode", "paper", "--finetune", "heads"]
    elif case == "bad_finetune_lr":
        argv += ["--finetune", "all", "--finetune-lr", "0"]
    elif case == "finetune_from_scratch":
        argv += ["--finetune", "all", "--from-scratch"]
    elif case == "no_gpu":
        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
        argv[argv.index("--device") + 1] = "cuda"
    assert main(argv) == 2
    assert expected in _error_line(capsys)
    assert not out.exists()
    assert not any(p.name.startswith(".out") for p in tmp_path.iterdir())  # no work dir left either


def test_existing_output_is_not_overwritten_without_force(pool, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(fuse_argv(pool, out)) == 2
    assert "--force" in _error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_fuse_json_is_one_document_on_stdout(pool, tmp_path, capsys):
    argv = fuse_argv(pool, tmp_path / "out", "--json", "--max-rows", "3000")
    argv[argv.index("--epochs") + 1] = "1"
    assert main(argv) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert data["per_task"] == metrics["per_task"] and data["epochs"] == 1
    assert data["fused_onnx"] == str(tmp_path / "out" / "fused.onnx")
    assert "epoch 1" not in err  # --quiet
