import numpy as np

from fusekit.data.dataset import Split


def make(n):
    return Split.tabular(np.arange(n * 2).reshape(n, 2), np.arange(n, dtype=np.float32)[:, None],
                 {"t": (np.arange(n) % 2).astype(np.float32)})


def test_sample_is_seeded_ordered_and_keeps_rows_aligned():
    split = make(100)
    a, b, c = split.sample(10, 0), split.sample(10, 0), split.sample(10, 1)
    assert np.array_equal(a.cat, b.cat) and not np.array_equal(a.cat, c.cat)
    rows = a.dense[:, 0].astype(int)
    assert list(rows) == sorted(set(rows)) and len(a) == 10
    assert np.array_equal(a.cat[:, 0], rows * 2) and np.array_equal(a.labels["t"], rows % 2)


def test_sample_larger_than_split_or_none_returns_everything():
    split = make(5)
    assert split.sample(None, 0) is split and split.sample(50, 0) is split
