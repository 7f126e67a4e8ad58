"""fused torch model -> ONNX: names, dynamic batch, metadata, checker, parity with torch."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch

from fusekit.errors import FusekitError
from tests.fusion_pool import TASKS


@pytest.fixture(scope="module")
def exported(pool, tmp_path_factory):
    """A paper-mode model whose components are re-initialised and trained from scratch (the hardest
    case for the exporter: trainable weights living inside frozen components), after one update."""
    from fusekit.fusion.export import export_fused
    from fusekit.decompose.manifest import Manifest
    from fusekit.fusion.fuse import build_model
    from fusekit.fusion.model import FusionOptions

    model = build_model(Manifest.load(pool["parts"]), TASKS,
                        FusionOptions(mode="paper", pretrained=False, seed=3))
    test = pool["ds"].test
    cat, dense = torch.as_tensor(test.cat[:64]), torch.as_tensor(test.dense[:64])
    opt = torch.optim.Adam(model.fusion_parameters(), lr=1e-2)
    loss = sum(torch.nn.functional.binary_cross_entropy_with_logits(v, torch.as_tensor(test.labels[t][:64]))
               for t, v in model(cat, dense).items())
    loss.backward()
    opt.step()
    path = export_fused(model.eval(), tmp_path_factory.mktemp("export") / "fused.onnx", (cat, dense),
                        {"fusekit.source_sha256": json.dumps({"x": "y"})})
    return model, path


def test_exported_model_has_named_inputs_one_probability_per_task_and_metadata(exported):
    _, path = exported
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["categorical", "dense"]
    assert [o.name for o in proto.graph.output] == list(TASKS)
    for value in list(proto.graph.input) + list(proto.graph.output):
        assert value.type.tensor_type.shape.dim[0].dim_param  # symbolic batch dimension
    assert len(proto.graph.output[0].type.tensor_type.shape.dim) == 1  # [batch]
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["fusekit.tasks"]) == list(TASKS)
    assert meta["fusekit.source_sha256"] == json.dumps({"x": "y"}) and meta["fusekit.version"]


@pytest.mark.parametrize("batch", [1, 7, 1000])
def test_onnxruntime_matches_torch_at_any_batch_size(exported, pool, batch):
    from fusekit.fusion.export import check_parity

    model, path = exported
    test = pool["ds"].test.head(batch)
    worst = check_parity(model, path, {"categorical": test.cat, "dense": test.dense})
    assert worst <= 1e-5


def test_parity_check_fails_loudly_when_the_file_and_the_model_disagree(exported, pool):
    from fusekit.fusion.export import check_parity

    model, path = exported
    test = pool["ds"].test.head(50)
    tower = model.towers[model.tkey[next(iter(TASKS))]]
    with torch.no_grad():
        tower[-1].bias += 0.5
    try:
        with pytest.raises(FusekitError, match="differs from the torch model"):
            check_parity(model, path, {"categorical": test.cat, "dense": test.dense})
    finally:
        with torch.no_grad():
            tower[-1].bias -= 0.5
    assert np.isfinite(check_parity(model, path, {"categorical": test.cat, "dense": test.dense}))
