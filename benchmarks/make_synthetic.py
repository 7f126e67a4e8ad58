"""Seeded synthetic Parquet data with Census-Income's schema, at any number of rows.

Rows are drawn with replacement from the real Census-Income training file (so every column
follows that file's distribution, and the columns and labels keep their joint distribution):
the raw columns the FeatureSpec of fusekit's Census models reads (``fusekit/data/census.py``:
categorical text, dense numbers; the never-married source column left out, as the census2 pool
leaves it out) and the 0/1 labels ``income`` and ``never_married``. The file is written one row
group at a time, so making it never holds more than one row group of output in memory.

    .venv/bin/python benchmarks/make_synthetic.py --rows 1000000 -o /tmp/synth/train_1M.parquet [--seed 0]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusekit.data import census  # noqa: E402
from fusekit.io import atomic_file  # noqa: E402

TASKS = ("income", "never_married")
ROW_GROUP = 131072
# Every raw attribute but the instance weight, the income label and never married's source column.
COLUMNS = [c for c in census.CATEGORICAL + census.DENSE if c != census.TASKS["never_married"].column]


def source_table(data_dir: Path | None = None):
    """The real training file's columns and the two task labels, as one pyarrow Table."""
    import pyarrow as pa

    frame, _ = census.read_census(data_dir)
    table = pa.Table.from_pandas(frame[COLUMNS], preserve_index=False)
    for task in TASKS:
        table = table.append_column(task, pa.array(census.task_labels(frame, task).astype(np.int8)))
    return table


def write_synthetic(rows: int, out: Path, seed: int = 0, data_dir: Path | None = None,
                    row_group: int = ROW_GROUP) -> Path:
    """Write ``rows`` rows drawn from the real training file (seeded) to the Parquet file ``out``."""
    import pyarrow.parquet as pq

    table = source_table(data_dir)
    rng = np.random.default_rng([seed, 0x5A17])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        with pq.ParquetWriter(tmp, table.schema, compression="snappy") as writer:
            for start in range(0, rows, row_group):
                idx = rng.integers(0, table.num_rows, min(row_group, rows - start))
                writer.write_table(table.take(idx), row_group_size=row_group)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("-o", "--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", type=Path, default=None, help="folder of the Census-Income files")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    path = write_synthetic(args.rows, args.out, args.seed, args.data_dir)
    print(f"wrote {path} ({args.rows} rows, {path.stat().st_size / 2**20:.0f} MB) in "
          f"{time.perf_counter() - began:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
