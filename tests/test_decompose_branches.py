"""Parallel branches (fusekit.decompose.branches): Wide&Deep, DeepFM and DCN-parallel pools from
both torch exporters are cut along their deep path, the other branches' tensors carried."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from fusekit.decompose.align import analyse
from fusekit.decompose.graph import load_graph
from fusekit.decompose.inspect import inspect_model
from fusekit.decompose.manifest import Manifest
from fusekit.decompose.pipeline import decompose
from fusekit.onnxio.interpreter import load_component
from tests import onnx_fixtures as F

SPARSE = {"work class": 6, "home region": 5, "device type": 4}
DENSE = ["age years", "hours per week"]
INPUTS = list(SPARSE) + DENSE
DIM = 4


class WideDeep(nn.Module):
    """Per-feature ids and dense columns as separate inputs; ``kind``: wide (a linear on the one-hot
    ids and the dense columns, added to the MLP's logit), deepfm (the FM second-order term of the
    MLP's own embeddings, plus the wide term) or dcn (a cross network beside the MLP, concatenated
    before the output layer). ``shared``: one embedding table with offsets instead of one per feature."""

    def __init__(self, widths: tuple[int, ...], kind: str, shared: bool = False):
        super().__init__()
        self.kind, self.shared = kind, shared
        sizes = list(SPARSE.values())
        if shared:
            self.table = nn.Embedding(sum(sizes), DIM)
            self.register_buffer("offsets", torch.tensor([0] + sizes[:-1]).cumsum(0))
        else:
            self.tables = nn.ModuleList(nn.Embedding(n, DIM) for n in sizes)
        self.wide = nn.ModuleList(nn.Embedding(n, 1) for n in sizes)
        self.wide_dense = nn.Linear(len(DENSE), 1)
        width = len(sizes) * DIM + len(DENSE)
        layers: list[nn.Module] = []
        for out in widths:
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        self.mlp = nn.Sequential(*layers)
        x0 = len(sizes) * DIM + len(DENSE)
        if kind == "dcn":
            self.cross = nn.ModuleList(nn.Linear(x0, x0) for _ in range(2))
            self.out = nn.Linear(width + x0, 1)
        else:
            self.out = nn.Linear(width, 1)

    def forward(self, work: torch.Tensor, region: torch.Tensor, device: torch.Tensor, age: torch.Tensor,
                hours: torch.Tensor) -> torch.Tensor:
        ids, dense = (work, region, device), torch.stack([age, hours], dim=1)
        if self.shared:
            emb = self.table(torch.stack(ids, dim=1) + self.offsets)
        else:
            emb = torch.stack([t(i) for t, i in zip(self.tables, ids)], dim=1)  # [B, F, D]
        x0 = torch.cat([emb.flatten(1), dense], dim=1)
        deep = self.mlp(x0)
        if self.kind == "dcn":
            x = x0
            for layer in self.cross:
                x = x0 * layer(x) + x
            return torch.sigmoid(self.out(torch.cat([x, deep], dim=1))).squeeze(-1)
        logit = self.out(deep) + sum(w(i) for w, i in zip(self.wide, ids)) + self.wide_dense(dense)
        if self.kind == "deepfm":
            fm = 0.5 * (emb.sum(1) ** 2 - (emb ** 2).sum(1)).sum(1, keepdim=True)
            logit = logit + fm
        return torch.sigmoid(logit).squeeze(-1)


def _inputs(batch: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, n, (batch,), generator=gen) for n in SPARSE.values()]
    return (*ids, *(torch.randn(batch, generator=gen) for _ in DENSE))


def _export(root: Path, name: str, widths, kind: str, dyn: bool, shared: bool = False, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = WideDeep(widths, kind, shared).eval()
    return F.export(model, _inputs(2), root / f"{name}.onnx", dyn, INPUTS, ["click"])


POOLS = {"wide": [(16, 8), (16, 12, 8)], "deepfm": [(16, 8), (16, 16, 8), (16, 8)], "dcn": [(12, 10, 8), (12, 10, 10, 8)]}  # deeper than the 2-layer cross


@pytest.fixture(scope="module")
def pools(tmp_path_factory) -> dict[tuple[str, bool], list[Path]]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("branches")
    out = {}
    for dyn in (False, True):
        for kind, widths in POOLS.items():
            out[kind, dyn] = [_export(root / f"{kind}_{dyn}", f"{kind}{k}", w, kind, dyn, shared=(k == 1), seed=k)
                              for k, w in enumerate(widths)]
    return out


def _feeds(batch: int = 5, seed: int = 3) -> dict[str, np.ndarray]:
    return {n: t.numpy() for n, t in zip(INPUTS, _inputs(batch, seed))}


def _chain_in_onnxruntime(manifest: Manifest, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Run level 1 .. L and the head as separate sessions, passing y and the carried tensors on."""
    entry = manifest.model(name)
    value = dict(feeds)
    for level, path in enumerate(manifest.component_paths(name), start=1):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert [i.name for i in sess.get_inputs()] == entry.component_inputs(level)
        prefix = "carry" if level == 1 else "next_carry"
        carries = [f"{prefix}{k}" for k in range(entry.carried_counts[level - 1])]
        assert [o.name for o in sess.get_outputs()] == ["y"] + carries == entry.component_outputs(level)
        outs = sess.run(None, value)
        value = dict(zip(["x"] + [f"carry{k}" for k in range(len(carries))], outs))
    head = ort.InferenceSession(str(manifest.head_path(name)), providers=["CPUExecutionProvider"])
    assert [i.name for i in head.get_inputs()] == entry.component_inputs(manifest.levels + 1)
    return head.run(None, value)[0]


