"""fusion/masks.py: which input marks padding, and pooling over the real positions only."""
from __future__ import annotations

import pytest
import torch

from fusekit.decompose.manifest import Boundary, InputSpec
from fusekit.errors import FusekitError, OptionError
from fusekit.fusion.boundaries import BoundaryAdapter
from fusekit.fusion.masks import check_option, resolve

INPUTS = [InputSpec("ids", ["batch", "length"], "int64"), InputSpec("attention_mask", ["batch", "length"], "int64"),
          InputSpec("key_padding", ["batch", "length"], "bool")]
BOUNDARIES = [Boundary(1, ["batch", "length", 16], "float32"), Boundary(2, ["length", "batch", 16], "float32"),
              Boundary(3, ["batch", 16], "float32")]


def test_auto_takes_attention_mask_for_every_sequence_boundary_of_its_length():
    mask = resolve("auto", INPUTS, BOUNDARIES, "batch")
    assert (mask.input, mask.padding, mask.levels) == ("attention_mask", False, (0, 1))
    assert mask.to_dict() == {"input": "attention_mask", "nonzero_marks": "real positions", "levels": [1, 2]}


def test_a_named_mask_and_its_polarity():
    mask = resolve("key_padding:padding", INPUTS, BOUNDARIES, "batch")
    assert (mask.input, mask.padding) == ("key_padding", True)
    assert resolve("none", INPUTS, BOUNDARIES, "batch") is None


def test_auto_masks_nothing_without_a_matching_input_or_boundary():
    assert resolve("auto", INPUTS[:1], BOUNDARIES, "batch") is None
    assert resolve("auto", INPUTS, BOUNDARIES[2:], "batch") is None
    other_length = [Boundary(1, ["batch", "tokens", 16], "float32")]
    assert resolve("auto", INPUTS, other_length, "batch") is None


@pytest.mark.parametrize("option, inputs, boundaries, pattern", [
    ("mask", INPUTS, BOUNDARIES, r"names input 'mask', which the models do not read; they read ids, attention_mask"),
    ("ids", [InputSpec("ids", ["batch", "length", 4], "int64")], BOUNDARIES, r"has shape .*\[batch, length\]"),
    ("attention_mask", INPUTS, BOUNDARIES[2:], r"no level's boundary is a sequence of that length"),
])
def test_a_named_mask_that_cannot_apply_is_refused(option, inputs, boundaries, pattern):
    with pytest.raises(FusekitError, match=pattern):
        resolve(option, inputs, boundaries, "batch")


@pytest.mark.parametrize("text", ["", ":padding", "mask:pad", "a:b"])
def test_a_malformed_option_is_refused(text):
    with pytest.raises(OptionError, match="sequence_mask"):
        check_option(text)


@pytest.mark.parametrize("layout", ["sequence", "time_major"])
def test_pooling_with_weights_averages_the_real_positions_only(layout):
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(3, 5, 4, generator=gen)  # [B, T, C]
    weights = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.float32)
    adapter = BoundaryAdapter(layout, 4)
    pooled = adapter.pool(h if layout == "sequence" else h.transpose(0, 1), weights)
    assert torch.allclose(pooled[0], h[0, :3].mean(0), atol=1e-6)
    assert torch.allclose(pooled[1], h[1].mean(0), atol=1e-6)
    assert torch.equal(pooled[2], torch.zeros(4))  # a row of padding only: zero, not NaN
