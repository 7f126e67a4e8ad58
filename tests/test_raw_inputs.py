"""Raw-input export: the served file equals FeatureSpec.encode + the model, on the real Census test file."""
from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from fusekit.data import FeatureSpec
from fusekit.data.features import CategoricalFeature, DenseFeature
from fusekit.deploy.raw_inputs import (RAW_INPUTS_KEY, attach_encoder, check_raw_model, export_model, raw_feeds,
                                       raw_inputs_of, synthesised_rows)
from fusekit.errors import FusekitError
from fusekit.sample_models import sample_pool
from tests.fusion_pool import LABELS, TASKS


@pytest.fixture(scope="module")
def census_test(census_dir) -> pd.DataFrame:
    """The whole raw Census-Income test file (99,762 rows: the validation and test splits)."""
    from fusekit.data.census import read_census

    return read_census(census_dir)[1]


@pytest.fixture(scope="module")
def fused_model(pool, tmp_path_factory):
    """A fused model of the small test pool (one epoch)."""
    from fusekit.fusion.fuse import FuseOptions, fuse
    from fusekit.train import TrainConfig

    out = tmp_path_factory.mktemp("raw") / "fused"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fuse(pool["parts"], TASKS, pool["csv"], out,
             FuseOptions(labels=LABELS, training=TrainConfig(max_epochs=1, batch_size=512, device="cpu",
                                                             progress=False)))
    return out / "fused.onnx"


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _expected(core_path, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    core = onnx.load(str(core_path))
    spec = FeatureSpec.from_json({p.key: p.value for p in core.metadata_props}["fusekit.feature_spec"])
    cat, dense = spec.encode(frame)
    sess = _session(core)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"categorical": cat, "dense": dense})))


@pytest.mark.parametrize("which", ["fused", "single"])
def test_served_file_equals_encode_plus_model_on_the_whole_census_test_file(which, fused_model, census_test, tmp_path):
    source = fused_model if which == "fused" else sample_pool("census2").paths[0]
    result = export_model(source, tmp_path / "served.onnx")
    served = onnx.load(str(tmp_path / "served.onnx"))
    meta = {p.key: p.value for p in served.metadata_props}
    inputs = raw_inputs_of(meta)
    assert [i.name for i in served.graph.input] == [i.name for i in inputs] == [i.column for i in result.raw_inputs]
    assert meta["fusekit.feature_spec"] == {p.key: p.value for p in onnx.load(str(source)).metadata_props}[
        "fusekit.feature_spec"]
    assert ("fusekit.tasks" in meta) == (which == "fused")
    expected = _expected(source, census_test)
    got = _session(served).run(None, raw_feeds(census_test, inputs))
    assert [o.name for o in served.graph.output] == list(expected)
    for name, value in zip(expected, got):
        np.testing.assert_allclose(value, expected[name], rtol=0, atol=1e-6)
    assert result.max_diff == 0.0 and result.check_source == "synthesised"


def test_formatting_variants_and_unseen_values_match_encode(census_test, tmp_path):
    """Codes written 33.0, values with spaces, unseen values: the graph and encode agree row by row."""
    source = sample_pool("census2").paths[0]
    rows = census_test.head(200).copy()
    rows["det_ind_code"] = rows["det_ind_code"] + ".0"
    rows["education"] = "  " + rows["education"] + " "
    rows.loc[rows.index[:20], "race"] = "Martian"
    served, inputs = attach_encoder(onnx.load(str(source)))
    diff, report = check_raw_model(served, onnx.load(str(source)), inputs, rows)
    assert diff <= 1e-6
    assert report["unseen"] == {"race": 20}
    assert report["normalised"] == {"det_ind_code": 200, "education": 200}
    # The formatting changes nothing: same predictions as the clean rows.
    clean = _expected(source, census_test.head(200))["income"]
    mangled = _session(served).run(None, raw_feeds(rows.assign(race=census_test["race"].head(200)), inputs))[0]
    np.testing.assert_allclose(mangled, clean, atol=1e-6)


