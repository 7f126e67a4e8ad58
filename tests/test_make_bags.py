"""fusekit.sample_models.make_bags: the digits EmbeddingBag pool, one model of each task per torch exporter."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from fusekit.errors import FusekitError
from fusekit.onnxio.optable import data_loops
from fusekit.sample_models import make_bags as mb
from fusekit.sample_models import make_digits as md


def test_the_pool_holds_both_exporters_loops_and_is_reused(tmp_path):
    out = tmp_path / "bags"
    record = mb.make_bags(out, epochs=1)
    assert [m["file"] for m in record["models"]] == [f"{t}_{m}.onnx" for t in md.TASKS for m in md.DEPTH]
    for entry in record["models"]:
        model = onnx.load(str(out / entry["file"]))
        assert data_loops(model), entry["file"]  # a Loop run once per bag
        sequences = any(n.op_type == "SequenceEmpty" for n in model.graph.node)
        assert sequences == (entry["exporter"] == "dynamo")
        assert {p.key: p.value for p in model.metadata_props}["fusekit.task"] == entry["task"]
    train = np.load(out / "data" / "train.npz")
    assert train["ids"].shape[1] == mb.BAG and train["ids"].min() >= 0 and train["ids"].max() < 64
    assert len(train["ids"]) == len(md.digits_arrays()["train"]["digit"])
    stamp = (out / "pool.json").stat().st_mtime_ns
    assert mb.make_bags(out, epochs=1) == record and (out / "pool.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "pool.json").read_text()) == record


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(FusekitError, match="epochs must be at least 1"):
        mb.make_bags(tmp_path / "bags", epochs=0)
    assert not (tmp_path / "bags").exists()
