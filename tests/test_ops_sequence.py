"""A pool that decomposes can always be loaded: GRU and TransformerEncoder pools cut by decompose,
every component loaded by ``load_component`` and chained back to each source model's output."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

from fusekit.decompose import decompose
from fusekit.decompose.manifest import Manifest
from fusekit.onnxio.export import export_onnx
from fusekit.onnxio.interpreter import load_component
from fusekit.onnxio.sessions import session


class GRUModel(nn.Module):
    """GRU over [batch, 6, 4], last step, ``depth`` Linear+ReLU blocks, a probability."""

    def __init__(self, depth: int):
        super().__init__()
        self.gru = nn.GRU(4, 8, batch_first=True)
        self.blocks = nn.Sequential(*[m for _ in range(depth) for m in (nn.Linear(8, 8), nn.ReLU())])
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        return torch.sigmoid(self.out(self.blocks(self.gru(x)[0][:, -1])).squeeze(-1))


class EncoderModel(nn.Module):
    """Linear embedding, TransformerEncoder of ``depth`` layers, mean pooling, a probability."""

    def __init__(self, depth: int):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.out = nn.Linear(8, 1)

    def forward(self, x):
        return torch.sigmoid(self.out(self.encoder(self.embed(x)).mean(1)).squeeze(-1))


def _pool(tmp_path, make, mixed: bool) -> list:
    paths = []
    for k, depth in enumerate((1, 2)):
        torch.manual_seed(k)
        model = make(depth).eval()
        with torch.no_grad():  # distinct layers (nn.TransformerEncoder copies one layer)
            for p in model.parameters():
                p.add_(0.1 * torch.randn_like(p))
        path = tmp_path / f"m{depth}.onnx"
        if depth == 1 or not mixed:  # fusekit's own export path (dynamo)
            export_onnx(model, path, [torch.randn(8, 6, 4)], ["x"], ["p"], {"fusekit.task": f"t{depth}"}, "test model")
        else:  # the TorchScript exporter, as many existing files were made
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(model, (torch.randn(8, 6, 4),), str(path), dynamo=False, opset_version=18,
                                  input_names=["x"], output_names=["p"], dynamic_axes={"x": {0: "batch"}, "p": {0: "batch"}})
        paths.append(path)
    return paths


# The GRU pool mixes the two exporters; decompose cannot yet infer the shapes of a TorchScript
# TransformerEncoder with a dynamic batch (its attention Reshape), so that pool is dynamo only.
@pytest.mark.parametrize("make,mixed", [(GRUModel, True), (EncoderModel, False)], ids=["gru", "transformer_encoder"])
def test_a_decomposed_sequence_pool_loads_and_chains_to_every_source(make, mixed, tmp_path):
    paths = _pool(tmp_path, make, mixed)
    result = decompose(paths, tmp_path / "parts")
    manifest = Manifest.load(tmp_path / "parts")
    assert manifest.levels >= 1 and result.worst_diff
    x = np.random.default_rng(0).normal(size=(5, 6, 4)).astype(np.float32)
    for name, path in zip(manifest.names, paths):
        want = session(path, "cpu", threads=1)[0].run(None, {"x": x})[0]
        h = torch.from_numpy(x)
        with torch.no_grad():
            for part in manifest.component_paths(name) + [manifest.head_path(name)]:
                h = load_component(part)(h)
        assert h.shape == want.shape and np.allclose(h.numpy(), want, atol=1e-5, rtol=0)
