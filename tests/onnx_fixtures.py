"""Small torch models exported to ONNX for the tests (both torch exporters).

Builders return eval-mode modules with seeded weights; ``export`` writes an ONNX file with a
dynamic batch dimension. Other test modules reuse these builders.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import torch
from torch import nn


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


class EmbeddingMLP(nn.Module):
    """Census-like MLP: one embedding table for all categorical columns (ids + column offsets),
    flattened, concatenated with dense inputs, then Linear/ReLU layers, sigmoid, squeeze."""

    def __init__(self, cardinalities: Sequence[int], n_dense: int, widths: Sequence[int],
                 emb_dim: int = 4, batchnorm: bool = False):
        super().__init__()
        offsets = torch.tensor([0] + list(cardinalities[:-1]), dtype=torch.int64).cumsum(0)
        self.register_buffer("offsets", offsets)
        self.table = nn.Embedding(sum(cardinalities), emb_dim)
        layers: list[nn.Module] = []
        width = len(cardinalities) * emb_dim + n_dense
        for out in widths:
            layers.append(nn.Linear(width, out))
            if batchnorm:
                layers.append(nn.BatchNorm1d(out))
            layers.append(nn.ReLU())
            width = out
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, 1)

    def forward(self, categorical: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        emb = self.table(categorical + self.offsets).flatten(1)
        h = self.body(torch.cat([emb, dense], dim=1))
        return torch.sigmoid(self.out(h)).squeeze(-1)


def embedding_mlp(cardinalities: Sequence[int] = (5, 7, 3), n_dense: int = 4,
                  widths: Sequence[int] = (16, 8), seed: int = 0, emb_dim: int = 4,
                  batchnorm: bool = False) -> EmbeddingMLP:
    """An eval-mode EmbeddingMLP with seeded weights (and non-trivial BatchNorm statistics)."""
    _seeded(seed)
    model = EmbeddingMLP(cardinalities, n_dense, widths, emb_dim, batchnorm)
    for module in model.modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


def embedding_mlp_inputs(cardinalities: Sequence[int] = (5, 7, 3), n_dense: int = 4,
                         batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Example (categorical, dense) inputs for ``embedding_mlp`` with valid ids."""
    gen = torch.Generator().manual_seed(seed)
    cat = torch.stack([torch.randint(0, c, (batch,), generator=gen) for c in cardinalities], dim=1)
    dense = torch.randn(batch, n_dense, generator=gen)
    return cat, dense


class DenseMLP(nn.Module):
    """Plain MLP over one dense input ``x``: Linear/ReLU layers, then a 1-unit output."""

    def __init__(self, n_in: int, widths: Sequence[int]):
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for out in widths:
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x))


def dense_mlp(n_in: int = 8, widths: Sequence[int] = (16, 8), seed: int = 0) -> DenseMLP:
    """An eval-mode DenseMLP with seeded weights."""
    _seeded(seed)
    return DenseMLP(n_in, widths).eval()


