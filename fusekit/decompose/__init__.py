"""Decompose (EMM Algorithm 1): data-flow graph, layers, alignment, cutting, the manifest."""
from fusekit.decompose.pipeline import DecomposeResult, decompose

__all__ = ["DecomposeResult", "decompose"]
