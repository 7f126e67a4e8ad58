"""``run_record``: command line, data and checksums, split seed, versions; no absolute paths."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from fusekit.errors import FusekitError
from fusekit.provenance import portable_command, portable_path, run_record


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def _no_absolute_path(record: dict, *roots: Path) -> None:
    text = json.dumps(record)
    for root in roots:
        assert str(root) not in text
    for s in _strings(record):
        for part in s.split("="):
            assert not os.path.isabs(part), s


@pytest.fixture()
def csv(tmp_path) -> Path:
    path = tmp_path / "data" / "clicks.csv"
    path.parent.mkdir()
    path.write_text("shop,price,clicked\na,1.0,1\nb,2.0,0\n")
    return path


def test_a_file_run_records_command_data_checksum_seed_and_versions(tmp_path, csv):
    argv = ["fusekit", "fuse", str(tmp_path / "parts"), "--data", str(csv), "--label", "click=clicked",
            f"--data-dir={tmp_path / 'cache'}", "-o", "out", "--split-seed", "3"]
    record = run_record(argv, csv, split_seed=3, cwd=tmp_path)
    assert record["command"] == ["fusekit", "fuse", "parts", "--data", "data/clicks.csv", "--label", "click=clicked",
                                 "--data-dir=cache", "-o", "out", "--split-seed", "3"]
    assert record["data"]["source"] == "data/clicks.csv"
    assert record["data"]["files"] == {"data": {"path": "data/clicks.csv",
                                                "sha256": hashlib.sha256(csv.read_bytes()).hexdigest()}}
    assert record["split_seed"] == 3
    import onnx
    import onnxruntime
    import torch

    from fusekit import __version__

    assert record["versions"] == {"fusekit": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                                  "onnxruntime": onnxruntime.__version__, "numpy": np.__version__,
                                  "python": record["versions"]["python"]}
    assert record["versions"]["python"].count(".") == 2
    assert json.loads(json.dumps(record)) == record
    _no_absolute_path(record, tmp_path)


def test_census_files_are_recorded_with_their_checksums(census_dir, tmp_path):
    from fusekit.data import census

    if census_dir is None:
        pytest.skip("needs a local copy of the Census-Income files")
    files = census.locate(census_dir, fetch=False)
    record = run_record(["fusekit", "eval", "m.onnx", "--data", "census-income"], "census-income",
                        data_dir=census_dir, cwd=tmp_path)
    assert record["data"]["source"] == "census-income"
    assert set(record["data"]["files"]) == {"train", "test"}
    for part, path in files.items():
        entry = record["data"]["files"][part]
        assert entry["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()
        assert entry["path"].endswith(Path(path).name)
    _no_absolute_path(record, tmp_path)


def test_the_config_file_a_run_read_is_recorded(tmp_path, csv):
    config = tmp_path / "run.toml"
    config.write_text('epochs = 3\nmode = "paper"\n')
    record = run_record(["fusekit", "fuse", "--config", "run.toml"], csv, cwd=tmp_path)
    assert record["config"] == {"path": "run.toml", "sha256": hashlib.sha256(config.read_bytes()).hexdigest(),
                                "settings": {"epochs": 3, "mode": "paper"}}
    assert "config" not in run_record(["fusekit", "fuse"], csv, cwd=tmp_path)


def test_a_dataset_object_is_recorded_by_its_feature_fingerprint(tmp_path, csv):
    from fusekit.data import load_dataset

    rows = "shop,price,clicked\n" + "".join(f"{'ab'[i % 2]},{i / 10},{i % 2}\n" for i in range(60))
    csv.write_text(rows)
    ds = load_dataset(csv, ["click"], labels={"click": "clicked"})
    record = run_record(None, ds, cwd=tmp_path)
    assert record["command"] is None and record["data"]["files"] == {}
    assert record["data"]["feature_fingerprint"] == ds.spec.fingerprint()


def test_paths_are_relative_to_the_directory_of_the_run(tmp_path):
    here = tmp_path / "work"
    assert portable_path(here / "out" / "m.json", here) == "out/m.json"
    assert portable_path("out", here) == "out"
    assert portable_path(here, here) == "."
    assert portable_path(tmp_path / "elsewhere" / "x.csv", here) == "../elsewhere/x.csv"
    home = Path.home()
    if home != Path(home.anchor) and home not in here.parents:
        assert portable_path(home / "data" / "x.csv", here) == "~/data/x.csv"
    assert portable_command(["fusekit", "eval", "rel/m.onnx", "--seed", "3", "--data=census-income"], here) == [
        "fusekit", "eval", "rel/m.onnx", "--seed", "3", "--data=census-income"]


def test_a_missing_data_file_is_a_user_error(tmp_path):
    with pytest.raises(FusekitError, match="does not exist"):
        run_record(["fusekit"], tmp_path / "absent.csv", cwd=tmp_path)
