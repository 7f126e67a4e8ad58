"""fusekit.align: cut points (dominators), common subsequence across N models, level choice."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
import torch

from fusekit.decompose import align
from fusekit.decompose.align import (analyse, choose_levels, common_layers, cut_points, layer_classes, lcs,
                                     live_data_nodes)
from fusekit.decompose.graph import ModelGraph, load_graph
from tests import onnx_fixtures as F


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("align")
    x = torch.randn(2, 8)
    return {
        "res_dyn": F.export(F.residual_mlp(), (x,), root / "res_dyn.onnx", True, ["x"], ["y"]),
        "res_legacy": F.export(F.residual_mlp(), (x,), root / "res_legacy.onnx", False, ["x"], ["y"]),
        "cnn_legacy": F.export(F.small_cnn(), (torch.randn(2, 3, 8, 8),), root / "cnn.onnx", False, ["x"], ["y"]),
        "cnn_bn": F.export(F.small_cnn(), (torch.randn(2, 3, 8, 8),), root / "cnn_bn.onnx", False, ["x"], ["y"],
                           fold_constants=False),
        "tr_legacy": F.export(F.small_transformer(), (torch.randn(2, 5, 6),), root / "tr.onnx", False, ["x"], ["y"]),
    }


def _separating_tensors(g: ModelGraph) -> set[str]:
    """Reference, by brute force on a tensor-level graph of its own: the data tensors whose
    removal disconnects every model input from every model output."""
    dfg = nx.DiGraph()
    for i, node in enumerate(g.nodes):
        if g.node_kind[i] != "data":
            continue
        for name in g.node_inputs[i]:
            if name and g.tensors[name].kind == "data":
                dfg.add_edge(("t", name), ("op", i))
        for name in node.output:
            dfg.add_edge(("op", i), ("t", name))
    for name in g.inputs:
        dfg.add_edge("source", ("t", name))
    for name in g.outputs:
        dfg.add_edge(("t", name), "sink")
    return {name for kind, name in (n for n in dfg if isinstance(n, tuple)) if kind == "t"
            and not nx.has_path(nx.restricted_view(dfg, [("t", name)], []), "source", "sink")}


@pytest.mark.parametrize("name", ["res_dyn", "res_legacy", "cnn_legacy", "cnn_bn", "tr_legacy"])
def test_cut_points_are_the_dominators(models, name):
    g = load_graph(models[name])
    assert {t for _, t in analyse(g).cuts} == _separating_tensors(g)


@pytest.mark.parametrize("name", ["res_dyn", "res_legacy"])
def test_dominator_cut_points_of_a_residual_model(models, name):
    g = load_graph(models[name])
    order = live_data_nodes(g)
    assert g.data_graph.number_of_nodes() == len(g.data_nodes) + len(g.inputs) + 2  # ops, inputs, source, sink
    cuts = cut_points(g, order)
    producers = [g.nodes[order[gap]].op_type if gap >= 0 else "input" for gap, _ in cuts]
    # stem Gemm+Relu, then per block only the skip Add and the LayerNorm, then the output Gemm
    assert producers == ["input", "Gemm", "Relu", "Add", "LayerNormalization", "Add", "LayerNormalization", "Gemm"]
    assert [gap for gap, _ in cuts] == [-1, 0, 1, 5, 6, 10, 11, 12]
    cut_names = {t for _, t in cuts}
    for start, add in ((1, 5), (6, 10)):  # fc1, relu, fc2 of each block: never a cut
        inner = {o for i in order[start + 1: add] for o in g.nodes[i].output}
        assert len(inner) == 3 and not inner & cut_names
    pos = {node: p for p, node in enumerate(order)}
    for gap, tensor in cuts:  # after its gap, the cut tensor is the only data value still read
        alive = {name for p, i in enumerate(order) if p <= gap for name in g.nodes[i].output
                 if any(pos.get(c, -1) > gap for c, _ in g.tensors[name].consumers) or name in g.outputs}
        alive |= {name for name in g.inputs if any(pos[c] > gap for c, _ in g.tensors[name].consumers)}
        assert alive == {tensor}


@pytest.mark.parametrize("name", ["res_dyn", "res_legacy"])
def test_residual_block_is_never_cut_inside(models, name):
    a = analyse(load_graph(models[name]))
    kinds = [layer.kind for layer in a.layers]
    assert kinds[0] == "Linear+Relu"
    assert kinds[1] == kinds[2] and "Add" in kinds[1] and "LayerNormalization" in kinds[1]
    assert kinds[1].count("Linear(") == 0  # kinds carry no shapes
    cuts = {t for _, t in a.cuts}
    for layer in a.layers[1:3]:
        ops = [a.graph.nodes[i] for i in layer.nodes]
        inner = [o for n in ops if n.op_type in ("Gemm", "MatMul", "Relu") for o in n.output]
        # the hidden activations of the block (after fc1 / relu / fc2) are not cut points;
        # the skip Add's output is
        assert len(inner) >= 3 and not set(inner) & cuts
        norm = next(n for n in ops if n.op_type == "LayerNormalization")
        assert norm.input[0] in cuts and norm.output[0] == layer.end
        assert any(a.graph.nodes[i].op_type == "Relu" for i in layer.nodes)
    assert len(a.layers) == 4


def test_cnn_layers_keep_batchnorm_with_conv(models):
    a = analyse(load_graph(models["cnn_legacy"]))
    kinds = [layer.kind for layer in a.layers]
    # the legacy exporter folds eval-mode BatchNorm into Conv; when it does not, BN joins the conv layer
    assert len(kinds) == 3 and kinds[2] == "Linear"
    assert all(k.startswith("Conv+") and k.split("+")[-1] in ("MaxPool", "Reshape") for k in kinds[:2])
    assert a.layers[0].shape == ("batch", 4, 4, 4) and a.layers[1].shape == ("batch", 32)


def test_batchnorm_joins_its_conv_layer(models):
    a = analyse(load_graph(models["cnn_bn"]))
    assert [layer.kind for layer in a.layers] == ["Conv+BatchNormalization+Relu+MaxPool",
                                                  "Conv+BatchNormalization+Relu+MaxPool+Reshape", "Linear"]
    conv_out = a.graph.nodes[a.layers[0].nodes[0]].output[0]
    assert conv_out in {t for _, t in a.cuts}  # a cut point, yet not a layer boundary
    assert a.layers[0].cuttable and a.layers[1].cuttable and not a.layers[2].cuttable


def _lcs_length(a: list[int], b: list[int]) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if a[i - 1] == b[j - 1] else max(table[i - 1][j], table[i][j - 1])
    return table[-1][-1]


def test_lcs_matches_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a = rng.integers(0, 4, size=rng.integers(0, 12))
        b = rng.integers(0, 4, size=rng.integers(0, 12))
        ia, ib = lcs(a, b)
        assert len(ia) == _lcs_length(a.tolist(), b.tolist())
        assert np.all(np.diff(ia) > 0) and np.all(np.diff(ib) > 0)
        assert np.array_equal(a[ia], b[ib])


def _traceback_pairs(x: list[int], y: list[int]) -> list[tuple[int, int]]:
    """Reference: the full O(nm) table and the traceback the alignment has always used (from the
    end; a match first, then up when that keeps the length, else left)."""
    table = [[0] * (len(y) + 1) for _ in range(len(x) + 1)]
    for i in range(1, len(x) + 1):
        for j in range(1, len(y) + 1):
            table[i][j] = table[i - 1][j - 1] + 1 if x[i - 1] == y[j - 1] else max(table[i - 1][j], table[i][j - 1])
    i, j, pairs = len(x), len(y), []
    while i > 0 and j > 0:
        if x[i - 1] == y[j - 1]:
            pairs.append((i - 1, j - 1))
            i, j = i - 1, j - 1
        elif table[i - 1][j] >= table[i][j - 1]:
            i -= 1
        else:
            j -= 1
    return pairs[::-1]


def _reference_lcs(a: list[int], b: list[int]) -> tuple[list[int], list[int]]:
    """Reference of ``lcs``: common prefix and suffix matched as they are, symbols missing from the
    other sequence dropped, the traceback on what remains."""
    n, m = len(a), len(b)
    pre = next((k for k in range(min(n, m)) if a[k] != b[k]), min(n, m))
    suf = next((k for k in range(min(n, m) - pre) if a[n - 1 - k] != b[m - 1 - k]), min(n, m) - pre)
    keep_a = [p for p in range(pre, n - suf) if a[p] in b[pre: m - suf]]
    keep_b = [q for q in range(pre, m - suf) if b[q] in a[pre: n - suf]]
    pairs = _traceback_pairs([a[p] for p in keep_a], [b[q] for q in keep_b])
    ia = list(range(pre)) + [keep_a[p] for p, _ in pairs] + list(range(n - suf, n))
    ib = list(range(pre)) + [keep_b[q] for _, q in pairs] + list(range(m - suf, m))
    return ia, ib


@pytest.mark.parametrize("leaf,fanout,cached", [(512, 128, 256), (3, 2, 256), (4, 3, 1)])
def test_lcs_pairs_are_the_full_table_traceback(monkeypatch, leaf, fanout, cached):
    # Small blocks and a tiny mask cache make short sequences cross every checkpoint level.
    monkeypatch.setattr(align, "_LEAF", leaf)
    monkeypatch.setattr(align, "_FANOUT", fanout)
    monkeypatch.setattr(align, "_CACHED", cached)
    rng = np.random.default_rng(leaf)
    for alphabet in (1, 2, 3, 5, 12, 40):
        for _ in range(40):
            a = rng.integers(0, alphabet, size=rng.integers(0, 70)).tolist()
            b = rng.integers(0, alphabet, size=rng.integers(0, 70)).tolist()
            assert align._lcs_pairs(a, b) == _traceback_pairs(a, b)
            ia, ib = lcs(np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))
            assert (ia.tolist(), ib.tolist()) == _reference_lcs(a, b)


def test_lcs_of_layer_like_sequences_is_the_traceback(monkeypatch):
    # Models differ in a tenth of their layers, as the decompose benchmark's pairs do.
    monkeypatch.setattr(align, "_LEAF", 16)
    monkeypatch.setattr(align, "_FANOUT", 4)
    rng = np.random.default_rng(7)
    base = rng.integers(0, 9, size=400)
    a = np.where(rng.random(400) < 0.1, rng.integers(0, 9, size=400), base).tolist()
    b = np.where(rng.random(400) < 0.1, rng.integers(0, 9, size=400), base).tolist()
    assert align._lcs_pairs(a, b) == _traceback_pairs(a, b)


def test_lcs_past_65535_layers():
    # One symbol per side that the other lacks at its end keeps all 70,001 elements in the DP;
    # the only longest common subsequence is the 70,000 ones.
    n = 70_000
    a = np.array([1] * n + [2], dtype=np.int64)
    b = np.array([2] + [1] * n, dtype=np.int64)
    ia, ib = lcs(a, b)
    assert len(ia) == n and ia.tolist() == list(range(n)) and ib.tolist() == list(range(1, n + 1))


def test_common_layers_of_three_models_in_order():
    seqs = [["E", "A", "B", "C", "H1"], ["E", "A", "A", "X", "B", "C", "H2"], ["E", "Y", "B", "C"]]
    index = common_layers(seqs)
    assert [seqs[0][i] for i in index[:, 0]] == ["E", "B", "C"]
    assert index[:, 1].tolist() == [0, 4, 5] and index[:, 2].tolist() == [0, 2, 3]
    assert len(common_layers([["A", "B"], ["C", "D"]])) == 0


def test_choose_levels_default_balanced_and_last():
    positions = np.array([[0, 0], [1, 1], [2, 3], [3, 4], [5, 7], [6, 8]])
    chosen, _ = choose_levels(positions, None)
    assert len(chosen) == 3 and chosen[-1] == 5
    assert chosen == [1, 3, 5]  # mean depths 2, 4.5, 7.5 of 7.5: nearest to 2.5 and 5
    assert choose_levels(positions, 1)[0] == [5]
    assert choose_levels(positions, 6)[0] == list(range(6))
    chosen4, _ = choose_levels(positions, 4)
    assert len(chosen4) == 4 and chosen4 == sorted(set(chosen4)) and chosen4[-1] == 5


def test_common_layers_need_the_matcher_not_only_the_hash(tmp_path):
    def layers(name: str, operands: tuple[str, str], seed: int = 0):
        path = F.branch_model(tmp_path / f"{name}.onnx", ["Relu"], "Sub", operands, seed=seed)
        return analyse(load_graph(path)).candidates

    a, twin, b = layers("a", ("Relu", "h")), layers("twin", ("Relu", "h"), seed=1), layers("b", ("h", "Relu"))
    b = [dataclasses.replace(b[0], signature=a[0].signature)]  # force a hash collision
    assert [x.signature for x in a] == [x.signature for x in b]
    assert len(common_layers([[x.signature for x in a], [x.signature for x in b]])) == 1  # the hash alone is fooled
    classes = layer_classes([a, b, twin])
    assert classes[0] == classes[2] != classes[1]
    assert len(common_layers(classes[:2])) == 0
    assert common_layers([classes[0], classes[2]]).tolist() == [[0, 0]]