class GridSampler(nn.Module):
    """The input as a 2x4 image resampled on a fixed grid (ONNX GridSample), then one value:
    an op fusekit cannot run."""

    def __init__(self):
        super().__init__()
        self.register_buffer("grid", torch.linspace(-0.9, 0.9, 16).reshape(1, 2, 4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image = x.reshape(-1, 1, 2, 4)
        sampled = torch.nn.functional.grid_sample(image, self.grid.expand(x.shape[0], -1, -1, -1), align_corners=False)
        return sampled.reshape(x.shape[0], -1)[:, :1]


def grid_sampler() -> GridSampler:
    """An eval-mode GridSampler (same input as :func:`dense_mlp`)."""
    return GridSampler().eval()


class GRUClassifier(nn.Module):
    """A GRU over the input as a one-step sequence, then a linear logit."""

    def __init__(self, n_in: int, hidden: int):
        super().__init__()
        self.gru = nn.GRU(n_in, hidden, batch_first=True)
        self.out = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(x.unsqueeze(1))
        return self.out(states[:, -1])


def gru_classifier(n_in: int = 8, hidden: int = 6, seed: int = 0) -> GRUClassifier:
    """An eval-mode GRUClassifier with seeded weights (same input as :func:`dense_mlp`)."""
    _seeded(seed)
    return GRUClassifier(n_in, hidden).eval()


class ResidualBlock(nn.Module):
    """x + W2 relu(W1 x), then LayerNorm."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x + self.fc2(torch.relu(self.fc1(x))))


class ResidualMLP(nn.Module):
    """Linear stem, residual blocks with LayerNorm, linear output."""

    def __init__(self, n_in: int, width: int, hidden: int, blocks: int):
        super().__init__()
        self.stem = nn.Linear(n_in, width)
        self.blocks = nn.Sequential(*[ResidualBlock(width, hidden) for _ in range(blocks)])
        self.out = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.blocks(torch.relu(self.stem(x))))


def residual_mlp(n_in: int = 8, width: int = 16, hidden: int = 24, blocks: int = 2,
                 seed: int = 0) -> ResidualMLP:
    """An eval-mode ResidualMLP with seeded weights."""
    _seeded(seed)
    return ResidualMLP(n_in, width, hidden, blocks).eval()


class SmallCNN(nn.Module):
    """Conv/BatchNorm/ReLU blocks with pooling, flatten, linear output."""

    def __init__(self, channels: Sequence[int] = (4, 8), in_channels: int = 3, size: int = 8):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
            c = out
            size //= 2
        self.features = nn.Sequential(*layers)
        self.out = nn.Linear(c * size * size, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(x).flatten(1))


def small_cnn(channels: Sequence[int] = (4, 8), seed: int = 0) -> SmallCNN:
    """An eval-mode SmallCNN (input [batch, 3, 8, 8]) with seeded weights and BN statistics."""
    _seeded(seed)
    model = SmallCNN(channels)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


class TransformerBlock(nn.Module):
    """Pre-LayerNorm self-attention and MLP with residual skips; shapes read from the input so
    the legacy exporter computes them with Shape/Gather/Concat."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(d, dim=-1)
        q = q.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        k = k.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        v = v.reshape(b, t, self.heads, d // self.heads).transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.norm2(x))


class SmallTransformer(nn.Module):
    """Token projection, transformer blocks, mean pooling, linear output. Input [batch, seq, n_in]."""

    def __init__(self, n_in: int = 6, dim: int = 16, heads: int = 2, blocks: int = 2):
        super().__init__()
        self.embed = nn.Linear(n_in, dim)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads) for _ in range(blocks)])
        self.out = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        h = self.blocks(self.embed(x)).mean(dim=1)
        # The batch size read at the top and used at the bottom makes a shape-only path that
        # crosses every cut.
        return self.out(h).reshape(batch, 1)


def small_transformer(n_in: int = 6, dim: int = 16, heads: int = 2, blocks: int = 2,
                      seed: int = 0) -> SmallTransformer:
    """An eval-mode SmallTransformer with seeded weights."""
    _seeded(seed)
    return SmallTransformer(n_in, dim, heads, blocks).eval()


