"""``fusekit bench`` beyond Census-Income: the digits (scikit-learn, no download) with a digits CNN
pool made here, and the same data as .npz files read as ``fusekit fuse --data`` reads them."""
from __future__ import annotations

import json

import numpy as np
import pytest

from fusekit.bench import run_bench
from fusekit.bench.digits import digits_data
from fusekit.cli.main import main
from fusekit.sample_models import make_digits as md


@pytest.fixture(scope="module")
def digits_pool(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits") / "digits"
    md.make_digits(folder, kinds=["cnn"], epochs=2)  # weak sources, well above chance
    return folder


def test_the_pool_holds_no_row_a_source_model_trained_on(digits_pool):
    ds, train, _ = digits_data(list(md.TASKS), digits_pool / "cnn")
    arrays = md.digits_arrays()
    key = lambda a: {r.tobytes() for r in a.reshape(len(a), -1)}  # noqa: E731
    seen = key(arrays["train"]["image"])
    assert not key(ds.test.inputs["image"]) & seen  # the pool: no source training row
    assert not key(ds.train.inputs["image"]) & seen  # fuse's rows: none either
    assert len(train) == len(arrays["train"]["digit"]) + len(arrays["val"]["digit"])  # baselines: every training row
    assert list(ds.test.inputs) == ["image"]  # the pixels the CNNs read, nothing else


def test_quick_digits_bench_writes_the_paired_table_with_each_kinds_score(digits_pool, tmp_path):
    out = tmp_path / "out"
    result = run_bench("digits", None, [0], True, out, ["sources", "average", "shared-bottom", "emm"], splits=2,
                       models_dir=digits_pool / "cnn")
    task_set = result.sets[0]
    assert task_set.tasks == list(md.TASKS) and len(result.sets) == 1  # no Census three-task table
    assert task_set.kinds["digit"]["kind"] == "multiclass" and task_set.kinds["digit"]["classes"] == 10
    assert task_set.kinds["digit_ge5"]["kind"] == "binary"
    tables = (out / "tables.md").read_text()
    assert "**digit** (accuracy; best baseline: Shared-Bottom)" in tables
    assert "**digit_ge5** (AUC;" in tables and "| digit accuracy |" in tables
    assert "(2 splits × 1 seeds)" in tables
    kept = task_set.row("emm").extra["restored_average"]
    assert f"emm digit_ge5 {kept['digit_ge5']}/2, digit {kept['digit']}/2." in tables  # how often the guard held
    cells = [c for c in task_set.cells if c["method"] == "emm"]
    assert len(cells) == 2 and all(0.0 <= c["scores"]["digit"] <= 1.0 for c in cells)
    avg = task_set.row("average")
    # The average of two trained CNNs classifies digits far above chance (0.1).
    assert min(avg.auc["digit"]) > 0.3 and min(avg.auc["digit_ge5"]) > 0.6
    singles = {r["method"] for r in json.loads((out / "results.json").read_text())["sets"][0]["rows"]
               if r["kind"] == "single"}
    assert singles == {"digit_a", "digit_b", "digit_ge5_a", "digit_ge5_b"}


def test_npz_files_bench_like_fuse_reads_them_and_refuse_an_unknown_label(digits_pool, tmp_path, capsys):
    data = digits_pool / "data"
    out = tmp_path / "npz"
    code = main(["bench", str(data / "train.npz"), "--val", str(data / "val.npz"), "--test", str(data / "test.npz"),
                 "--models", str(digits_pool / "cnn"), "--tasks", "digit_ge5=digit_ge5_a,digit_ge5_b",
                 "digit=digit_a,digit_b", "--methods", "average,mmoe", "--quick", "--threads", "1", "-q",
                 "-o", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    rows = {r["method"]: r for r in results["sets"][0]["rows"]}
    assert set(rows) == {"average", "mmoe"}
    with np.load(data / "test.npz") as test:
        assert results["sets"][0]["data"]["rows"]["pool"] == len(test["digit"])
    protocol = json.loads((out / "protocol.json").read_text())
    assert protocol["data"]["tasks"] == {"digit_ge5": ["digit_ge5_a", "digit_ge5_b"], "digit": ["digit_a", "digit_b"]}
    capsys.readouterr()
    code = main(["bench", str(data / "train.npz"), "--models", str(digits_pool / "cnn"), "--tasks", "digit_ge5,digit",
                 "--label", "digit=nope", "--methods", "average", "--quick", "-o", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code == 2 and "nope" in err and "Traceback" not in err
    assert not (tmp_path / "bad" / "results.json").exists()
