"""FeatureSpec: fitting, encoding, JSON round trip, fingerprint, bad values."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fusekit.data import FeatureSpec
from fusekit.data.features import CategoricalFeature, DenseFeature, fit_spec
from fusekit.errors import FusekitError


@pytest.fixture()
def frame() -> pd.DataFrame:
    return pd.DataFrame({
        "colour": ["red", "blue", "NA", "red", "green"],
        "size": [1, 3, 2, 3, 1],
        "weight": [1.0, 2.0, 3.0, 4.0, 5.0],
    })


def test_fit_encodes_vocabulary_order_and_standardises(frame):
    spec = fit_spec(frame, ["colour", "size"], ["weight"], dataset="toy")
    assert spec.categorical[0].vocab == ["NA", "blue", "green", "red"]
    assert spec.cardinalities == [5, 4]
    cat, dense = spec.encode(frame)
    assert cat.dtype == np.int64 and dense.dtype == np.float32
    # ids are vocabulary positions + 1; "NA" is a real category, not missing
    assert cat[:, 0].tolist() == [4, 2, 1, 4, 3]
    assert cat[:, 1].tolist() == [1, 3, 2, 3, 1]
    assert dense[:, 0].mean() == pytest.approx(0.0, abs=1e-6)
    assert dense[:, 0].std() == pytest.approx(1.0, abs=1e-6)


def test_unseen_values_get_id_zero(frame):
    spec = fit_spec(frame, ["colour", "size"], ["weight"], dataset="toy")
    new = pd.DataFrame({"colour": ["purple", "red", None], "size": [7, 1, 2], "weight": [0.0, 1.0, 2.0]})
    cat, _ = spec.encode(new)
    assert cat[:, 0].tolist() == [0, 4, 0]
    assert cat[:, 1].tolist() == [0, 1, 2]


def test_float_typed_integer_codes_match_integer_vocabulary(frame):
    # Parquet may hand back integer codes as floats; "3.0" must still find "3".
    spec = fit_spec(frame, ["size"], [], dataset="toy")
    cat, _ = spec.encode(pd.DataFrame({"size": [3.0, 1.0, 9.0]}))
    assert cat[:, 0].tolist() == [3, 1, 0]


def test_json_round_trip_and_fingerprint(frame):
    spec = fit_spec(frame, ["colour", "size"], ["weight"], dataset="toy", excluded=["label"],
                    holdout={"fraction": 0.2, "seed": 0})
    back = FeatureSpec.from_json(spec.to_json())
    assert back == spec
    assert back.fingerprint() == spec.fingerprint()
    cat1, dense1 = spec.encode(frame)
    cat2, dense2 = back.encode(frame)
    np.testing.assert_array_equal(cat1, cat2)
    np.testing.assert_array_equal(dense1, dense2)
    # the holdout and dataset name do not change the encoding, so not the fingerprint
    other = FeatureSpec.from_json(spec.to_json())
    other.holdout, other.dataset = None, "renamed"
    assert other.fingerprint() == spec.fingerprint()
    # vocabulary and scaling do
    other.categorical[0].vocab = other.categorical[0].vocab + ["zzz"]
    assert other.fingerprint() != spec.fingerprint()
    scaled = FeatureSpec.from_json(spec.to_json())
    scaled.dense[0].mean += 1e-9
    assert scaled.fingerprint() != spec.fingerprint()


@pytest.mark.parametrize("text", ["", "[]", '{"categorical": []}', '{"categorical": [], "dense": []}', "{bad json"])
def test_invalid_json_is_a_fusekit_error(text):
    with pytest.raises(FusekitError, match="feature specification"):
        FeatureSpec.from_json(text)


@pytest.mark.parametrize("bad", [np.nan, np.inf, "heavy"])
def test_non_finite_dense_value_names_column_and_row(bad):
    spec = FeatureSpec([CategoricalFeature("c", ["x"])], [DenseFeature("w", 0.0, 1.0)], "toy")
    frame = pd.DataFrame({"c": ["x", "x", "x"], "w": pd.Series([1.0, bad, 2.0], dtype=object)})
    with pytest.raises(FusekitError, match=r"'w'.*row 1"):
        spec.encode(frame)


def test_missing_column_is_named():
    spec = FeatureSpec([CategoricalFeature("c", ["x"])], [DenseFeature("w", 0.0, 1.0)], "toy")
    with pytest.raises(FusekitError, match="lacks column.*w"):
        spec.encode(pd.DataFrame({"c": ["x"]}))


def test_constant_dense_column_does_not_divide_by_zero():
    frame = pd.DataFrame({"w": [2.0, 2.0, 2.0]})
    spec = fit_spec(frame, [], ["w"], dataset="toy")
    _, dense = spec.encode(frame)
    assert np.isfinite(dense).all() and (dense == 0).all()


def test_formatting_finds_the_category_and_the_report_counts_unseen_values():
    spec = FeatureSpec([CategoricalFeature("code", ["0", "33", "7"]), CategoricalFeature("job", ["Sales ", "Clerk"])],
                       [], "toy")
    rows = pd.DataFrame({"code": ["33", "33.0", " 33 ", "33.00", "33.5", "+33", "9", "033", "0.0", ""],
                         "job": ["Sales", " Sales  ", "Sales ", "Clerk", "clerk", "Clerk", "  Clerk", "x", "", "Clerk"]})
    cat, _, report = spec.encode_with_report(rows)
    assert cat[:, 0].tolist() == [2, 2, 2, 2, 0, 0, 0, 0, 1, 0]
    assert cat[:, 1].tolist() == [1, 1, 1, 2, 0, 2, 2, 0, 0, 2]
    assert report.to_dict() == {"rows": 10, "unseen": {"code": 5, "job": 3}, "normalised": {"code": 4, "job": 3}}
    assert report.lines()[0] == "column 'code': 5 of 10 rows unseen (id 0), 4 found after normalising spaces or numbers"


def test_normalising_never_picks_between_two_categories():
    # "a" and "a " share a normal form: the entry written that way wins; "b " and " b" share one and
    # neither is written so, so " b " stays unseen while each is found as written.
    spec = FeatureSpec([CategoricalFeature("c", ["a", "a ", "b ", " b"])], [], "toy")
    cat, _ = spec.encode(pd.DataFrame({"c": ["a", "a ", "  a", "b ", " b", " b "]}))
    assert cat[:, 0].tolist() == [1, 2, 1, 3, 4, 0]


def test_integer_codes_in_an_object_column_find_their_text_form():
    spec = FeatureSpec([CategoricalFeature("c", ["1", "33"])], [], "toy")
    cat, _ = spec.encode(pd.DataFrame({"c": pd.Series([33, "1", 1.0, None], dtype=object)}))
    assert cat[:, 0].tolist() == [2, 1, 1, 0]
