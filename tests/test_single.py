"""Single-task models on real Census-Income rows: learning, determinism, ONNX export and parity."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from fusekit.data import FeatureSpec, load_dataset
from fusekit.errors import FusekitError
from fusekit.metrics import roc_auc
from fusekit.models.single import Architecture, SingleTaskModel, export_onnx, onnx_probabilities, train_on_dataset
from fusekit.train import TrainConfig, predict

ROWS = 4000


@pytest.fixture(scope="module")
def census(census_dir):
    return load_dataset("census-income", ["income", "never_married"], data_dir=census_dir, holdout=0.2)


def _config(seed=0, epochs=2):
    return TrainConfig(max_epochs=epochs, batch_size=128, lr=3e-3, seed=seed, device="cpu", progress=False)


@pytest.fixture(scope="module")
def trained(census, tmp_path_factory):
    """One small residual BatchNorm model on 4000 rows, exported once for the tests below."""
    arch = Architecture(hidden=[32, 32, 16], batch_norm=True, residual=True)
    model, fitted, metrics, n_rows = train_on_dataset(census, "never_married", arch, _config(), train_rows=ROWS)
    test_auc = metrics["auc"]
    path = export_onnx(model, census.spec, tmp_path_factory.mktemp("single") / "never_married.onnx", census.val)
    return model, fitted, test_auc, n_rows, path


def test_learns_on_held_out_rows(trained, census):
    _, fitted, test_auc, n_rows, _ = trained
    assert n_rows == ROWS < len(census.source_rows())
    assert test_auc > 0.95  # never married is easy; chance is 0.5
    assert 1 <= fitted.best_epoch <= len(fitted.history) <= 2


def test_same_seed_same_model_other_seed_other_model(census):
    arch = Architecture(hidden=[16, 8], batch_norm=True, dropout=0.1)
    m1, _, metrics1, _ = train_on_dataset(census, "income", arch, _config(seed=3, epochs=1), train_rows=2000)
    m2, _, metrics2, _ = train_on_dataset(census, "income", arch, _config(seed=3, epochs=1), train_rows=2000)
    m3, _, _, _ = train_on_dataset(census, "income", arch, _config(seed=4, epochs=1), train_rows=2000)
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert metrics1 == metrics2
    assert not torch.equal(s1["out.weight"], s3["out.weight"])


def test_onnx_carries_metadata_and_names(trained, census):
    *_, path = trained
    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["fusekit.task"] == "never_married"
    assert meta["fusekit.version"]
    spec = FeatureSpec.from_json(meta["fusekit.feature_spec"])
    assert spec.fingerprint() == census.spec.fingerprint()
    assert spec.holdout == {"fraction": 0.2, "seed": 0}
    assert [i.name for i in model.graph.input] == ["categorical", "dense"]
    assert [o.name for o in model.graph.output] == ["never_married"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert path.stat().st_size < 1_000_000
    assert not any(n.metadata_props for n in model.graph.node)  # no exporter stack traces or local paths
    ops = [n.op_type for n in model.graph.node]
    assert "Gemm" in ops and "Sigmoid" in ops and "BatchNormalization" not in ops  # BN folded in eval


def test_onnx_matches_torch_to_1e5(trained, census):
    model, _, test_auc, _, path = trained
    rows = census.test.head(777)  # another batch size than the export's sample: the batch is dynamic
    expected = predict(model, rows, ["never_married"], "cpu")["never_married"]
    np.testing.assert_allclose(onnx_probabilities(path, rows), expected, atol=1e-5, rtol=0)
    probs = onnx_probabilities(path, census.test)
    assert roc_auc(census.test.labels["never_married"], probs) == pytest.approx(test_auc, abs=1e-6)


def test_residual_block_adds_its_input(census):
    arch = Architecture(hidden=[8, 8], residual=True)
    model = SingleTaskModel(census.spec.cardinalities, len(census.spec.dense), "income", arch)
    block = model.blocks[1]
    assert block.residual and not model.blocks[0].residual  # widths differ at the first block
    with torch.no_grad():
        block.linear.weight.zero_()
        block.linear.bias.fill_(-1.0)  # ReLU(-1) = 0: the block reduces to its skip path
        x = torch.randn(5, 8)
        assert torch.equal(block(x), x)


def test_bad_architecture_and_single_class(census):
    with pytest.raises(FusekitError, match="Architecture.hidden"):
        Architecture(hidden=[16, 0])
    with pytest.raises(FusekitError, match="Architecture.dropout"):
        Architecture(dropout=1.0)
    with pytest.raises(FusekitError, match="not in the dataset"):
        train_on_dataset(census, "education", Architecture(), _config())
