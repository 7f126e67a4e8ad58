"""Boundaries that are not vectors, as AKF sees them: pooled to one vector per row, and back.

AKF mixes vectors [B, C]. A feature map [B, C, H, W] or a sequence [B, T, D] / [T, B, D] is
pooled to its mean over the positions (whatever their number in this batch), AKF computes
z_t [B, C] from the pooled outputs, and the residual projection of z_t is added at every
position (a Linear over the channels broadcast over the positions: a 1x1 convolution of a
constant map). The projection starts at zero, so the untrained model adds exactly nothing.
A vector boundary passes through untouched (the same ops as before the adapter existed).
"""
from __future__ import annotations

import torch

LAYOUTS = ("vector", "feature_map", "sequence", "time_major")
# Which dims of the boundary are positions (averaged), and where the channel dim sits.
_POSITIONS = {"feature_map": (2, 3), "sequence": (1,), "time_major": (0,)}


class BoundaryAdapter:
    """``pool(h) -> [B, C]`` and ``spread(v)``: v broadcast over the positions for one layout.

    A plain object, not a module: it holds no weights, and the fused model's state (and so its
    checkpoints) stays what it was for vector pools."""

    def __init__(self, layout: str, channels: int):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown boundary layout {layout!r}; one of {LAYOUTS}")
        self.layout = layout
        self.channels = int(channels)

    def pool(self, h: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """The boundary as one vector per row [B, C]: the mean over its positions, or, with
        ``weights`` [B, T] (1 at a real position, 0 at padding) for a sequence, over its real ones."""
        if self.layout == "vector":
            return h
        if weights is None:
            return h.mean(dim=_POSITIONS[self.layout])
        if self.layout == "time_major":
            weights = weights.transpose(0, 1)  # [T, B], as the boundary
        axis = _POSITIONS[self.layout][0]
        return (h * weights.unsqueeze(-1)).sum(dim=axis) / weights.sum(dim=axis).clamp_min(1.0).unsqueeze(-1)

    def spread(self, v: torch.Tensor) -> torch.Tensor:
        """``v`` [B, C] shaped to broadcast against a boundary of this layout (the same value at every position)."""
        if self.layout == "vector":
            return v
        if self.layout == "feature_map":
            return v[:, :, None, None]
        if self.layout == "sequence":
            return v[:, None, :]
        return v[None]

    def __repr__(self) -> str:
        return f"BoundaryAdapter({self.layout!r}, {self.channels})"


def as_layout(dim) -> tuple[str, int]:
    """A level's boundary given as a vector width (int) or as (layout, channels)."""
    if isinstance(dim, int):
        return "vector", dim
    layout, channels = dim
    return str(layout), int(channels)
