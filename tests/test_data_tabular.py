"""Generic CSV/Parquet data: layouts, inference, labels, bad input."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fusekit.data import FeatureSpec, load_dataset
from fusekit.errors import FusekitError


def _toy(n=400, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "blue", "NA"], n)
    x = rng.normal(size=n).round(3)
    y = ((colour == "red") ^ (x > 1.0)).astype(int)
    return pd.DataFrame({"row_id": np.arange(n), "colour": colour, "shop": rng.integers(1, 5, n), "x": x, "y": y})


def test_aliexpress_layout(shared_data):
    path = shared_data / "aliexpress-sample" / "aliexpress_train_sample.csv"
    ds = load_dataset(path, ["click", "conversion"])
    names_cat = [c.name for c in ds.spec.categorical]
    names_dense = [d.name for d in ds.spec.dense]
    assert names_cat == [f"categorical_{i}" for i in range(1, 17)]
    assert all(n.startswith("numerical_") for n in names_dense) and len(names_dense) == 63
    assert "search_id" not in ds.spec.columns
    assert len(ds.train) == 100 and len(ds.val) + len(ds.test) == 20  # the test file halved
    assert set(ds.train.labels) == {"click", "conversion"}


def test_ali_ccp_layout_uses_the_validation_file(shared_data):
    path = shared_data / "ali-ccp-sample" / "ali_ccp_train_sample.csv"
    ds = load_dataset(path, ["click", "purchase"])
    assert len(ds.train) == 100 and len(ds.val) == 50 and len(ds.test) == 50
    dense = [d.name for d in ds.spec.dense]
    assert dense and all(n.startswith("D") for n in dense)
    assert "101" in [c.name for c in ds.spec.categorical]
    assert ds.train.cat.dtype == np.int64 and ds.train.dense.dtype == np.float32


def test_single_file_is_split_and_id_column_skipped(tmp_path):
    frame = _toy()
    frame.to_csv(tmp_path / "toy.csv", index=False)
    ds = load_dataset(tmp_path / "toy.csv", ["hit"], labels={"hit": "y"})
    assert [c.name for c in ds.spec.categorical] == ["colour", "shop"]
    assert [d.name for d in ds.spec.dense] == ["x"]
    assert (len(ds.train), len(ds.val), len(ds.test)) == (320, 40, 40)
    assert "NA" in ds.spec.categorical[0].vocab
    again = load_dataset(tmp_path / "toy.csv", ["hit"], labels={"hit": "y"})
    np.testing.assert_array_equal(ds.test.cat, again.test.cat)


def test_parquet_encodes_like_csv(tmp_path):
    frame = _toy()
    frame.to_csv(tmp_path / "toy.csv", index=False)
    frame.to_parquet(tmp_path / "toy.parquet")
    a = load_dataset(tmp_path / "toy.csv", ["y"])
    b = load_dataset(tmp_path / "toy.parquet", ["y"], spec=a.spec)
    np.testing.assert_array_equal(a.train.cat, b.train.cat)
    np.testing.assert_allclose(a.train.dense, b.train.dense, atol=1e-6)


def test_named_columns_and_spec_reuse(tmp_path):
    frame = _toy()
    frame.to_csv(tmp_path / "toy.csv", index=False)
    ds = load_dataset(tmp_path / "toy.csv", ["y"], categorical=["shop"], dense=["x"])
    assert ds.spec.columns == ["shop", "x"]
    spec = FeatureSpec.from_json(ds.spec.to_json())
    new = frame.assign(shop=99)  # an id never seen in training
    new.to_csv(tmp_path / "new.csv", index=False)
    other = load_dataset(tmp_path / "new.csv", ["y"], spec=spec)
    assert (np.concatenate([other.train.cat, other.val.cat, other.test.cat]) == 0).all()


def test_label_errors(tmp_path):
    frame = _toy()
    frame.to_csv(tmp_path / "toy.csv", index=False)
    with pytest.raises(FusekitError, match="no label column 'clicked'"):
        load_dataset(tmp_path / "toy.csv", ["click"], labels={"click": "clicked"})
    with pytest.raises(FusekitError, match=r"label column 'shop': value '\d+' at row \d+ is not binary"):
        load_dataset(tmp_path / "toy.csv", ["shop"])
    frame.assign(y=frame.y.map({0: "false", 1: "true"})).to_csv(tmp_path / "bool.csv", index=False)
    ds = load_dataset(tmp_path / "bool.csv", ["y"])
    assert set(np.unique(ds.train.labels["y"])) == {0.0, 1.0}


def test_nan_and_inf_dense_values_name_column_and_row(tmp_path):
    frame = _toy()
    frame["x"] = frame["x"].astype(object)
    frame.loc[7, "x"] = "inf"
    frame.to_csv(tmp_path / "inf.csv", index=False)
    with pytest.raises(FusekitError, match=r"'x'.*row 7"):
        load_dataset(tmp_path / "inf.csv", ["y"])
    frame.loc[7, "x"] = 0.5
    frame.loc[11, "x"] = ""
    frame.to_csv(tmp_path / "nan.csv", index=False)
    with pytest.raises(FusekitError, match=r"'x'.*row 11"):
        load_dataset(tmp_path / "nan.csv", ["y"])


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(FusekitError, match="empty"):
        load_dataset(tmp_path / "empty.csv", ["y"])
    (tmp_path / "header.csv").write_text("a,b,y\n")
    with pytest.raises(FusekitError, match="no rows"):
        load_dataset(tmp_path / "header.csv", ["y"])
    with pytest.raises(FusekitError, match="does not exist"):
        load_dataset(tmp_path / "nope.csv", ["y"])


def test_the_split_is_recorded_in_the_spec_and_checked_when_data_is_loaded_again(tmp_path):
    """Issue 13, item 6: models of one pool must use one split; data loaded for a model with another
    split seed is refused, naming the seed the model was trained with."""
    frame = _toy()
    frame["z"] = 1 - frame["y"]
    frame.to_csv(tmp_path / "toy.csv", index=False)
    ds = load_dataset(tmp_path / "toy.csv", ["y"], seed=3)
    assert ds.spec.split["seed"] == 3 and ds.spec.split["rows"]["test"] == len(ds.test)
    again = load_dataset(tmp_path / "toy.csv", ["y"], spec=ds.spec, seed=3)
    np.testing.assert_array_equal(again.test.cat, ds.test.cat)
    with pytest.raises(FusekitError, match="use split seed 3"):
        load_dataset(tmp_path / "toy.csv", ["y"], spec=ds.spec, seed=0)
    # the split is the same whichever task is loaded: it reads no label
    other = load_dataset(tmp_path / "toy.csv", ["z"], seed=3, exclude=["y"])
    assert other.spec.split == ds.spec.split
