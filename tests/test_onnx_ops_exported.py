"""The interpreter on what torch's exporters really write for recurrent, bag, attention and CNN modules.

Every module is exported with both exporters (TorchScript ``dynamo=False`` and ``dynamo=True``),
run through ``load_component`` and through onnxruntime (the one session factory), and must agree
within 1e-5; made trainable (``finetune.trainable_copy``), gradients reach its weights.
"""
from __future__ import annotations

import logging
import math
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from fusekit.fusion.finetune import trainable_copy
from fusekit.onnxio.interpreter import load_component
from fusekit.onnxio.sessions import session

TOL = 1e-5


class Recurrent(nn.Module):
    """A GRU/LSTM/RNN returning its output sequence and final hidden state; optional initial state input."""

    def __init__(self, kind: str, with_state: bool, **kw):
        super().__init__()
        self.rnn = getattr(nn, kind)(5, 4, **kw)
        self.kind, self.with_state = kind, with_state

    def forward(self, x, *state):
        if self.with_state:
            state = (state[0], state[0] * 0.5) if self.kind == "LSTM" else state[0]
            y, h = self.rnn(x, state)
        else:
            y, h = self.rnn(x)
        return y, h[0] if self.kind == "LSTM" else h


class Bags(nn.Module):
    """Three EmbeddingBags (sum, mean, max) over the same ids and offsets, one output."""

    def __init__(self):
        super().__init__()
        self.bags = nn.ModuleList(nn.EmbeddingBag(11, 3, mode=m) for m in ("sum", "mean", "max"))

    def forward(self, ids, offsets):
        return torch.cat([bag(ids, offsets) for bag in self.bags], dim=1)


class Encoder(nn.Module):
    """nn.TransformerEncoder (2 layers, GELU) with a key padding mask."""

    def __init__(self, batch_first: bool):
        super().__init__()
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, activation="gelu", batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)

    def forward(self, x, padding):
        return self.encoder(x, src_key_padding_mask=padding)


