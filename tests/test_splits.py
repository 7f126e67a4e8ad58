"""Seeded, stratified partitions."""
from __future__ import annotations

import numpy as np
import pytest

from fusekit.data.splits import holdout_partition, stratified_halves, stratified_split
from fusekit.errors import FusekitError


def _labels(n=1001, rate=0.07, seed=3):
    return (np.random.default_rng(seed).random(n) < rate).astype(np.float32)


def test_halves_cover_all_rows_once_and_keep_the_class_ratio():
    y = _labels()
    val, test = stratified_halves(y, seed=0)
    assert len(np.intersect1d(val, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([val, test])), np.arange(len(y)))
    assert abs(len(val) - len(test)) <= 2
    assert abs(int(y[val].sum()) - int(y[test].sum())) <= 1


def test_halves_are_seeded():
    y = _labels()
    a = stratified_halves(y, seed=0)
    b = stratified_halves(y, seed=0)
    c = stratified_halves(y, seed=1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


def test_split_fractions():
    y = _labels(n=2000, rate=0.3)
    parts = stratified_split(y, (0.8, 0.1, 0.1), seed=0)
    assert [len(p) for p in parts] == pytest.approx([1600, 200, 200], abs=2)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(2000))
    rates = [y[p].mean() for p in parts]
    assert max(rates) - min(rates) < 0.01
    with pytest.raises(ValueError):
        stratified_split(y, (0.5, 0.4), seed=0)


def test_holdout_partition():
    src, hold = holdout_partition(1000, 0.2, seed=0)
    assert len(hold) == 200 and len(src) == 800
    assert len(np.intersect1d(src, hold)) == 0
    again = holdout_partition(1000, 0.2, seed=0)
    assert np.array_equal(hold, again[1])
    assert not np.array_equal(hold, holdout_partition(1000, 0.2, seed=1)[1])
    # spread over the file, not a block at one end
    assert hold.min() < 100 and hold.max() > 900
    with pytest.raises(FusekitError, match="holdout"):
        holdout_partition(10, 1.0, seed=0)
