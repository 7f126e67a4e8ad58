"""``Architecture``: the shape of a single-task model, checked when made (no torch needed)."""
from __future__ import annotations

from dataclasses import dataclass

from fusekit.options import Options, option


@dataclass
class Architecture(Options):
    """Shape of a single-task model."""

    hidden: list[int] = option(default_factory=lambda: [64, 32, 16], minimum=1, help="hidden widths, e.g. 64,32,16")
    emb_dim: int = option(4, minimum=1, help="width of each categorical embedding")
    batch_norm: bool = option(False, help="batch normalisation after each hidden layer")
    residual: bool = option(False, help="skip connections around equal-width layers")
    dropout: float = option(0.0, minimum=0.0, below=1.0, help="dropout after each hidden layer")
