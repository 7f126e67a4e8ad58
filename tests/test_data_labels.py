"""Labels parsed by task kind, and found by task name."""
from __future__ import annotations

import numpy as np
import pytest

from fusekit.data.labels import class_count, label_columns, parse_labels
from fusekit.errors import FusekitError
from fusekit.task_kinds import TaskKind


def test_binary_from_numbers_booleans_and_text():
    expected = np.array([0, 1, 1, 0], dtype=np.float32)
    for values in ([0, 1, 1, 0], [False, True, True, False], ["0", "1", " 1 ", "0"],
                   ["false", "TRUE", "True", "False"], np.array([0.0, 1.0, 1.0, 0.0])):
        out = parse_labels(values, "binary")
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("values, shown", [([0, 1, 2], "2"), (["0", "yes"], "'yes'"), ([0.0, np.nan], "nan"),
                                           (["1", ""], "''")])
def test_binary_refuses_other_values_naming_value_and_row(values, shown):
    with pytest.raises(FusekitError, match=rf"value {shown} at row {len(values) - 1} is not binary") as info:
        parse_labels(values, "binary", where="t.csv: label column 'y'")
    assert str(info.value).startswith("t.csv: label column 'y'") and "\n" not in str(info.value)


def test_multiclass_indices():
    out = parse_labels(["0", "2", "1", "2.0"], "multiclass", classes=3)
    assert out.dtype == np.int64
    np.testing.assert_array_equal(out, [0, 2, 1, 2])
    assert class_count(out, None) == 3 and class_count(out, 5) == 5


@pytest.mark.parametrize("values, why", [([0, 3], "is not a class index 0..2"), ([0, 1.5], "is not an integer"),
                                         ([0, -1], "is negative"), (["0", "cat"], "is not a number"),
                                         ([0, np.nan], "is missing or not finite")])
def test_multiclass_refusals(values, why):
    with pytest.raises(FusekitError, match=f"at row 1 {why}"):
        parse_labels(values, "multiclass", classes=3)


def test_a_task_kind_gives_its_classes():
    np.testing.assert_array_equal(parse_labels([0, 2], TaskKind("multiclass", 3)), [0, 2])
    with pytest.raises(FusekitError, match="not a class index 0..1"):
        parse_labels([0, 2], TaskKind("multiclass", 2))
    assert parse_labels([1.5], TaskKind("regression", output="value")).dtype == np.float32


def test_multiclass_without_classes_accepts_any_index_and_needs_two_classes():
    np.testing.assert_array_equal(parse_labels([0, 7], "multiclass"), [0, 7])
    with pytest.raises(FusekitError, match="2 or more classes"):
        parse_labels([0, 0], "multiclass", classes=1)


def test_regression():
    out = parse_labels(["1.5", "-2e3", " 7 "], "regression")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [1.5, -2000.0, 7.0])
    np.testing.assert_allclose(parse_labels(np.array([[0.25], [3.0]]), "regression"), [0.25, 3.0])


@pytest.mark.parametrize("values, why", [(["1.0", "n/a"], "'n/a' at row 1 is not a number"),
                                         ([1.0, np.inf], "inf at row 1 is not a finite number"),
                                         (["", "2"], "'' at row 0 is not a number"),
                                         ([1e39, 0.0], "1e\\+39 at row 0 is beyond the float32 range")])
def test_regression_refusals(values, why):
    with pytest.raises(FusekitError, match=why):
        parse_labels(values, "regression", where="d.parquet: label column 'weeks'")


def test_count():
    out = parse_labels([0, 3, "12"], "count")
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [0, 3, 12])
    with pytest.raises(FusekitError, match="value -1 at row 1 is negative; count labels"):
        parse_labels([2, -1], "count")
    with pytest.raises(FusekitError, match="value 0.5 at row 0 is not an integer"):
        parse_labels([0.5, 1], "count")


def test_bad_kind_and_shape():
    with pytest.raises(FusekitError, match="unknown task kind 'ordinal'"):
        parse_labels([0, 1], "ordinal")
    with pytest.raises(FusekitError, match=r"shape \[2, 2\]"):
        parse_labels(np.zeros((2, 2)), "regression")


def test_label_columns_by_task_name_and_mapping():
    columns = ["age", "income", "married flag", "weeks"]
    assert label_columns(["income"], columns) == {"income": "income"}
    assert label_columns(["income", "married"], columns, {"married": "married flag"}) == \
        {"income": "income", "married": "married flag"}


def test_label_columns_refusals():
    columns = ["age", "incomes", "weeks"]
    with pytest.raises(FusekitError, match=r"no label column 'income' for task 'income' \(close: incomes\)"):
        label_columns(["income"], columns, where="d.csv")
    with pytest.raises(FusekitError, match="names task.*other"):
        label_columns(["income"], columns, {"other": "age"})
    with pytest.raises(FusekitError, match="'age' of task 'income' is also a model input"):
        label_columns(["income"], columns, {"income": "age"}, inputs={"age"})
    # The message names the argument the caller passes; a command renders its own flag.
    with pytest.raises(FusekitError) as info:
        label_columns(["income"], columns, {"income": "age"}, inputs={"age"})
    assert "{labels}" in info.value.template and "labels" in str(info.value)
