"""onnxruntime sessions: explicit providers, batching, errors."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from fusekit.errors import FusekitError
from fusekit.onnxio.sessions import CPU, CUDA, run, session



def test_session_reports_the_provider_that_runs_it(pool):
    path = pool["models"]["income_a"]
    sess, provider = session(path, "cpu")
    assert provider == CPU and sess.get_providers() == [CPU]
    sess, provider = session(path, "auto")
    expected = CUDA if CUDA in ort.get_available_providers() else CPU
    assert provider == expected == sess.get_providers()[0]


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has CUDA")
def test_asking_for_cuda_without_it_is_a_clear_error(pool):
    with pytest.raises(FusekitError, match="CUDA"):
        session(pool["models"]["income_a"], "cuda")


def test_run_in_batches_equals_one_call(pool):
    sess, _ = session(pool["models"]["married_a"], "cpu")
    test = pool["ds"].test
    whole = run(sess, test, batch_size=len(test))["never_married"]
    pieces = run(sess, test, batch_size=97)["never_married"]
    assert whole.shape == (len(test),)
    np.testing.assert_array_equal(whole, pieces)
    # Arrays by name work too, and are cast to the model's input types.
    named = run(sess, {"categorical": test.cat.astype(np.int32), "dense": test.dense.astype(np.float64)})
    np.testing.assert_allclose(named["never_married"], whole, atol=1e-7)


def test_missing_inputs_and_files_are_clear_errors(pool, tmp_path):
    sess, _ = session(pool["models"]["married_a"], "cpu")
    with pytest.raises(FusekitError, match="dense"):
        run(sess, {"categorical": pool["ds"].test.cat})
    with pytest.raises(FusekitError, match="does not exist"):
        session(tmp_path / "none.onnx")
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(FusekitError, match="cannot load"):
        session(broken)
    with pytest.raises(FusekitError, match="device"):
        session(pool["models"]["married_a"], "tpu")
