"""fusekit.sample_models.make_digits: the digits data and pools, made with a budget of one epoch."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from fusekit.decompose import decompose
from fusekit.decompose.manifest import TASK_KEY, Manifest
from fusekit.errors import FusekitError
from fusekit.onnxio.interpreter import load_component
from fusekit.onnxio.sessions import session
from fusekit.sample_models import make_digits as md


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    out = tmp_path_factory.mktemp("digits") / "pool"
    return out, md.make_digits(out, kinds=["cnn"], epochs=1)


def test_the_split_is_seeded_disjoint_and_shared_by_every_task(digits):
    out, record = digits
    arrays = md.digits_arrays()
    assert record["rows"] == {"train": 1078, "val": 359, "test": 360}
    for split, n in record["rows"].items():
        data = np.load(out / "data" / f"{split}.npz")
        assert data["image"].shape == (n, 1, 8, 8) and data["image"].dtype == np.float32
        assert data["rows"].shape == (n, 8, 8) and np.array_equal(data["rows"], data["image"][:, 0])
        assert data["digit"].dtype == np.int64 and set(np.unique(data["digit"])) == set(range(10))
        assert data["digit_ge5"].dtype == np.float32 and np.array_equal(data["digit_ge5"], data["digit"] >= 5)
        assert 0.0 <= data["image"].min() and data["image"].max() <= 1.0
        assert np.array_equal(data["image"], arrays[split]["image"])  # the same split every time
    flat = [np.load(out / "data" / f"{s}.npz")["rows"].reshape(-1, 64) for s in ("train", "test")]
    assert not {r.tobytes() for r in flat[0]} >= {r.tobytes() for r in flat[1]}  # test rows are not all training rows


def test_the_cnn_pool_has_two_models_per_task_with_task_metadata_and_outputs(digits):
    out, record = digits
    pool = json.loads((out / "cnn" / "pool.json").read_text())
    assert pool["pool_tasks"] == ["digit_ge5", "digit"] and len(pool["models"]) == 4
    test = np.load(out / "data" / "test.npz")
    for entry in pool["models"]:
        model = onnx.load(str(out / "cnn" / entry["file"]))
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta[TASK_KEY] == entry["task"]
        assert [i.name for i in model.graph.input] == ["image"]
        probs = session(out / "cnn" / entry["file"], "cpu", threads=1)[0].run(None, {"image": test["image"]})[0]
        if entry["task"] == "digit":
            assert probs.shape == (360, 10) and np.allclose(probs.sum(1), 1.0, atol=1e-5)
            assert entry["test_accuracy"] == pytest.approx(np.mean(probs.argmax(1) == test["digit"]), abs=1e-4)
        else:
            assert probs.shape == (360,) and 0.0 <= probs.min() and probs.max() <= 1.0
            assert 0.5 < entry["test_auc"] <= 1.0
    depth = {e["file"]: len([n for n in onnx.load(str(out / "cnn" / e["file"])).graph.node if n.op_type == "Conv"])
             for e in pool["models"]}
    assert depth == {"digit_ge5_a.onnx": 2, "digit_ge5_b.onnx": 3, "digit_a.onnx": 2, "digit_b.onnx": 3}


def test_same_settings_are_reused_and_other_settings_refused(digits):
    out, record = digits
    stamp = (out / "digits.json").stat().st_mtime_ns
    assert md.make_digits(out, kinds=["cnn"], epochs=1) == record
    assert (out / "digits.json").stat().st_mtime_ns == stamp
    with pytest.raises(FusekitError, match="not empty"):
        md.make_digits(out, kinds=["cnn"], epochs=2)
    with pytest.raises(FusekitError, match="unknown digits pool kind"):
        md.make_digits(out, kinds=["vit"])
    assert (out / "digits.json").stat().st_mtime_ns == stamp


def test_decompose_cuts_the_cnn_pool_and_the_components_chain_exactly(digits, tmp_path):
    out, _ = digits
    paths = sorted((out / "cnn").glob("*.onnx"))
    decompose(paths, tmp_path / "parts")
    manifest = Manifest.load(tmp_path / "parts")
    assert manifest.levels >= 1 and len(manifest.boundaries[0].shape) == 4  # a feature map [batch, C, H, W]
    image = np.load(out / "data" / "val.npz")["image"][:50]
    for name, path in zip(manifest.names, paths):
        want = session(path, "cpu", threads=1)[0].run(None, {"image": image})[0]
        h = torch.from_numpy(image)
        with torch.no_grad():
            for part in manifest.component_paths(name) + [manifest.head_path(name)]:
                h = load_component(part)(h)
        assert np.allclose(h.numpy(), want, atol=1e-5, rtol=0)
