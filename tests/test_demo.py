"""The demo's own logic: grouping a pool by task, and refusing a folder without models."""
import onnx
import pytest

from cli.main import main
from fusekit.demo import SAMPLE_MODELS, comparison_table, tasks_of_pool
from fusekit.errors import FusekitError


def test_bundled_pools_group_by_their_task_metadata():
    two = tasks_of_pool(sorted((SAMPLE_MODELS / "census2").glob("*.onnx")))
    assert two == {"income": ["income_a", "income_b"], "never_married": ["never_married_a", "never_married_b"]}
    three = tasks_of_pool(sorted((SAMPLE_MODELS / "census3").glob("*.onnx")))
    assert sorted(three) == ["education", "income", "never_married"]


def test_model_without_task_metadata_is_refused(tmp_path):
    proto = onnx.load(str(SAMPLE_MODELS / "census2" / "income_a.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "anon.onnx"))
    with pytest.raises(FusekitError, match="fusekit.task"):
        tasks_of_pool([tmp_path / "anon.onnx"])


def test_comparison_table_shows_gain_over_the_average():
    rows = [{"task": "income", "sources": {"a": 0.95, "b": 0.94}, "average": 0.951}]
    text = comparison_table(rows, {"income": 0.953})
    assert "a 0.95000, b 0.94000" in text and "+0.00200" in text


def test_empty_models_folder_exits_2_and_writes_nothing(tmp_path, capsys):
    assert main(["demo", "--models", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert "no sample models" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
