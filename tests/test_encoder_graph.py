"""The in-graph encoder against FeatureSpec.encode on hostile strings: the same ids, bit-identical scaling."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from fusekit.data import FeatureSpec
from fusekit.data.features import CategoricalFeature, DenseFeature
from fusekit.deploy.encoder_graph import default_inputs, encoder_model
from fusekit.deploy.raw_inputs import raw_feeds
from fusekit.errors import FusekitError

VOCAB = ["33", "0", "-5", "a b", "x ", "x", "Handlers etc ", "", " ", "Native- Born in Puerto Rico or U S Outlying",
         "33.0", "\u6f22\u5b57", "tab\there", "007"]
HOSTILE = ["33", " 33 ", "33.0", "33.00", "33.", "33.01", "33.0.0", "33 .0", "33. 0", ".0", ".", "-5.0", "-5.", "-0",
           "+33", "033", "3.3e1", "\u0663\u0663", "\uff13\uff13", "\u00a033", "\t33", "33\t", "33\n", " a   b ", "a  b",
           "x ", "x", "  x", "x  ", "Handlers etc", "Handlers etc  ", "", " ", "   ", "Martian",
           "  Native-   Born in Puerto Rico or U S Outlying ", "Native- Born in Puerto Rico or U S Outlying too",
           "a\x00b", "\u6f22\u5b57", " \u6f22\u5b57", "tab\there", " tab\there ", "tab \there", "007", "7", "7.0",
           "0.0", "00.0", "\U0001f600", "x" * 5000, " " * 300 + "33" + " " * 300, "33" + ".0" * 50]


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _both(spec: FeatureSpec, frame: pd.DataFrame):
    cat, dense = spec.encode(frame)
    got = _session(encoder_model(spec)).run(None, raw_feeds(frame, default_inputs(spec, set())))
    return (cat, dense), got


@pytest.fixture()
def spec() -> FeatureSpec:
    return FeatureSpec([CategoricalFeature("c", VOCAB), CategoricalFeature("codes", ["0", "1", "10", "33"])],
                       [DenseFeature("d", 1.5, 3.0), DenseFeature("flat", 0.25, 0.0)], "toy")


def test_hostile_strings_get_the_ids_encode_gives(spec):
    frame = pd.DataFrame({"c": HOSTILE, "codes": HOSTILE[::-1], "d": np.zeros(len(HOSTILE)),
                          "flat": np.ones(len(HOSTILE))})
    (cat, _), (graph_cat, _) = _both(spec, frame)
    assert graph_cat.dtype == np.int64
    mismatches = [(v, int(a), int(b)) for v, a, b in zip(HOSTILE, cat[:, 0], graph_cat[:, 0]) if a != b]
    assert mismatches == []
    np.testing.assert_array_equal(graph_cat, cat)
    ids = dict(zip(HOSTILE, cat[:, 0].tolist()))
    # The normalisation itself: formatting finds the category, anything else stays unseen (0).
    assert ids[" 33 "] == ids["33.00"] == ids["33."] == ids["33"] == 1
    assert ids["33.0"] == 11  # written exactly as a vocabulary entry: that entry
    assert ids["-5.0"] == 3 and ids["Handlers etc"] == 7 and ids[" a   b "] == 4
    assert ids["x "] == 5 and ids["  x"] == 6  # an entry written in the normal form wins
    assert ids["7.0"] == 0 and ids["7"] == 0  # "007" is not the integer 7
    assert all(ids[v] == 0 for v in ["33.01", "33.0.0", "+33", "3.3e1", "\u0663\u0663", "\t33", "Martian"])


def test_random_strings_from_a_hostile_alphabet_agree(spec):
    rng = np.random.default_rng(0)
    alphabet = list(" .0-3x\t\u00a0ab") + ["33", "Handlers etc", ".0"]
    values = ["".join(rng.choice(alphabet, size=rng.integers(0, 8))) for _ in range(3000)]
    frame = pd.DataFrame({"c": values, "codes": values[::-1], "d": np.zeros(len(values)), "flat": np.zeros(len(values))})
    (cat, _), (graph_cat, _) = _both(spec, frame)
    np.testing.assert_array_equal(graph_cat, cat)
    assert (cat > 0).sum() > 100  # the alphabet reaches real categories, not only unseen ones


def test_dense_scaling_is_bit_identical_for_float32_inputs(spec):
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0, 1e4, 500), [0.0, -0.0, 1e-30, 3.4e38, -3.4e38]]).astype(np.float32)
    frame = pd.DataFrame({"c": ["x"] * len(x), "codes": ["1"] * len(x), "d": x.astype(np.float64),
                          "flat": x.astype(np.float64)})
    (_, dense), (_, graph_dense) = _both(spec, frame)
    assert graph_dense.dtype == np.float32
    np.testing.assert_array_equal(graph_dense, dense)  # std 0 scales by 1, as encode does


def test_batch_of_one_and_of_none():
    spec = FeatureSpec([CategoricalFeature("c", ["a", "b"])], [DenseFeature("d", 0.0, 1.0)], "toy")
    sess = _session(encoder_model(spec))
    for values in (["b"], [" b "], []):
        cat, dense = sess.run(None, {"c": np.array(values, dtype=object), "d": np.zeros(len(values), np.float32)})
        assert cat.shape == (len(values), 1) and dense.shape == (len(values), 1)
        assert cat[:, 0].tolist() == [2] * len(values)


def test_duplicate_columns_are_refused_naming_the_feature():
    spec = FeatureSpec([CategoricalFeature("c", ["a"])], [DenseFeature("c", 0.0, 1.0)], "toy")
    with pytest.raises(FusekitError, match="feature 'c' appears twice"):
        encoder_model(spec)


def test_input_names_keep_legal_column_names_and_replace_the_others():
    spec = FeatureSpec([CategoricalFeature("my col", ["a"]), CategoricalFeature("", ["a"]),
                        CategoricalFeature("new\nline", ["a"]), CategoricalFeature("income", ["a"])],
                       [DenseFeature("fusekit.encode/x", 0.0, 1.0)], "toy")
    names = [i.name for i in default_inputs(spec, reserved={"income"})]
    assert names == ["my col", "column_1", "column_2", "column_3", "column_4"]
