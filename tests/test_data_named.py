"""Data read by model input name and fed as it is: CSV, Parquet, .npz, splits, the report, bad input."""
from __future__ import annotations

import json
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fusekit.data.dataset import Split
from fusekit.data.named import Partition, cast_values, carve, read_named, read_splits, rows_digest
from fusekit.decompose.manifest import InputSpec
from fusekit.errors import FusekitError
from fusekit.task_kinds import TaskKind

N = 60


def _frame(n: int = N, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({
        "user id": rng.choice([2, 10, 3, 17, 250], n),  # raw ids a vocabulary would renumber
        "price usd": rng.normal(50.0, 20.0, n).round(4),  # unscaled, as the model was trained
        "v[0]": rng.normal(size=n).round(4), "v[1]": rng.normal(size=n).round(4), "v[2]": rng.normal(size=n).round(4),
        "flag": rng.integers(0, 2, n).astype(bool),
        "click": rng.integers(0, 2, n),
        "genre": rng.integers(0, 4, n),
        "weeks": rng.integers(0, 53, n),
        "session": [f"s{i}" for i in range(n)],
    })


INPUTS = [InputSpec("user id", ["batch"], "int64"), InputSpec("price usd", ["batch", 1], "float32"),
          InputSpec("v", ["batch", 3], "float32"), InputSpec("flag", ["batch"], "bool")]
TASKS = {"click": "binary", "genre": "multiclass", "weeks": "count"}


def _csv(tmp_path, frame, name="d.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


def test_csv_columns_are_fed_as_they_are(tmp_path):
    frame = _frame()
    read = read_named(_csv(tmp_path, frame), INPUTS, TASKS, classes={"genre": 4})
    np.testing.assert_array_equal(read.inputs["user id"], frame["user id"].to_numpy())  # 2 stays 2, 10 stays 10
    assert read.inputs["user id"].dtype == np.int64 and read.inputs["user id"].shape == (N,)
    price = read.inputs["price usd"]
    assert price.dtype == np.float32 and price.shape == (N, 1)
    np.testing.assert_array_equal(price[:, 0], frame["price usd"].to_numpy(np.float32))  # not standardised
    np.testing.assert_array_equal(read.inputs["v"], frame[["v[0]", "v[1]", "v[2]"]].to_numpy(np.float32))
    np.testing.assert_array_equal(read.inputs["flag"], frame["flag"].to_numpy())
    assert read.labels["click"].dtype == np.float32 and read.labels["genre"].dtype == np.int64
    np.testing.assert_array_equal(read.labels["weeks"], frame["weeks"].to_numpy(np.float32))
    assert read.ignored == ["session"]
    v = next(r for r in read.read if r.name == "v")
    assert v.sources == ["v[0]", "v[1]", "v[2]"] and v.read == "text" and v.fed == "float32"


def test_parquet_lists_fixed_size_lists_and_images(tmp_path):
    frame = _frame()
    vectors = frame[["v[0]", "v[1]", "v[2]"]].to_numpy(np.float32)
    rng = np.random.default_rng(1)
    images = rng.normal(size=(N, 1, 2, 2)).astype(np.float32)
    tokens = rng.integers(0, 100, (N, 5))
    table = pa.table({
        "user id": pa.array(frame["user id"], pa.int32()),
        "price usd": pa.array(frame["price usd"]),
        "v": pa.array(vectors.tolist(), pa.list_(pa.float32(), 3)),  # fixed-size list
        "flag": pa.array(frame["flag"]),
        "tokens": pa.array(tokens.tolist(), pa.list_(pa.int64())),  # variable-size list, one length
        "image": pa.array(images.tolist()),  # nested lists [1][2][2]
        "image flat": pa.array(images.reshape(N, 4).tolist()),  # one flat list, reshaped
        "click": pa.array(frame["click"].astype(bool)),
    })
    pq.write_table(table, tmp_path / "d.parquet")
    inputs = INPUTS + [InputSpec("tokens", ["batch", "seq"], "int64"), InputSpec("image", ["batch", 1, 2, 2], "float32"),
                       InputSpec("image flat", ["batch", 1, 2, 2], "float32")]
    read = read_named(tmp_path / "d.parquet", inputs, {"click": "binary"})
    np.testing.assert_array_equal(read.inputs["user id"], frame["user id"].to_numpy())
    np.testing.assert_array_equal(read.inputs["v"], vectors)
    np.testing.assert_array_equal(read.inputs["tokens"], tokens)
    np.testing.assert_array_equal(read.inputs["image"], images)
    np.testing.assert_array_equal(read.inputs["image flat"], images)
    reads = {r.name: r for r in read.read}
    assert reads["v"].read == "fixed_size_list<float32>[3]"
    assert reads["image"].read == "list<list<list<float64>[2]>[2]>[1]"
    assert reads["user id"].read == "int32" and reads["user id"].fed == "int64"


def test_parquet_folder_reads_like_one_file(tmp_path):
    frame = _frame()
    folder = tmp_path / "parts"
    folder.mkdir()
    for k, rows in enumerate(np.array_split(np.arange(N), 3)):
        frame.iloc[rows].to_parquet(folder / f"part-{k}.parquet", index=False)
    frame.to_parquet(tmp_path / "one.parquet", index=False)
    a = read_named(folder, INPUTS, TASKS)
    b = read_named(tmp_path / "one.parquet", INPUTS, TASKS)
    for name in a.inputs:
        np.testing.assert_array_equal(a.inputs[name], b.inputs[name])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.csv").write_text("a\n1\n")
    with pytest.raises(FusekitError, match="holds no Parquet files"):
        read_named(tmp_path / "empty", INPUTS)


def test_npz_arrays(tmp_path):
    rng = np.random.default_rng(2)
    images = rng.normal(size=(N, 1, 8, 8))
    tokens = rng.integers(0, 50, (N, 6)).astype(np.int64)
    np.savez(tmp_path / "d.npz", image=images, tokens=tokens, y=rng.normal(size=(N, 1)), extra=np.zeros(N))
    inputs = [InputSpec("image", ["batch", 1, 8, 8], "float32"), InputSpec("tokens", ["batch", 6], "int32")]
    read = read_named(tmp_path / "d.npz", inputs, {"y": "regression"}, index_inputs={"tokens"})
    assert read.inputs["image"].dtype == np.float32 and read.inputs["image"].shape == (N, 1, 8, 8)
    np.testing.assert_array_equal(read.inputs["tokens"], tokens.astype(np.int32))
    assert read.labels["y"].shape == (N,) and read.ignored == ["extra"]


def test_npz_bad_input(tmp_path):
    inputs = [InputSpec("tokens", ["batch", 6], "int64")]
    np.savez(tmp_path / "short.npz", tokens=np.zeros((N, 6), np.int64), y=np.zeros(N - 1))
    with pytest.raises(FusekitError, match="array 'y' has 59 rows but 'tokens' has 60"):
        read_named(tmp_path / "short.npz", inputs, {"y": "regression"})
    np.savez(tmp_path / "wide.npz", tokens=np.zeros((N, 7), np.int64))
    with pytest.raises(FusekitError, match=r"holds \[7\] per row, but the input takes \[6\]"):
        read_named(tmp_path / "wide.npz", inputs)
    np.savez(tmp_path / "flat.npz", image=np.zeros((N, 64)))
    with pytest.raises(FusekitError, match=r"holds \[64\] per row, but the input takes \[1, 8, 8\]"):
        read_named(tmp_path / "flat.npz", [InputSpec("image", ["batch", 1, 8, 8], "float32")])
    np.savez(tmp_path / "neg.npz", tokens=np.full((N, 6), -1, np.int64))
    assert read_named(tmp_path / "neg.npz", inputs).inputs["tokens"].min() == -1  # a value, unless an index
    with pytest.raises(FusekitError, match="value -1 at row 0 is negative, and this input is an index"):
        read_named(tmp_path / "neg.npz", inputs, index_inputs={"tokens"})
    with pytest.raises(FusekitError, match="index_inputs names nope"):
        read_named(tmp_path / "neg.npz", inputs, index_inputs={"nope"})
    np.savez(tmp_path / "obj.npz", tokens=np.array([{"a": 1}] * N, dtype=object))
    with pytest.raises(FusekitError, match="pickled object array"):
        read_named(tmp_path / "obj.npz", inputs)
    (tmp_path / "noise.npz").write_bytes(np.random.default_rng(0).bytes(256))
    with pytest.raises(FusekitError, match="is not an .npz archive"):
        read_named(tmp_path / "noise.npz", inputs)
    (tmp_path / "pickle.npz").write_bytes(pickle.dumps({"tokens": [1, 2]}))
    with pytest.raises(FusekitError, match="is not an .npz archive"):
        read_named(tmp_path / "pickle.npz", inputs)


@pytest.mark.parametrize("dtype, values, message", [
    ("int64", ["1", "2.5"], "column 'x' for input 'x' \\(int64\\): value '2.5' at row 1 is fractional"),
    ("int64", ["1", "abc"], "value 'abc' at row 1 is not a number"),
    ("int64", ["", "1"], "value '' at row 0 is empty"),
    ("int32", ["1", "3000000000"], "value 3000000000 at row 1 is beyond the int32 range"),
    ("int64", ["1", "99999999999999999999999"], "beyond the 64-bit integer range"),
    ("float32", ["1.5", "one"], "value 'one' at row 1 is not a number"),
    ("bool", ["0", "2"], "value '2' at row 1 is not 0/1/true/false"),
])
def test_csv_casts_that_lose_information_are_refused(tmp_path, dtype, values, message):
    pd.DataFrame({"x": values}).to_csv(tmp_path / "d.csv", index=False)
    with pytest.raises(FusekitError, match=message) as info:
        read_named(tmp_path / "d.csv", [InputSpec("x", ["batch"], dtype)])
    assert "\n" not in str(info.value)


def test_csv_text_that_parses_exactly(tmp_path):
    # Written by hand: integral floats, signs and padding, quoted names with commas, quoted newlines.
    (tmp_path / "d.csv").write_text('"a, b",n,"note"\n 3.0 ,+4,"two\nlines"\n-1e2,5,x\n7,,y\n')
    read = read_named(tmp_path / "d.csv", [InputSpec("a, b", ["batch"], "int64"), InputSpec("n", ["batch"], "float64")])
    np.testing.assert_array_equal(read.inputs["a, b"], [3, -100, 7])
    np.testing.assert_array_equal(read.inputs["n"], [4.0, 5.0, np.nan])  # an empty cell is a missing float
    assert read.ignored == ["note"]


def test_numeric_casts():
    where = "d.parquet: column 'x' for input 'x'"
    np.testing.assert_array_equal(cast_values(np.array([1.0, -3.0]), "int64", where), [1, -3])
    np.testing.assert_array_equal(cast_values(np.array(["3.0", "1e2"]), "int64", where), [3, 100])
    np.testing.assert_array_equal(cast_values(np.array([1, 0]), "bool", where), [True, False])
    with pytest.raises(FusekitError, match="value nan at row 1 is missing or not finite"):
        cast_values(np.array([1.0, np.nan]), "int64", where)
    with pytest.raises(FusekitError, match="value 2147483648 at row 0 is beyond the int32 range"):
        cast_values(np.array([2**31, 0], np.int64), "int32", where)
    with pytest.raises(FusekitError, match="value 2\\.0 at row 0 is not 0 or 1"):
        cast_values(np.array([2.0]), "bool", where)
    with pytest.raises(FusekitError, match="beyond the float32 range"):
        cast_values(np.array([1e300]), "float32", where)
    with pytest.raises(FusekitError, match="dtype 'string'"):
        cast_values(np.array(["a"]), "string", where)
    with pytest.raises(FusekitError, match=r"value 256.0 at row 1 is beyond the uint8 range \[0, 255\]"):
        cast_values(np.array([[0.0, 1.0], [256.0, 0.0]]), "uint8", where)


def test_parquet_nulls_into_integer_inputs_are_refused(tmp_path):
    pq.write_table(pa.table({"x": pa.array([1, None, 3], pa.int64()), "f": pa.array([0.5, None, 1.0])}),
                   tmp_path / "d.parquet")
    with pytest.raises(FusekitError, match="column 'x' for input 'x' \\(int64\\): value nan at row 1 is missing"):
        read_named(tmp_path / "d.parquet", [InputSpec("x", ["batch"], "int64")])
    read = read_named(tmp_path / "d.parquet", [InputSpec("f", ["batch"], "float32")])
    assert np.isnan(read.inputs["f"][1]) and read.inputs["f"][2] == 1.0  # a float input takes a missing value as NaN


def test_columns_that_do_not_fit(tmp_path):
    frame = _frame()
    with pytest.raises(FusekitError, match=r"no column for model input 'price usd' .*close names: 'price_usd'"):
        read_named(_csv(tmp_path, frame.rename(columns={"price usd": "price_usd"})), INPUTS)
    wide = [InputSpec("v", ["batch", 2], "float32")]
    with pytest.raises(FusekitError, match=r"columns 'v\[0\]'..'v\[2\]' for input 'v' holds \[3\] per row, but the "
                                           r"input takes \[2\]"):
        read_named(_csv(tmp_path, frame), wide)
    with pytest.raises(FusekitError, match=r"but no 'v\[1\]'"):
        read_named(_csv(tmp_path, frame.drop(columns=["v[1]"])), INPUTS)
    with pytest.raises(FusekitError, match="both a column 'v' and columns"):
        read_named(_csv(tmp_path, frame.assign(v=1.0)), INPUTS)
    with pytest.raises(FusekitError, match="holds one value per row, but the input takes \\[3\\]"):
        read_named(_csv(tmp_path, frame.assign(v=1.0).drop(columns=["v[0]", "v[1]", "v[2]"])), INPUTS)
    pq.write_table(pa.table({"v": pa.array([[1.0, 2.0, 3.0], [1.0, 2.0]])}), tmp_path / "ragged.parquet")
    with pytest.raises(FusekitError, match="lists of different lengths \\(2 at item 1, 3 at item 0\\)"):
        read_named(tmp_path / "ragged.parquet", [InputSpec("v", ["batch", 3], "float32")])


def test_labels_in_files(tmp_path):
    frame = _frame()
    with pytest.raises(FusekitError, match="label column 'genre' of task 'genre': value '3' at row \\d+ is not a class "
                                           "index 0..2"):
        read_named(_csv(tmp_path, frame), INPUTS, {"genre": "multiclass"}, classes={"genre": 3})
    with pytest.raises(FusekitError, match="label column 'session' of task 'weeks': value 's0' at row 0 is not a number"):
        read_named(_csv(tmp_path, frame), INPUTS, {"weeks": "regression"}, labels={"weeks": "session"})
    with pytest.raises(FusekitError, match="'flag' of task 'click' is also a model input"):
        read_named(_csv(tmp_path, frame), INPUTS, {"click": "binary"}, labels={"click": "flag"})
    with pytest.raises(FusekitError, match="'v\\[0\\]' of task 'click' is also a model input"):
        read_named(_csv(tmp_path, frame), INPUTS, {"click": "binary"}, labels={"click": "v[0]"})
    read = read_named(_csv(tmp_path, frame), INPUTS, {"purchase": "binary"}, labels={"purchase": "click"})
    np.testing.assert_array_equal(read.labels["purchase"], frame["click"].to_numpy(np.float32))


def test_task_kinds_and_inputs_are_checked(tmp_path):
    path = _csv(tmp_path, _frame())
    with pytest.raises(FusekitError, match="unknown kind 'ordinal' of task 'click'"):
        read_named(path, INPUTS, {"click": "ordinal"})
    with pytest.raises(FusekitError, match="declare input 'flag' twice"):
        read_named(path, INPUTS + [InputSpec("flag", ["batch"], "bool")])
    with pytest.raises(FusekitError, match="'flag' is a scalar without a batch dimension"):
        read_named(path, [InputSpec("flag", [], "bool")])


def test_empty_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(FusekitError, match="is empty"):
        read_named(tmp_path / "empty.csv", INPUTS)
    (tmp_path / "header.csv").write_text("user id,price usd\n")
    with pytest.raises(FusekitError, match="has a header but no rows"):
        read_named(tmp_path / "header.csv", INPUTS)
    with pytest.raises(FusekitError, match="does not exist"):
        read_named(tmp_path / "missing.parquet", INPUTS)
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(FusekitError, match="is empty"):
        read_named(tmp_path / "empty.npz", INPUTS)
    np.savez(tmp_path / "none.npz")
    with pytest.raises(FusekitError, match="holds no arrays"):
        read_named(tmp_path / "none.npz", INPUTS)
    pq.write_table(pa.table({"user id": pa.array([], pa.int64())}), tmp_path / "empty.parquet")
    with pytest.raises(FusekitError, match="has no rows"):
        read_named(tmp_path / "empty.parquet", INPUTS)


def test_one_seeded_split_the_same_for_every_task(tmp_path):
    frame = _frame(n=200)
    path = _csv(tmp_path, frame)
    both = read_splits(path, inputs=INPUTS, tasks={"click": "binary", "weeks": "count"})
    only_click = read_splits(path, inputs=INPUTS, tasks={"click": "binary"})
    only_weeks = read_splits(path, inputs=INPUTS, tasks={"weeks": "count"})
    assert both.partition.rows == {"train": 160, "val": 20, "test": 20}
    for part in ("train", "val", "test"):
        ids = getattr(both, part).inputs["price usd"]
        np.testing.assert_array_equal(getattr(only_click, part).inputs["price usd"], ids)
        np.testing.assert_array_equal(getattr(only_weeks, part).inputs["price usd"], ids)
    assert both.partition.rows_sha256 == only_weeks.partition.rows_sha256
    # The parts are disjoint and cover every row, in file order.
    idx = carve(200, ["val", "test"], seed=0)
    assert np.array_equal(np.sort(np.concatenate(list(idx.values()))), np.arange(200))
    assert both.partition.rows_sha256["test"] == rows_digest(idx["test"])
    np.testing.assert_array_equal(both.test.inputs["user id"], frame["user id"].to_numpy()[idx["test"]])
    np.testing.assert_array_equal(both.test.labels["weeks"], frame["weeks"].to_numpy(np.float32)[idx["test"]])
    # Reproducible with its seed, different with another; the recorded partition tells them apart.
    again = read_splits(path, inputs=INPUTS, tasks={"click": "binary"})
    np.testing.assert_array_equal(again.val.inputs["user id"], only_click.val.inputs["user id"])
    other = read_splits(path, inputs=INPUTS, tasks={"click": "binary"}, seed=1)
    assert not np.array_equal(other.test.inputs["price usd"], both.test.inputs["price usd"])
    both.partition.check_same(Partition.from_dict(json.loads(json.dumps(again.partition.to_dict()))))
    with pytest.raises(FusekitError, match="the train rows differ .*seed 1 vs 0"):
        both.partition.check_same(other.partition.to_dict())
    frame.iloc[::-1].to_csv(tmp_path / "changed.csv", index=False)
    changed = read_splits(tmp_path / "changed.csv", inputs=INPUTS, tasks={"click": "binary"})
    with pytest.raises(FusekitError, match="the train data is not the file"):
        both.partition.check_same(changed.partition)
    with pytest.raises(FusekitError, match="too few to carve val and test"):
        read_splits(_csv(tmp_path, frame.head(2), "tiny.csv"), inputs=INPUTS)


def test_explicit_splits(tmp_path):
    frame = _frame(n=90)
    train = _csv(tmp_path, frame.iloc[:60], "train.csv")
    frame.iloc[60:75].to_parquet(tmp_path / "val.parquet", index=False)
    test = _csv(tmp_path, frame.iloc[75:], "test.csv")
    splits = read_splits(train, tmp_path / "val.parquet", test, inputs=INPUTS, tasks={"click": "binary"})
    assert splits.partition.rows == {"train": 60, "val": 15, "test": 15} and splits.partition.carved == []
    np.testing.assert_array_equal(splits.val.inputs["user id"], frame["user id"].to_numpy()[60:75])
    np.testing.assert_array_equal(splits.test.labels["click"], frame["click"].to_numpy(np.float32)[75:])
    only_test = read_splits(train, test=test, inputs=INPUTS, tasks={"click": "binary"})
    assert only_test.partition.carved == ["val"] and only_test.partition.rows == {"train": 54, "val": 6, "test": 15}
    _csv(tmp_path, frame.iloc[75:].drop(columns=["click"]), "test.csv")
    with pytest.raises(FusekitError, match="test.csv has no label column 'click'"):
        read_splits(train, test=test, inputs=INPUTS, tasks={"click": "binary"})


def test_splits_are_splits_and_task_kinds_carry_their_classes(tmp_path):
    frame = _frame()
    splits = read_splits(_csv(tmp_path, frame), inputs=INPUTS,
                         tasks={"genre": TaskKind("multiclass", 4, "logit"), "click": "binary"})
    assert all(isinstance(s, Split) for s in (splits.train, splits.val, splits.test))
    assert sum(len(s) for s in (splits.train, splits.val, splits.test)) == N
    assert splits.train.labels["genre"].dtype == np.int64 and set(splits.train.inputs) == {i.name for i in INPUTS}
    assert next(lb for lb in splits.report.labels if lb.task == "genre").classes == 4
    with pytest.raises(FusekitError, match="value '3' at row \\d+ is not a class index 0..2"):
        read_splits(_csv(tmp_path, frame), inputs=INPUTS, tasks={"genre": TaskKind("multiclass", 3)})


def test_report(tmp_path):
    frame = _frame()
    splits = read_splits(_csv(tmp_path, frame), inputs=INPUTS, tasks=TASKS, classes={"genre": 4}, seed=3)
    report = splits.report
    data = json.loads(json.dumps(report.to_dict()))
    assert [i["name"] for i in data["inputs"]] == ["user id", "price usd", "v", "flag"]
    assert data["inputs"][2]["sources"] == ["v[0]", "v[1]", "v[2]"] and data["inputs"][0]["shape"] == ["batch"]
    assert {lb["task"]: (lb["kind"], lb["classes"]) for lb in data["labels"]} == \
        {"click": ("binary", None), "genre": ("multiclass", 4), "weeks": ("count", None)}
    assert data["ignored"] == ["session"] and data["split"]["seed"] == 3
    text = "\n".join(report.lines())
    assert "input 'v' [batch, 3] text -> float32  from 'v[0]..v[2]'" in text
    assert "label 'genre' (multiclass, 4 classes)" in text and "ignored: 'session'" in text
    assert "rows: train 48, val 6, test 6" in text and "seeded with 3" in text


def test_round_trip_through_a_torch_export_feeds_raw_values(tmp_path):
    """A model with one ONNX input per feature, trained on raw ids, gives in onnxruntime on the data
    read here exactly what torch gives on the raw arrays: nothing was re-encoded."""
    import onnx
    import torch

    from fusekit.decompose.graph import dtype_name
    from fusekit.onnxio.sessions import run, session
    from tests.onnx_fixtures import export

    sparse, dense = ["user id", "item id"], ["price usd", "age in years"]

    class PerFeature(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = torch.nn.ModuleList([torch.nn.Embedding(300, 4) for _ in sparse])
            self.mlp = torch.nn.Sequential(torch.nn.Linear(4 * len(sparse) + len(dense), 8), torch.nn.ReLU(),
                                           torch.nn.Linear(8, 1))

        def forward(self, user, item, price, age):
            h = torch.cat([t(i) for t, i in zip(self.tables, (user, item))] + [price[:, None], age[:, None]], dim=1)
            return torch.sigmoid(self.mlp(h)).reshape(-1)

    torch.manual_seed(0)
    model = PerFeature().eval()
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"user id": rng.choice([2, 10, 3, 17, 250], N), "item id": rng.integers(0, 300, N),
                          "price usd": rng.normal(50.0, 20.0, N).round(3), "age in years": rng.integers(18, 90, N),
                          "click": rng.integers(0, 2, N)})
    frame.to_csv(tmp_path / "raw.csv", index=False)
    example = (torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), torch.zeros(3), torch.zeros(3))
    path = export(model, example, tmp_path / "m.onnx", dynamo=False, input_names=sparse + dense, output_names=["click"])
    graph = onnx.load(str(path)).graph
    inputs = [InputSpec(v.name, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim],
                        dtype_name(v.type.tensor_type.elem_type)) for v in graph.input]
    assert [(i.name, i.dtype) for i in inputs] == [("user id", "int64"), ("item id", "int64"),
                                                   ("price usd", "float32"), ("age in years", "float32")]
    read = read_named(tmp_path / "raw.csv", inputs, {"click": "binary"}, index_inputs=set(sparse))
    sess, _ = session(path, device="cpu", threads=1)
    split = read.split()
    assert isinstance(split, Split) and len(split) == N
    onnx_out = run(sess, split)["click"]
    with torch.no_grad():
        torch_out = model(*(torch.as_tensor(frame[c].to_numpy(copy=True)) for c in sparse),
                          *(torch.as_tensor(frame[c].to_numpy(np.float32, copy=True)) for c in dense)).numpy()
    np.testing.assert_allclose(onnx_out, torch_out, rtol=1e-5, atol=1e-6)
    assert read.ignored == [] and [lb.task for lb in read.label_reads] == ["click"]
