"""`fusekit train-single` and `fusekit data` through the real command-line entry point."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pandas as pd
import pytest

from fusekit.cli.main import main
from fusekit.data import FeatureSpec
from fusekit.models.single import onnx_probabilities
from fusekit.data import load_dataset
from fusekit.metrics import roc_auc


def _learnable_csv(path, n=3000, seed=0):
    rng = np.random.default_rng(seed)
    shop = rng.choice(["a", "b", "c", "d"], n)
    price = rng.normal(size=n)
    logit = 2.5 * price + np.where(shop == "a", 2.0, -1.0)
    click = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    pd.DataFrame({"shop": shop, "price": price.round(4), "clicked": click}).to_csv(path, index=False)
    return path


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_csv_training_prints_auc_and_writes_model(tmp_path, capsys):
    data = _learnable_csv(tmp_path / "clicks.csv")
    out_path = tmp_path / "click.onnx"
    code, out, err = _run(capsys, "train-single", "--data", str(data), "--task", "click", "--label", "click=clicked",
                          "--hidden", "16,8", "--epochs", "3", "--batch-size", "128", "--lr", "3e-3",
                          "-q", "--json", "-o", str(out_path))
    assert code == 0, err
    result = json.loads(out)
    assert result["score"] == "auc" and result["test_score"] > 0.8 and result["path"] == str(out_path)
    meta = {p.key: p.value for p in onnx.load(str(out_path)).metadata_props}
    spec = FeatureSpec.from_json(meta["fusekit.feature_spec"])
    assert spec.columns == ["shop", "price"] and meta["fusekit.task"] == "click"
    # the ONNX file gives the reported test AUC on the same split
    ds = load_dataset(data, ["click"], labels={"click": "clicked"}, spec=spec)
    assert roc_auc(ds.test.labels["click"], onnx_probabilities(out_path, ds.test)) == pytest.approx(result["test_score"], abs=1e-6)


def test_census_pool_tasks_and_holdout(tmp_path, capsys, census_dir):
    out_path = tmp_path / "income.onnx"
    argv = ["train-single", "--data", "census-income", "--task", "income", "--pool-tasks", "income,never_married",
            "--hidden", "16,8", "--batch-norm", "--holdout", "0.2", "--epochs", "1", "--batch-size", "128",
            "--train-rows", "3000", "--quiet", "-o", str(out_path)]
    if census_dir is not None:
        argv += ["--data-dir", str(census_dir)]
    code, out, err = _run(capsys, *argv)
    assert code == 0, err
    assert "income: test AUC 0." in out and f"wrote {out_path}" in out
    auc = float(out.split("test AUC ")[1].split()[0])
    assert auc > 0.8
    model = onnx.load(str(out_path))
    spec = FeatureSpec.from_json({p.key: p.value for p in model.metadata_props}["fusekit.feature_spec"])
    assert "marital_stat" in spec.excluded and "education" in spec.columns
    assert spec.holdout == {"fraction": 0.2, "seed": 0}
    assert model.graph.input[0].type.tensor_type.shape.dim[1].dim_value == 32


@pytest.mark.parametrize("case, pattern", [
    ("missing-label", "no label column 'clicked'"),
    ("not-binary", "not binary"),
    ("nan", r"dense column 'price'.*row 5"),
    ("empty", "empty"),
    ("missing-file", "does not exist"),
    ("bad-label-flag", "TASK=COLUMN"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, case, pattern):
    data = tmp_path / "d.csv"
    frame = pd.read_csv(_learnable_csv(tmp_path / "ok.csv", n=200))
    label = "click=clicked"
    if case == "missing-label":
        frame.drop(columns="clicked").to_csv(data, index=False)
    elif case == "not-binary":
        frame.assign(clicked=frame.clicked * 2).to_csv(data, index=False)
    elif case == "nan":
        frame.loc[5, "price"] = np.nan
        frame.to_csv(data, index=False)
    elif case == "empty":
        data.write_text("")
    elif case == "missing-file":
        data = tmp_path / "absent.csv"
    else:
        frame.to_csv(data, index=False)
        label = "clicked"
    out_path = tmp_path / "m.onnx"
    code, out, err = _run(capsys, "train-single", "--data", str(data), "--task", "click", "--label", label,
                          "--epochs", "1", "-q", "-o", str(out_path))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fusekit: error: ")
    assert __import__("re").search(pattern, lines[0]), lines[0]
    assert not out_path.exists() and not list(tmp_path.glob(".m.onnx*"))


def test_census_missing_data_dir(tmp_path, capsys):
    code, _, err = _run(capsys, "train-single", "--data", "census-income", "--task", "income", "--data-dir",
                        str(tmp_path), "-o", str(tmp_path / "m.onnx"))
    assert code == 2 and "fusekit data fetch" in err and str(tmp_path) in err
    code, _, err = _run(capsys, "data", "info", "--dir", str(tmp_path))
    assert code == 2 and "not found" in err


def test_data_info(capsys, census_dir):
    if census_dir is None:
        pytest.skip("needs a local copy of the Census-Income files")
    code, out, _ = _run(capsys, "data", "info", "--dir", str(census_dir), "--json")
    assert code == 0
    info = json.loads(out)
    assert info["rows"] == {"train": 199523, "test": 99762}
    assert info["positive_rate"]["income"]["train"] == pytest.approx(0.062, abs=1e-3)


def test_a_regression_task_from_a_file(tmp_path, capsys):
    """--task-kind regression: a squared-error model with a value output, scored by R2."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    n = 1500
    shop = rng.integers(0, 4, n)
    price = rng.normal(size=n)
    frame = pd.DataFrame({"shop": shop.astype(str), "price": [f"{v:.4f}" for v in price],
                          "spend": 2.0 * shop + price + rng.normal(scale=0.1, size=n)})
    frame.to_csv(tmp_path / "spend.csv", index=False)
    out_path = tmp_path / "spend.onnx"
    code, out, err = _run(capsys, "train-single", "--data", str(tmp_path / "spend.csv"), "--task", "spend",
                          "--task-kind", "regression", "--hidden", "16", "--epochs", "20", "--lr", "1e-2",
                          "--batch-size", "128", "-q", "--json", "-o", str(out_path))
    assert code == 0, err
    result = json.loads(out)
    assert result["kind"] == "regression" and result["score"] == "r2" and result["test_score"] > 0.8
    assert {"rmse", "mae", "r2"} <= set(result["test_metrics"])
    ops = [node.op_type for node in onnx.load(str(out_path)).graph.node]
    assert "Sigmoid" not in ops  # a value, not a probability