def _chain_in_interpreter(manifest: Manifest, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """fusekit's own interpreter with the tuple contract: ``component(x, *carry) -> (y, *carry)``."""
    entry = manifest.model(name)
    with torch.no_grad():
        args = [torch.from_numpy(feeds[n]) for n in entry.inputs]
        for level, path in enumerate(manifest.component_paths(name), start=1):
            out = load_component(path)(*args)
            args = list(out) if entry.carried_counts[level - 1] else [out]
            assert len(args) == 1 + entry.carried_counts[level - 1]
        return load_component(manifest.head_path(name))(*args).numpy()


@pytest.mark.parametrize("dyn", [False, True], ids=["legacy", "dynamo"])
@pytest.mark.parametrize("kind", list(POOLS))
def test_branch_pools_decompose_and_chain_back(pools, tmp_path, kind, dyn):
    paths = pools[kind, dyn]
    for path in paths:  # the dominator analysis alone cuts these models less
        plain = sum(layer.cuttable for layer in _plain_layers(path))
        assert len(analyse(load_graph(path)).candidates) > plain
    result = decompose(paths, tmp_path / "parts")
    assert result.levels >= 1 and max(result.worst_diff.values()) <= 1e-5
    manifest = Manifest.load(tmp_path / "parts")
    raw = json.loads((tmp_path / "parts" / "manifest.json").read_text())
    feeds = _feeds()
    for path in paths:
        entry = manifest.model(path.stem)
        assert raw["models"][paths.index(path)]["carried"] == entry.carried
        assert len(entry.carried) == manifest.levels and sum(entry.carried_counts) > 0
        # the wide part reads the raw ids: they are carried as they are, from level 1 on
        if kind != "dcn":
            assert set(SPARSE) <= set(entry.carried[0])
        torch.manual_seed(0)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        (expected,) = sess.run(None, feeds)
        np.testing.assert_allclose(_chain_in_onnxruntime(manifest, path.stem, feeds), expected, atol=1e-5)
        np.testing.assert_allclose(_chain_in_interpreter(manifest, path.stem, feeds), expected, atol=1e-5)
        shown = inspect_model(path)
        assert any(c["carried"] for c in shown.to_json()["cut_points"]) and "carried)" in shown.table()
    table = result.table()
    assert "carries" in table and all(any(result.carried_counts(lv).values()) for lv in range(result.levels))


def _plain_layers(path: Path):
    from fusekit.decompose.align import _layered, cut_points, live_data_nodes

    g = load_graph(path)
    order = live_data_nodes(g)
    return _layered(g, order, cut_points(g, order)).layers


def test_deep_layers_are_aligned_and_the_side_branches_stay_in_the_head(pools, tmp_path):
    paths = pools["deepfm", False]
    result = decompose(paths, tmp_path / "parts", levels="all")
    # the MLPs share their first Linear and the 8-wide last hidden layer
    assert [c.shape for c in result.common][-1] == ["batch", 8]
    manifest = Manifest.load(tmp_path / "parts")
    for path in paths:
        import onnx

        level_ops = [n.op_type for p in manifest.component_paths(path.stem) for n in onnx.load(str(p)).graph.node]
        head_ops = [n.op_type for n in onnx.load(str(manifest.head_path(path.stem))).graph.node]
        assert "Pow" in head_ops or "Mul" in head_ops  # the FM term is computed in the head
        assert "Pow" not in level_ops


class MaskedStack(nn.Module):
    """Layers that each read an attention-mask-style input ``mask`` beside the deep stream."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(8 if k == 0 else widths[k - 1], w) for k, w in enumerate(widths))
        self.out = nn.Linear(widths[-1], 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            h = torch.relu(layer(x))
            x = h * mask[:, :1]  # every layer reads the mask
        return self.out(x)


@pytest.mark.parametrize("dyn", [False, True], ids=["legacy", "dynamo"])
def test_an_input_read_by_every_layer_is_carried(tmp_path, dyn):
    paths = []
    for k, widths in enumerate([(8, 6, 4), (8, 6, 6, 4)]):
        torch.manual_seed(k)
        paths.append(F.export(MaskedStack(widths).eval(), (torch.randn(2, 8), torch.rand(2, 3)),
                              tmp_path / f"m{k}.onnx", dyn, ["x", "mask"], ["y"]))
    result = decompose(paths, tmp_path / "parts")
    assert result.levels >= 2 and max(result.worst_diff.values()) <= 1e-5
    manifest = Manifest.load(tmp_path / "parts")
    for path in paths:
        carried = manifest.model(path.stem).carried
        # the mask (as the model slices it once) is carried to every level; only level 1 reads "mask"
        assert len(carried[0]) == 1 and carried[1] == carried[0] and all(lv in (carried[0], []) for lv in carried)
        assert all("mask" not in manifest.model(path.stem).component_inputs(lv) for lv in range(2, result.levels + 2))
        feeds = {"x": np.random.default_rng(1).standard_normal((4, 8)).astype(np.float32),
                 "mask": np.random.default_rng(2).random((4, 3)).astype(np.float32)}
        (expected,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)
        np.testing.assert_allclose(_chain_in_interpreter(manifest, path.stem, feeds), expected, atol=1e-5)


@pytest.mark.parametrize("dyn", [False, True], ids=["legacy", "dynamo"])
def test_no_cut_inside_a_residual_block_and_nothing_carried(tmp_path, dyn):
    path = F.export(F.residual_mlp(blocks=3), (torch.randn(2, 8),), tmp_path / "res.onnx", dyn, ["x"], ["y"])
    g = load_graph(path)
    a = analyse(g)
    plain = _plain_layers(path)
    assert [(la.nodes, la.cuttable) for la in a.layers] == [(lb.nodes, lb.cuttable) for lb in plain]
    # cuts after the stem and after each block's LayerNorm only: never inside a block
    ends = [g.nodes[g.tensors[la.end].producer].op_type for la in a.candidates]
    assert ends == ["Relu"] + ["LayerNormalization"] * 3
    from fusekit.decompose.branches import carried_tensors

    cuts = [(la.end_gap, la.end) for la in a.candidates]
    assert carried_tensors(g, a.order, cuts) == [[] for _ in cuts]