def test_odd_column_names_keep_their_names_and_collisions_move_the_model_tensors(tmp_path):
    """Columns named like the model's own tensors (its inputs, an internal tensor), with spaces, or empty."""
    model = onnx.load(str(sample_pool("census2").paths[0]))
    spec = FeatureSpec.from_json({p.key: p.value for p in model.metadata_props}["fusekit.feature_spec"])
    internal = next(n.output[0] for n in model.graph.node if n.op_type == "Concat")
    renames = {spec.categorical[0].name: "dense", spec.categorical[1].name: "a column/with:odd \u00e9 chars",
               spec.categorical[2].name: internal, spec.dense[0].name: "", spec.dense[1].name: "categorical"}
    for feature in spec.categorical + spec.dense:
        feature.name = renames.get(feature.name, feature.name)
    for prop in model.metadata_props:
        if prop.key == "fusekit.feature_spec":
            prop.value = spec.to_json()
    served, inputs = attach_encoder(model)
    names = [i.name for i in inputs]
    assert names[:3] == ["dense", "a column/with:odd \u00e9 chars", internal]
    assert names[len(spec.categorical)] == f"column_{len(spec.categorical)}"  # the empty name
    assert "categorical" in names
    onnx.checker.check_model(served, full_check=True)
    frame = synthesised_rows(spec)
    diff, _ = check_raw_model(served, model, inputs, frame)
    assert diff <= 1e-6


def test_wrong_dtype_at_serving_time_is_onnxruntimes_error(tmp_path):
    export_model(sample_pool("census2").paths[0], tmp_path / "served.onnx")
    sess = ort.InferenceSession(str(tmp_path / "served.onnx"), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    inputs = raw_inputs_of(meta)
    spec = FeatureSpec.from_json(meta["fusekit.feature_spec"])
    feeds = raw_feeds(synthesised_rows(spec), inputs)
    code = next(i.name for i in inputs if i.column == "det_ind_code")
    feeds[code] = np.arange(len(feeds[code]), dtype=np.int64)  # integer codes must be fed as text
    with pytest.raises(Exception, match=r"tensor\(int64\).*expected.*tensor\(string\)"):
        sess.run(None, feeds)


def test_check_data_rows_are_used_and_a_bad_spec_is_refused_naming_the_feature(census_test, tmp_path):
    source = sample_pool("census2").paths[0]
    rows = tmp_path / "rows.csv"
    census_test.head(100).to_csv(rows, index=False)
    result = export_model(source, tmp_path / "served.onnx", check_data=rows)
    assert result.check_rows == 100 and result.check_source == str(rows)
    model = onnx.load(str(source))
    spec = FeatureSpec.from_json({p.key: p.value for p in model.metadata_props}["fusekit.feature_spec"])
    spec.dense[2].std = float("inf")
    for prop in model.metadata_props:
        if prop.key == "fusekit.feature_spec":
            prop.value = spec.to_json()
    with pytest.raises(FusekitError, match=f"dense feature '{spec.dense[2].name}'"):
        attach_encoder(model)


def test_a_raw_input_file_and_a_model_without_spec_are_refused(tmp_path):
    served = tmp_path / "served.onnx"
    export_model(sample_pool("census2").paths[0], served)
    assert RAW_INPUTS_KEY in {p.key for p in onnx.load(str(served)).metadata_props}
    with pytest.raises(FusekitError, match="already takes raw columns"):
        export_model(served, tmp_path / "again.onnx")
    bare = onnx.load(str(sample_pool("census2").paths[0]))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    with pytest.raises(FusekitError, match="carries no fusekit.feature_spec"):
        export_model(tmp_path / "bare.onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_spec_with_only_dense_columns(tmp_path):
    """A model without categorical columns still gets its [batch, 0] categorical input."""
    spec = FeatureSpec([], [DenseFeature("x", 2.0, 4.0)], "toy")
    from fusekit.deploy.encoder_graph import encoder_model

    model = encoder_model(spec)
    cat, dense = _session(model).run(None, {"x": np.array([2.0, 6.0], np.float32)})
    assert cat.shape == (2, 0) and dense[:, 0].tolist() == [0.0, 1.0]
    spec = FeatureSpec([CategoricalFeature("c", ["a"])], [], "toy")
    cat, dense = _session(encoder_model(spec)).run(None, {"c": np.array(["a", " a", "b"], dtype=object)})
    assert cat[:, 0].tolist() == [1, 1, 0] and dense.shape == (3, 0)