class BertLayer(nn.Module):
    """A HuggingFace-style BERT block in plain torch: word + position + token-type embeddings and
    LayerNorm, multi-head self-attention with an ``attention_mask`` [batch, seq] of 1/0, an erf-GELU
    feed-forward, post-LayerNorms, and a tanh-GELU pooler over the first token."""

    def __init__(self, vocab: int = 20, dim: int = 8, heads: int = 2, seq: int = 6):
        super().__init__()
        self.word, self.position, self.kind = nn.Embedding(vocab, dim), nn.Embedding(seq, dim), nn.Embedding(2, dim)
        self.norm0, self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-12), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.out = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.up, self.down, self.pool = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        self.heads = heads

    def forward(self, input_ids, attention_mask):
        b, t = input_ids.shape
        positions = torch.arange(t, device=input_ids.device)
        h = self.norm0(self.word(input_ids) + self.position(positions) + self.kind(torch.zeros_like(input_ids)))
        q, k, v = (z.reshape(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(h).chunk(3, dim=-1))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        scores = scores + (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
        ctx = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, -1)
        h = self.norm1(h + self.out(ctx))
        h = self.norm2(h + self.down(nn.functional.gelu(self.up(h))))
        return h, nn.functional.gelu(self.pool(h[:, 0]), approximate="tanh")


class Attend(nn.Module):
    """F.scaled_dot_product_attention with a boolean mask, then log-softmax over the heads axis."""

    def forward(self, q, k, v, mask):
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return torch.log_softmax(y, dim=1), torch.where(mask, y.sum(-1, keepdim=True), 0.0)


class CNN(nn.Module):
    """Conv/BatchNorm/ReLU/MaxPool, Conv/AvgPool, nearest and bilinear Resize, GlobalAveragePool, Flatten."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1), nn.AvgPool2d(2), nn.Upsample(scale_factor=2),
            nn.Upsample(scale_factor=2, mode="bilinear"))
        self.head = nn.Linear(6, 3)

    def forward(self, image):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(image), 1), 1)).softmax(-1)


def _seq(*shape):
    return torch.randn(*shape)


def _padding(batch, seq):
    mask = torch.zeros(batch, seq, dtype=torch.bool)
    mask[0, -2:] = True
    return mask


# id, module factory, example inputs, opset, the parameters the exporters fold into constants
# (None: not checked). BERT's position and token-type tables are looked up at positions known at
# export time, so both exporters store the looked-up rows instead of the tables.
CASES = [
    ("gru_bidirectional_batch_first_h0", lambda: Recurrent("GRU", True, batch_first=True, bidirectional=True),
     lambda: (_seq(3, 4, 5), _seq(2, 3, 4)), 18, ()),
    ("lstm_two_layers_h0c0", lambda: Recurrent("LSTM", True, num_layers=2), lambda: (_seq(4, 3, 5), _seq(2, 3, 4)), 18,
     ()),
    ("rnn_relu_bidirectional_h0", lambda: Recurrent("RNN", True, nonlinearity="relu", bidirectional=True),
     lambda: (_seq(4, 3, 5), _seq(2, 3, 4)), 18, ()),
    ("embedding_bags", Bags, lambda: (torch.tensor([1, 2, 4, 5, 4, 3, 2, 9]), torch.tensor([0, 2, 3, 6])), 18, ()),
    ("encoder_batch_first", lambda: Encoder(True), lambda: (_seq(3, 5, 8), _padding(3, 5)), 18, ()),
    ("encoder_time_major", lambda: Encoder(False), lambda: (_seq(5, 3, 8), _padding(3, 5)), 18, ()),
    ("bert_layer", BertLayer, lambda: (torch.randint(0, 20, (3, 6)), torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 6])),
     18, ("position.weight", "kind.weight")),
    ("sdpa_opset18", Attend, lambda: (_seq(2, 3, 4, 5), _seq(2, 3, 4, 5), _seq(2, 3, 4, 5),
                                      (torch.rand(2, 1, 4, 4) > 0.3) | torch.eye(4, dtype=torch.bool)), 18, None),
    ("sdpa_opset23", Attend, lambda: (_seq(2, 3, 4, 5), _seq(2, 3, 4, 5), _seq(2, 3, 4, 5),
                                      (torch.rand(2, 1, 4, 4) > 0.3) | torch.eye(4, dtype=torch.bool)), 23, None),
    ("cnn", CNN, lambda: (torch.rand(2, 1, 8, 8),), 18, None),
]


def _export(module: nn.Module, args: tuple, path, dynamo: bool, opset: int) -> None:
    names = [f"in{i}" for i in range(len(args))]
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    # With gradients on, nn.TransformerEncoder takes its plain path rather than the fused kernel
    # that the TorchScript exporter cannot write.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=dynamo, opset_version=opset, input_names=names,
                          verbose=False, **({"optimize": True} if dynamo else {}))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("name,make,inputs,opset,folded", CASES, ids=[c[0] for c in CASES])
def test_exported_module_runs_as_in_onnxruntime_and_trains(name, make, inputs, opset, folded, dynamo, tmp_path):
    torch.manual_seed(0)
    module, args = make().eval(), inputs()
    with torch.no_grad():  # distinct weights: the dynamo exporter shares equal initializers (copied layers)
        for p in module.parameters():
            p.add_(0.1 * torch.randn_like(p))
    if opset == 23 and not dynamo:
        pytest.skip("the TorchScript exporter stops at opset 20")
    path = tmp_path / f"{name}.onnx"
    _export(module, args, path, dynamo, opset)
    model = onnx.load(str(path))
    if name == "sdpa_opset23":
        assert "Attention" in {n.op_type for n in model.graph.node}
    sess, _ = session(path, "cpu", threads=1)
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)}
    want = sess.run(None, feeds)
    comp = load_component(path)
    with torch.no_grad():
        got = comp(*[torch.from_numpy(feeds[n]) for n in comp.input_names])
    got = got if isinstance(got, tuple) else (got,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.allclose(g.numpy(), w, atol=TOL, rtol=0), np.abs(g.numpy() - w).max()

    params = [p for n, p in module.named_parameters() if folded is None or n not in folded]
    if not params:
        return
    trainable = trainable_copy(comp, str(path))
    outs = trainable(*[torch.from_numpy(feeds[n]) for n in comp.input_names])
    outs = outs if isinstance(outs, tuple) else (outs,)
    sum(o.float().sin().sum() for o in outs if o.is_floating_point()).backward()
    grads = [w.grad for w in trainable.weights]
    assert all(g is not None and torch.count_nonzero(g) > 0 for g in grads)
    if folded is not None:  # every other torch parameter became a weight that fine-tuning trains
        assert sum(w.numel() for w in trainable.weights) == sum(p.numel() for p in params)


class GRUNorm(nn.Module):
    """GRU, LayerNorm over its last output, Linear."""

    def __init__(self):
        super().__init__()
        self.gru, self.norm, self.out = nn.GRU(5, 4), nn.LayerNorm(4), nn.Linear(4, 2)

    def forward(self, x):
        return self.out(self.norm(self.gru(x)[0][-1]))


def test_from_scratch_restarts_scales_at_one_biases_at_zero_and_recurrent_matrices_per_direction(tmp_path):
    from fusekit.fusion.finetune import reinitialised_copy

    torch.manual_seed(0)
    path = tmp_path / "gru_norm.onnx"
    _export(GRUNorm().eval(), (_seq(4, 3, 5),), path, dynamo=False, opset=18)
    fresh = reinitialised_copy(load_component(path), str(path), seed=0)
    weights = {tuple(w.shape): w.detach() for w in fresh.weights}
    assert sorted(tuple(w.shape) for w in fresh.weights) == [(1, 12, 4), (1, 12, 5), (1, 24), (2,), (2, 4), (4,), (4,)]
    scales = [w for w in fresh.weights if w.shape == (4,)]
    assert sorted(float(w.detach().sum()) for w in scales) == [0.0, 4.0]  # LayerNorm: scale ones, bias zeros
    assert torch.count_nonzero(weights[(1, 24)]) == 0 and torch.count_nonzero(weights[(2,)]) == 0
    bound = (6.0 / (12 + 5)) ** 0.5
    assert 0.5 * bound < weights[(1, 12, 5)].abs().max() <= bound
    assert torch.isfinite(fresh(_seq(4, 3, 5))).all()
