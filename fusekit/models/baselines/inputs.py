"""How a baseline reads models' named inputs: integer inputs as category ids, float inputs as dense features.

Census-Income's baselines read fusekit's tabular block (``categorical`` ids encoded by a
FeatureSpec, with id 0 for unseen values, and ``dense``). Data read by input name (a CSV,
Parquet or ``.npz`` file named after foreign models' inputs, the digits' images) has no such
encoding: an :class:`InputLayout` made from the training rows embeds every column of an integer
input with the ids seen there (0..max) and flattens float inputs of any rank into the dense
block. An id outside what training saw has no trained embedding, so validation or test rows
holding one are refused (:meth:`InputLayout.check`) instead of being mapped to a silent bucket.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fusekit.data.dataset import Split
from fusekit.errors import FusekitError
from fusekit.models.tabular_input import TabularInput
from fusekit.options import literal


def _is_integer(array: np.ndarray) -> bool:
    return np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_


@dataclass(frozen=True)
class InputLayout:
    """The inputs a baseline takes, in call order: per integer input the ids of each of its
    (flattened) columns, per float input its flattened width."""

    names: tuple[str, ...]
    cardinalities: dict[str, tuple[int, ...]]
    widths: dict[str, int]

    @classmethod
    def from_split(cls, split: Split) -> "InputLayout":
        """The layout of ``split``'s inputs (the training rows): ids per column are 0..the largest seen.
        Read batch by batch (a split streamed from a file is read once), keeping only each column's
        largest id."""
        cards: dict[str, tuple[int, ...]] = {}
        widths: dict[str, int] = {}
        for inputs in split.input_batches(65536):
            for name, array in inputs.items():
                flat = np.asarray(array).reshape(len(array), -1)
                if _is_integer(flat):
                    flat = flat.astype(np.int64)
                    if flat.size and flat.min() < 0:
                        raise FusekitError(f"input {literal(name)} holds the negative id {int(flat.min())}; baselines "
                                           "embed integer inputs as ids 0, 1, 2, ...: encode its values as such ids")
                    seen = tuple(int(c) + 1 for c in (flat.max(axis=0) if len(flat) else np.zeros(flat.shape[1])))
                    cards[name] = tuple(map(max, cards[name], seen)) if name in cards else seen
                elif np.issubdtype(flat.dtype, np.floating):
                    widths[name] = int(flat.shape[1])
                else:
                    raise FusekitError(f"input {literal(name)} has dtype {flat.dtype}; baselines read integer ids and "
                                       "float features: give it as numbers")
        return cls(tuple(split.input_names), cards, widths)

    @property
    def all_cardinalities(self) -> list[int]:
        """Ids of every embedded column, integer inputs in call order."""
        return [c for name in self.names if name in self.cardinalities for c in self.cardinalities[name]]

    @property
    def n_dense(self) -> int:
        """Width of the dense block (every float input flattened)."""
        return sum(self.widths.values())

    def check(self, split: Split, what: str) -> None:
        """FusekitError naming the input when ``split`` (``what``: its role) lacks an input or holds an
        id that the training rows did not."""
        for name in self.names:
            if name not in split.input_names:
                raise FusekitError(f"the {what} rows have no input {literal(name)}; give every split the same inputs")
        for inputs in split.input_batches(65536):  # held in memory or read from its file, batch by batch
            self._check_ids(inputs, what)

    def _check_ids(self, inputs: dict, what: str) -> None:
        for name in self.names:
            if name not in self.cardinalities:
                continue
            flat = np.asarray(inputs[name]).reshape(len(inputs[name]), -1).astype(np.int64)
            bad = (flat < 0) | (flat >= np.asarray(self.cardinalities[name]))
            if bad.any():
                row, col = (int(v[0]) for v in np.nonzero(bad))
                raise FusekitError(f"the {what} rows' input {literal(name)} holds id {int(flat[row, col])} (column "
                                   f"{col}), outside the ids 0..{self.cardinalities[name][col] - 1} of the training "
                                   "rows; a baseline has no embedding for it: give training rows that hold every id")


class NamedInput(nn.Module):
    """The baselines' input block over named inputs: ``forward(*inputs)`` in ``layout.names`` order ->
    the embeddings of every integer column followed by every float input, flattened."""

    def __init__(self, layout: InputLayout, emb_dim: int = 4, init_std: float = 1e-4):
        super().__init__()
        self.layout = layout
        self.input_names = list(layout.names)
        self.block = TabularInput(layout.all_cardinalities, layout.n_dense, emb_dim=emb_dim, init_std=init_std)
        self.out_features = self.block.out_features

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs))
        batch = inputs[0].shape[0]
        ids = [named[n].reshape(batch, -1).long() for n in self.input_names if n in self.layout.cardinalities]
        dense = [named[n].reshape(batch, -1).float() for n in self.input_names if n in self.layout.widths]
        cat = torch.cat(ids, dim=1) if ids else inputs[0].new_zeros((batch, 0), dtype=torch.long)
        values = torch.cat(dense, dim=1) if dense else inputs[0].new_zeros((batch, 0), dtype=torch.float32)
        return self.block(cat, values)
