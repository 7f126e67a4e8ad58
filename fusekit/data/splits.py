"""Seeded row partitions: validation/test halves of a test file, validation and test carved from a
training file, and the training holdout."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from fusekit.errors import FusekitError

SPLIT_SEED_DOMAIN = 0x5B17  # keeps this partition's stream apart from the holdout's
CARVED_FRACTION = 0.1  # of the training file, for each of val and test when not given as files


def stratified_halves(labels: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split rows 50/50 into (validation, test) index arrays, stratified on binary ``labels``.

    Each class is shuffled with its own seeded generator and halved (an odd class gives its
    extra row to validation), so both halves keep the class ratio. Indices come back sorted.
    """
    labels = np.asarray(labels).reshape(-1)
    val, test = [], []
    for k, value in enumerate(np.unique(labels)):
        idx = np.flatnonzero(labels == value)
        np.random.default_rng([seed, k]).shuffle(idx)
        half = (len(idx) + 1) // 2
        val.append(idx[:half])
        test.append(idx[half:])
    if not val:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.sort(np.concatenate(val)), np.sort(np.concatenate(test))


def seeded_halves(n_rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n_rows`` rows 50/50 into sorted (validation, test) index arrays by a seeded
    permutation that reads no label, so that every task of a file gets the same halves."""
    perm = np.random.default_rng([seed, 0x4A1F]).permutation(n_rows)
    half = (n_rows + 1) // 2
    return np.sort(perm[:half]), np.sort(perm[half:])


def stratified_split(labels: np.ndarray, fractions: tuple[float, ...], seed: int = 0) -> list[np.ndarray]:
    """Split rows into len(fractions) sorted index arrays with those shares, stratified on ``labels``."""
    if abs(sum(fractions) - 1.0) > 1e-9 or any(f < 0 for f in fractions):
        raise ValueError("fractions must be non-negative and sum to 1")
    labels = np.asarray(labels).reshape(-1)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    bounds = np.cumsum((0.0,) + tuple(fractions))
    for k, value in enumerate(np.unique(labels)):
        idx = np.flatnonzero(labels == value)
        np.random.default_rng([seed, k]).shuffle(idx)
        cuts = np.round(bounds * len(idx)).astype(int)
        for p in range(len(fractions)):
            parts[p].append(idx[cuts[p]:cuts[p + 1]])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, dtype=np.int64) for p in parts]


def holdout_partition(n_rows: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``n_rows`` training rows into (source rows, holdout rows), both sorted.

    Depends only on (n_rows, fraction, seed) — not on the tasks — so every model of a pool and
    the fusion that follows agree on which rows the source models never saw.
    """
    if not 0.0 <= fraction < 1.0:
        raise FusekitError(f"holdout fraction must be in [0, 1), got {fraction}")
    perm = np.random.default_rng([seed, 0x401D]).permutation(n_rows)
    n_hold = int(round(fraction * n_rows))
    return np.sort(perm[n_hold:]), np.sort(perm[:n_hold])


def carve(n_rows: int, parts: Sequence[str], seed: int, owner: str = "read_splits()") -> dict[str, np.ndarray]:
    """Sorted row indices for ``train`` and each of ``parts`` (``val``, ``test``) cut from ``n_rows`` rows:
    each carved part holds ``CARVED_FRACTION`` of the rows (at least one), train the rest.

    A seeded permutation of the row indices, independent of any label: every task gets the same rows.
    """
    size = max(1, int(round(CARVED_FRACTION * n_rows)))
    if n_rows - size * len(parts) < 1:
        raise FusekitError(f"the training data has {n_rows} rows, too few to carve {' and '.join(parts)} from it; "
                           "give more rows or the {val} and {test} files", owner=owner)
    perm = np.random.default_rng([seed, SPLIT_SEED_DOMAIN]).permutation(n_rows)
    out = {part: np.sort(perm[k * size:(k + 1) * size]) for k, part in enumerate(parts)}
    out["train"] = np.sort(perm[size * len(parts):])
    return out
