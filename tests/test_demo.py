"""The demo's own logic: the comparison table, and refusing a folder without models."""
from fusekit.cli.main import main
from fusekit.demo import comparison_table


def test_comparison_table_shows_gain_over_the_average():
    rows = [{"task": "income", "score": "auc", "sources": {"a": 0.95, "b": 0.94}, "average": 0.951}]
    text = comparison_table(rows, {"income": 0.953})
    assert "a 0.95000, b 0.94000" in text and "+0.00200" in text


def test_empty_models_folder_exits_2_and_writes_nothing(tmp_path, capsys):
    assert main(["demo", "--models", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert "no .onnx models" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_gain_that_rounds_to_zero_prints_without_a_minus_sign():
    # The guard's average differs from the sources' average by float noise only.
    rows = [{"task": "t", "score": "auc", "sources": {"a": 0.99}, "average": 0.99468}]
    assert comparison_table(rows, {"t": 0.99468 - 1e-9}).splitlines()[1].endswith("+0.00000")
