"""The bundled sample pools: shipped with the package, task order owned by pool.json."""
import json

import onnx
import pytest

from fusekit.decompose.manifest import task_groups
from fusekit.errors import FusekitError
from fusekit.sample_models import POOLS, ROOT, pool_for_tasks, sample_pool


def test_every_pool_is_complete_and_ordered_as_its_pool_json():
    for name in POOLS:
        pool = sample_pool(name)
        record = json.loads((ROOT / name / "pool.json").read_text())
        assert pool.tasks == record["pool_tasks"]
        assert all(p.is_file() for p in pool.paths)
        # The files' own task metadata agree with pool.json's grouping.
        assert task_groups(pool.paths) == pool.models


def test_three_task_pool_keeps_its_task_order_not_the_alphabet():
    assert sample_pool("census3").tasks == ["income", "never_married", "education"]
    assert pool_for_tasks(["education", "income", "never_married"]).name == "census3"


def test_unknown_pool_and_task_set_are_refused():
    with pytest.raises(FusekitError, match="census2, census3"):
        sample_pool("census9")
    with pytest.raises(FusekitError, match="no bundled sample pool"):
        pool_for_tasks(["income", "education"])


def test_model_without_task_metadata_is_refused(tmp_path):
    proto = onnx.load(str(sample_pool("census2").paths[0]))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "anon.onnx"))
    with pytest.raises(FusekitError, match="fusekit.task"):
        task_groups([tmp_path / "anon.onnx"])