def export(model: nn.Module, args: tuple[torch.Tensor, ...], path: Path, dynamo: bool,
           input_names: Sequence[str], output_names: Sequence[str],
           opset: int | None = None, fold_constants: bool = True) -> Path:
    """Export ``model`` to ``path`` with a dynamic batch dimension (dim 0 of every input).

    ``fold_constants=False`` (legacy exporter only) keeps eval-mode BatchNorm as its own op.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            dynamic_shapes = tuple({0: batch} for _ in args)
            torch.onnx.export(model, args, str(path), dynamo=True, input_names=list(input_names),
                              output_names=list(output_names), dynamic_shapes=dynamic_shapes,
                              opset_version=opset or 18, verbose=False)
        else:
            axes = {name: {0: "batch"} for name in list(input_names) + list(output_names)}
            torch.onnx.export(model, args, str(path), dynamo=False, input_names=list(input_names),
                              output_names=list(output_names), dynamic_axes=axes,
                              opset_version=opset or 17, do_constant_folding=fold_constants)
    return path


def _save_helper_model(nodes: list, inits: list, path: Path, n_in: int = 4, input_name: str = "x",
                       output_name: str = "y") -> Path:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(nodes, "m",
                              [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", n_in])],
                              [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", 1])],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path


def _linear(rng, name: str, n_from: int, n_to: int) -> list:
    import numpy as np
    from onnx import numpy_helper

    return [numpy_helper.from_array((rng.standard_normal((n_from, n_to)) / n_from ** 0.5).astype(np.float32),
                                    f"{name}_w"),
            numpy_helper.from_array(rng.standard_normal(n_to).astype(np.float32) * 0.1, f"{name}_b")]


def gemm_chain(path: Path, layers: int, width: int = 6, seed: int = 0) -> Path:
    """An onnx.helper model: ``layers`` Gemm+Relu layers of ``width`` on a 4-wide ``x``, then a
    Gemm to the 1-wide ``y``."""
    import numpy as np
    from onnx import helper

    rng = np.random.default_rng(seed)
    nodes, inits, previous = [], [], "x"
    for k in range(layers):
        nodes += [helper.make_node("Gemm", [previous, f"fc{k}_w", f"fc{k}_b"], [f"g{k}"]),
                  helper.make_node("Relu", [f"g{k}"], [f"r{k}"])]
        inits += _linear(rng, f"fc{k}", 4 if k == 0 else width, width)
        previous = f"r{k}"
    nodes.append(helper.make_node("Gemm", [previous, "out_w", "out_b"], ["y"]))
    return _save_helper_model(nodes, inits + _linear(rng, "out", width, 1), path)


def branch_model(path: Path, branches: Sequence[str], combine: str, operands: tuple[str, str],
                 width: int = 6, seed: int = 0) -> Path:
    """An onnx.helper model: ``h = Gemm(x)``, one unary op per name in ``branches`` on ``h``
    (listed in that order), ``c = combine(*operands)`` where an operand is ``"h"`` or a branch
    op's name, then ``y = Gemm(c)``. The first layer is Gemm, the branches and the combine."""
    import numpy as np
    from onnx import helper

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Gemm", ["x", "fc1_w", "fc1_b"], ["h"])]
    nodes += [helper.make_node(op, ["h"], [op]) for op in branches]
    nodes += [helper.make_node(combine, list(operands), ["c"]), helper.make_node("Gemm", ["c", "fc2_w", "fc2_b"], ["y"])]
    return _save_helper_model(nodes, _linear(rng, "fc1", 4, width) + _linear(rng, "fc2", width, 1), path)


def if_model(path: Path, width: int = 6, seed: int = 0, data_condition: bool = False) -> Path:
    """An onnx.helper model whose ``If`` branches read a cut tensor (``r``) from the outer scope:
    ``r = Relu(Gemm(x))``, ``f = If(cond, Relu(r), Neg(r))``, ``y = Gemm(f + Relu(Gemm(r)))``.

    ``cond`` is a False initializer, or with ``data_condition`` ``ReduceSum(x) > 0``."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    then_g = helper.make_graph([helper.make_node("Relu", ["r"], ["then_out"])], "then", [],
                               [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, ["batch", width])])
    else_g = helper.make_graph([helper.make_node("Neg", ["r"], ["else_out"])], "else", [],
                               [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, ["batch", width])])
    nodes = [helper.make_node("Gemm", ["x", "fc1_w", "fc1_b"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "fc2_w", "fc2_b"], ["h2"]), helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("If", ["cond"], ["f"], then_branch=then_g, else_branch=else_g),
             helper.make_node("Add", ["f", "r2"], ["s"]), helper.make_node("Gemm", ["s", "fc3_w", "fc3_b"], ["y"])]
    inits = (_linear(rng, "fc1", 4, width) + _linear(rng, "fc2", width, width) + _linear(rng, "fc3", width, 1)
             + [numpy_helper.from_array(np.array(False), "cond")])
    if data_condition:
        inits[-1] = numpy_helper.from_array(np.array(0, np.float32), "zero")
        nodes[:0] = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
                     helper.make_node("Greater", ["total", "zero"], ["cond"])]
    return _save_helper_model(nodes, inits, path)


def clashing_names_model(path: Path, width: int = 6, seed: int = 0) -> Path:
    """An onnx.helper MLP whose inner tensors are named ``y`` and ``x``, the names components
    give their boundaries: ``inp -> Gemm -> y -> Relu -> r -> Gemm -> x -> Relu -> s -> Gemm -> out``."""
    import numpy as np
    from onnx import helper

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Gemm", ["inp", "fc1_w", "fc1_b"], ["y"]), helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node("Gemm", ["r", "fc2_w", "fc2_b"], ["x"]), helper.make_node("Relu", ["x"], ["s"]),
             helper.make_node("Gemm", ["s", "fc3_w", "fc3_b"], ["out"])]
    inits = _linear(rng, "fc1", 4, width) + _linear(rng, "fc2", width, width) + _linear(rng, "fc3", width, 1)
    return _save_helper_model(nodes, inits, path, input_name="inp", output_name="out")
