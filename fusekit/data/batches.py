"""Batches of rows for training and evaluation: from arrays in memory, or streamed from files.

Two sources give ``fit`` its batches, one epoch at a time:

- :class:`MemoryBatches`: the split's arrays as tensors on the training device, sliced by a
  seeded permutation (a torch generator, so checkpoints resume the same order). Fastest when
  the rows fit in memory.
- :class:`StreamedSplit`: the rows of a Parquet file, a folder of Parquet files (every file,
  every row group) or a CSV file, read in record batches of ``READ_ROWS`` rows, encoded batch by
  batch by the caller's ``encode`` (a FeatureSpec's encoding, or the casts of ``named.py``),
  kept in a shuffle buffer of ``buffer_rows`` rows and given out as batches. Memory is bounded
  by the buffer and one record batch, not by the number of rows; the labels (a few bytes per
  row) and the row selection stay in memory.

Shuffling is seeded: epoch ``e`` of a run with seed ``s`` visits the Parquet row groups in an
order drawn from ``(s, e)`` and permutes each full buffer with the same generator, so the same
seed gives the same batches and every epoch another order. Without a seed, batches come in
file order (evaluation, prediction).

Distributed runs (the contract for ``torchrun`` callers): ``split.shard(rank, world)`` keeps
the ``rank``-th of ``world`` contiguous blocks of the split's positions (positions in file order,
after any selection such as the validation/test carve or the holdout). The shards of ranks
``0..world-1`` are disjoint and together hold every row of the split; their sizes differ by at
most one row, so their batch counts per epoch differ by at most one (``shard(rank, world,
equal=True)``, what ``fit`` uses, gives every block ``rows // world`` rows, the last
``rows % world`` positions being left out). Being contiguous, a rank's rows lie in its own
Parquet row groups: each rank reads only those (about ``1 / world`` of the file, plus at most
one row group shared with a neighbour). The shuffle of one rank depends on the seed, the epoch
and its rows only, so every rank may use the run's seed; a global batch still mixes rows of
every block (each rank gives its share of it).

Encoded categorical ids are held as int32 when the vocabulary allows; each batch is cast to
the dtype the models take (``fed``, int64 for fusekit's ``categorical``) when it is given out,
so a model never receives another dtype than with the in-memory path.

Whether a dataset streams is decided by ``fusekit.stream_config.StreamOptions`` (``auto``: when
the estimated resident size of the rows held the in-memory way exceeds ``memory_budget`` MB)
and reported.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from fusekit.errors import FusekitError
from fusekit.options import literal, quote
from fusekit.stream_config import StreamOptions

READ_ROWS = 65536  # rows per record batch read from a file
PARQUET = (".parquet", ".pq")
_SHUFFLE_SALT = 0x5EB1  # keeps the epoch shuffle's stream apart from the other seeded choices


# -- in memory ------------------------------------------------------------------------------------
class MemoryBatches:
    """A split's inputs and labels as tensors on ``device``; an epoch is slices of a seeded permutation."""

    def __init__(self, inputs: Sequence[Any], labels: Sequence[Any], device: Any):
        self.inputs, self.labels, self.device = list(inputs), list(labels), device
        self.rows = int(len(self.inputs[0]))

    def steps(self, batch_size: int) -> int:
        """Batches per epoch."""
        return -(-self.rows // batch_size)

    def epoch(self, batch_size: int, generator: Any, epoch: int = 0) -> Iterator[tuple[list, list]]:
        """(inputs, labels) tensors of each batch; draws one permutation from ``generator`` (``epoch``:
        unused, the generator's state carries the run's order from epoch to epoch)."""
        import torch

        order = torch.randperm(self.rows, generator=generator).to(self.device)
        for start in range(0, self.rows, batch_size):
            idx = order[start:start + batch_size]
            yield [x[idx] for x in self.inputs], [y[idx] for y in self.labels]


# -- files read in record batches -------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class RowFile:
    """A Parquet file, a folder of Parquet files or a CSV file, read in record batches.

    ``columns``: the column names (every file of a folder must hold the columns asked for);
    ``rows``: the row count (Parquet: from the metadata; CSV: counted by one pass).
    """

    def __init__(self, path: Path | str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.path = Path(path)
        if not self.path.exists():
            raise FusekitError(f"data file {literal(self.path)} does not exist; check the path")
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.rglob("*") if p.is_file() and p.suffix.lower() in PARQUET)
            if not self.files:
                raise FusekitError(f"folder {literal(self.path)} holds no Parquet files (*.parquet, *.pq); give a "
                                   "file or a folder of Parquet files")
            self.kind = "parquet"
        else:
            if self.path.stat().st_size == 0:
                raise FusekitError(f"data file {literal(self.path)} is empty (0 bytes); give a file with rows")
            self.files = [self.path]
            self.kind = "parquet" if self.path.suffix.lower() in PARQUET else "csv"
        self._rows: int | None = None
        if self.kind == "parquet":
            try:
                metas = [pq.ParquetFile(f).metadata for f in self.files]
            except (pa.ArrowException, OSError) as exc:
                raise FusekitError(f"cannot read {literal(self.path)} as Parquet ({literal(_first_line(exc))}); "
                                   "check the file format") from None
            self.schemas = [m.schema.to_arrow_schema().names for m in metas]
            self.columns = list(self.schemas[0])
            # One unit per row group: (file index, row group, first row, rows), in file order.
            self.units: list[tuple[int, int, int, int]] = []
            offset = 0
            for k, meta in enumerate(metas):
                for g in range(meta.num_row_groups):
                    n = meta.row_group(g).num_rows
                    self.units.append((k, g, offset, n))
                    offset += n
            self._rows = offset
        else:
            self.delimiter = "\t" if self.path.suffix.lower() == ".tsv" else ","
            try:
                with open(self.path, newline="", encoding="utf-8-sig") as handle:
                    header = next(csv.reader(handle, delimiter=self.delimiter), None)
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                raise FusekitError(f"cannot read {literal(self.path)} as CSV ({literal(_first_line(exc))}); "
                                   "check the file format") from None
            if not header:
                raise FusekitError(f"data file {literal(self.path)} is empty; give a file with a header and rows")
            self.columns = [str(c) for c in header]
            self.schemas = [self.columns]
            self.units = [(0, -1, 0, -1)]

    @property
    def rows(self) -> int:
        """The number of rows."""
        if self._rows is None:
            self._rows = sum(t.num_rows for _, t in self.chunks(self.columns[:1]))
        return self._rows

    def estimated_rows(self) -> int:
        """The row count (Parquet), or for CSV an estimate from the file size and the first lines, so that
        deciding how to read a file does not read all of it."""
        if self._rows is not None:
            return self._rows
        with open(self.path, "rb") as handle:
            head = handle.read(1 << 20)
        lines = max(1, head.count(b"\n") - 1)
        size = self.path.stat().st_size
        return lines if len(head) >= size else int(size / (len(head) / (lines + 1)))

    def require(self, names: Sequence[str], what: str = "the models need") -> None:
        """FusekitError naming the first file that lacks one of ``names``."""
        for file, names_of in zip(self.files, self.schemas):
            missing = [n for n in names if n not in names_of]
            if missing:
                others = "" if len(self.files) == 1 else f" (every file of {self.path} must hold them)"
                raise FusekitError(f"{literal(file)} has no column {quote(missing[0])}"
                                   f"{'' if len(missing) == 1 else f' and {len(missing) - 1} more'}, which "
                                   f"{literal(what)}{literal(others)}; give files with those columns")

    def chunks(self, columns: Sequence[str], order: Sequence[int] | None = None,
               dictionary: bool = False) -> Iterator[tuple[int, Any]]:
        """(first row, pyarrow Table) of each record batch of ``columns``; ``order``: the units to read, in
        that order (default: all, in file order); ``dictionary``: Parquet text columns as Arrow dictionary
        arrays, as most writers store them (no string per cell is made)."""
        import pyarrow as pa

        try:
            if self.kind == "csv":
                yield from self._csv_chunks(list(columns))
                return
            import pyarrow.parquet as pq

            handles: dict[int, Any] = {}
            for u in (order if order is not None else range(len(self.units))):
                k, g, offset, _ = self.units[u]
                if k not in handles:
                    handles.clear()  # one open file at a time
                    handles[k] = pq.ParquetFile(self.files[k], read_dictionary=list(columns) if dictionary else None)
                for batch in handles[k].iter_batches(batch_size=READ_ROWS, row_groups=[g], columns=list(columns),
                                                     use_threads=False):
                    yield offset, pa.Table.from_batches([batch])
                    offset += batch.num_rows
        except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:
            raise FusekitError(f"cannot read {literal(self.path)} ({literal(_first_line(exc))}); check the "
                               "file") from None

    def _csv_chunks(self, columns: list[str]) -> Iterator[tuple[int, Any]]:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        # Every column as text with nothing taken as missing, as the in-memory readers do.
        reader = pacsv.open_csv(
            self.path, read_options=pacsv.ReadOptions(block_size=1 << 22, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=self.delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={n: pa.string() for n in self.columns},
                                                 include_columns=columns, strings_can_be_null=False,
                                                 quoted_strings_can_be_null=False, null_values=[]))
        offset = 0
        for batch in reader:
            yield offset, pa.Table.from_batches([batch])
            offset += batch.num_rows

    def read_columns(self, columns: Sequence[str]) -> Any:
        """Only ``columns`` of every row, as one pyarrow Table (the labels)."""
        import pyarrow as pa

        tables = [t for _, t in self.chunks(columns)]
        return pa.concat_tables(tables) if tables else None


def choose_reading(path: Path | str, streaming: Any = None) -> tuple[RowFile | None, bool, dict]:
    """(the file opened for reading in batches, or None; whether its rows stream; the ``reading``
    record, ``{"train": "streamed (why)" | "in memory (why)", "streamed": bool}``) for a training file.

    A missing, empty or unreadable file is left to the in-memory readers, which name the problem
    (unless streaming was asked for); an ``.npz`` archive is always loaded whole."""
    streaming = streaming or StreamOptions()
    path = Path(path)
    never = streaming.stream == "never"
    if path.suffix.lower() == ".npz":
        if streaming.stream == "always":
            raise FusekitError("{stream='always'} reads CSV or Parquet files in batches; an .npz archive is loaded "
                               "whole: give a Parquet file or use {stream='auto'}", owner="StreamOptions")
        return None, False, {"train": "in memory (an .npz archive is loaded whole)", "streamed": False}
    if never or not path.is_dir() and (not path.is_file() or path.stat().st_size == 0):
        return None, False, {"train": "in memory (stream=never)" if never else "in memory", "streamed": False}
    try:
        file = RowFile(path)
        stream, why = streaming.decide(file.estimated_rows(), len(file.columns))
    except FusekitError:
        if streaming.stream == "always":
            raise
        return None, False, {"train": "in memory", "streamed": False}
    return file, stream, {"train": why, "streamed": bool(stream)}


# -- a split read in batches ----------------------------------------------------------------------
Encoder = Callable[[Any], dict]  # pyarrow Table of the needed columns -> {input name: array [n, ...]}


class StreamedSplit:
    """Rows of a :class:`RowFile` given out in batches: ``rows`` (sorted row indices of the file, None for
    all of them), ``labels`` per task in memory (one per selected row, in file order), ``encode`` the
    encoding of a record batch, ``fed`` the dtype each input is given out as."""

    def __init__(self, file: RowFile, columns: Sequence[str], encode: Encoder, fed: Mapping[str, str],
                 labels: Mapping[str, np.ndarray], rows: np.ndarray | None = None, buffer_rows: int = 262144):
        self.file, self.columns, self.encode = file, list(columns), encode
        self.dictionary = bool(getattr(encode, "reads_dictionaries", False))
        self.fed, self.labels, self.rows, self.buffer_rows = dict(fed), dict(labels), rows, int(buffer_rows)
        n = len(self)
        for task, y in self.labels.items():
            if len(y) != n:
                raise FusekitError(f"the labels of task {quote(task)} have {len(y)} rows but the split {n}")

    @property
    def input_names(self) -> list[str]:
        """The model inputs each batch holds."""
        return list(self.fed)

    def __len__(self) -> int:
        return int(self.file.rows if self.rows is None else len(self.rows))

    def _with(self, positions: np.ndarray) -> "StreamedSplit":
        positions = np.asarray(positions, dtype=np.int64)
        rows = positions if self.rows is None else self.rows[positions]
        if len(rows) > 1 and (np.diff(rows) <= 0).any():
            raise ValueError("a streamed split keeps its rows in file order; give sorted positions")
        return StreamedSplit(self.file, self.columns, self.encode, self.fed,
                             {t: y[positions] for t, y in self.labels.items()}, rows, self.buffer_rows)

    def subset(self, idx: np.ndarray) -> "StreamedSplit":
        """The rows at positions ``idx`` (sorted) of this split."""
        return self._with(idx)

    def sample(self, n: int | None, seed: int) -> "StreamedSplit":
        """A seeded random subset of ``n`` rows in file order, as :meth:`Split.sample` chooses them."""
        if n is None or len(self) <= n:
            return self
        return self._with(np.sort(np.random.default_rng(seed).choice(len(self), n, replace=False)))

    def shard(self, rank: int, world: int, equal: bool = False) -> "StreamedSplit":
        """This process's rows of a distributed run (see the module docstring). ``equal``: every shard
        keeps ``len(self) // world`` rows, the last ``len(self) % world`` positions of the split (fewer
        than ``world`` rows) being left out, so that every rank takes as many steps of as many rows."""
        if world < 1 or not 0 <= rank < world:
            raise FusekitError(f"rank {rank} of world {world} is not a process of the run; give 0 <= rank < world")
        if world == 1:
            return self
        if equal:
            size = len(self) // world
            return self._with(np.arange(rank * size, (rank + 1) * size))
        return self._with(np.array_split(np.arange(len(self)), world)[rank])

    def head(self, n: int) -> "Any":
        """The first ``n`` rows in memory, as :meth:`Split.head` gives them (an export's parity sample)."""
        return self._with(np.arange(min(n, len(self)))).load()

    def steps(self, batch_size: int) -> int:
        """Batches per epoch."""
        return -(-len(self) // batch_size)

    def _units_with_rows(self, order: Sequence[int] | None) -> Sequence[int] | None:
        """``order`` (default: every unit) without the Parquet row groups that hold none of this split's
        rows, so that they are never read (a shard's, a sample's); the order is kept."""
        if self.rows is None or self.file.kind != "parquet":
            return order
        starts = np.array([u[2] for u in self.file.units], dtype=np.int64)
        ends = starts + np.array([u[3] for u in self.file.units], dtype=np.int64)
        held = np.searchsorted(self.rows, ends) > np.searchsorted(self.rows, starts)
        return [u for u in (range(len(held)) if order is None else order) if held[u]]

    def _spans(self, order: Sequence[int] | None) -> Iterator[tuple[int, int, Any]]:
        """(first position, end position, encoded arrays) of each record batch with selected rows."""
        for offset, table in self.file.chunks(self.columns, self._units_with_rows(order), self.dictionary):
            n = table.num_rows
            if self.rows is None:
                lo, hi, table_rows = offset, offset + n, None
            else:
                lo, hi = np.searchsorted(self.rows, [offset, offset + n])
                if lo == hi:
                    continue
                table_rows = self.rows[lo:hi] - offset
            if table_rows is not None and len(table_rows) < n:
                table = table.take(table_rows)
            yield int(lo), int(hi), self.encode(table)

    def batches(self, batch_size: int, seed: int | None = None, epoch: int = 0) -> Iterator[tuple[dict, dict]]:
        """(inputs, labels) of each batch, inputs cast to ``fed``; shuffled when ``seed`` is given (see the
        module docstring), in file order otherwise."""
        rng = np.random.default_rng([seed, epoch, _SHUFFLE_SALT]) if seed is not None else None
        order = None if rng is None or self.file.kind != "parquet" else rng.permutation(len(self.file.units))
        pending: list[tuple[dict, np.ndarray]] = []
        held = 0
        for lo, hi, arrays in self._spans(order):
            pending.append((arrays, np.arange(lo, hi)))
            held += hi - lo
            if held >= (self.buffer_rows if rng is not None else batch_size):
                rest = yield from self._give(pending, batch_size, rng, final=False)
                pending, held = rest, sum(len(p) for _, p in rest)
        yield from self._give(pending, batch_size, rng, final=True)

    def _give(self, pending: list, batch_size: int, rng, final: bool):
        """Batches from the buffer; returns what is left (less than one batch) unless ``final``."""
        if not pending:
            return []
        names = list(pending[0][0])
        arrays = {k: np.concatenate([a[k] for a, _ in pending]) if len(pending) > 1 else pending[0][0][k]
                  for k in names}
        positions = np.concatenate([p for _, p in pending]) if len(pending) > 1 else pending[0][1]
        perm = rng.permutation(len(positions)) if rng is not None else None
        n = len(positions)
        end = n if final else n - n % batch_size
        for start in range(0, end, batch_size):
            take = perm[start:start + batch_size] if perm is not None else slice(start, start + batch_size)
            at = positions[take]
            yield ({k: arrays[k][take].astype(self.fed[k], copy=False) for k in names},
                   {t: y[at] for t, y in self.labels.items()})
        if final or end == n:
            return []
        keep = perm[end:] if perm is not None else slice(end, n)
        return [({k: arrays[k][keep] for k in names}, positions[keep])]

    def input_batches(self, batch_size: int) -> Iterator[dict]:
        """The model inputs in file order, ``batch_size`` rows at a time (as :meth:`Split.input_batches`)."""
        for inputs, _ in self.batches(batch_size):
            yield inputs

    def load(self) -> "Any":
        """Every row in memory as a :class:`fusekit.data.dataset.Split` (inputs in the ``fed`` dtypes)."""
        from fusekit.data.dataset import Split

        parts: dict[str, list[np.ndarray]] = {k: [] for k in self.fed}
        for inputs, _ in self.batches(max(1, self.buffer_rows)):
            for k, a in inputs.items():
                parts[k].append(a)
        if not any(parts.values()):
            raise FusekitError(f"{literal(self.file.path)} gives no rows for this split; give a file with rows")
        return Split({k: np.concatenate(v) for k, v in parts.items()}, dict(self.labels))


def keep_carved(parts: Sequence[StreamedSplit], columns: int, streaming: Any = None) -> tuple[list, str]:
    """Validation/test rows carved from a streamed file, and why: kept streamed (read from the file at
    each evaluation) when together they would not fit the memory budget, else each loaded once."""
    stream, why = (streaming or StreamOptions()).decide(sum(len(p) for p in parts), columns)
    return (list(parts) if stream else [p.load() for p in parts]), why


def eval_record(whys: Mapping[str, str]) -> dict:
    """The ``reading`` entry for the validation and test data (``{"eval": ...}`` naming each source and
    why it was read so, when any of them streamed; else nothing)."""
    if not any(why.startswith("streamed") for why in whys.values()):
        return {}
    return {"eval": "; ".join(f"{part}: {why}" for part, why in whys.items())}


def narrow_ids(ids: np.ndarray, cardinalities: Sequence[int]) -> np.ndarray:
    """Categorical ids as int32 when every vocabulary (plus the unseen id 0) fits, else as they are."""
    if not cardinalities or max(cardinalities) < 2**31 - 1:
        return ids.astype(np.int32, copy=False)
    return ids


def spec_encoder(spec: Any, where: str) -> Encoder:
    """The FeatureSpec path: a record batch of the spec's raw columns -> ``categorical`` (narrowed ids) and
    ``dense``, by the spec's own encoding.

    Each categorical column is dictionary-encoded by Arrow first and the spec encodes only its
    distinct values (nulls among them, as the whole-column path sees them), whose ids the rows then
    gather: the same ids as ``spec.encode`` of the rows, without turning every cell into a Python string."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    from fusekit.data.features import FeatureSpec

    cards = [len(c.vocab) + 1 for c in spec.categorical]
    single = [FeatureSpec([feature], [], spec.dataset) for feature in spec.categorical]
    dense_spec = FeatureSpec([], list(spec.dense), spec.dataset)
    dense_names = [d.name for d in spec.dense]

    def encode(table: Any) -> dict:
        cat = np.zeros((table.num_rows, len(single)), dtype=np.int32 if narrow_ids(np.zeros(0), cards).dtype
                       == np.int32 else np.int64)
        for j, one in enumerate(single):
            name = one.categorical[0].name
            coded = table.column(name).combine_chunks()
            if not pa.types.is_dictionary(coded.type) or coded.null_count:
                if pa.types.is_dictionary(coded.type):
                    coded = coded.dictionary_decode()
                coded = pc.dictionary_encode(coded, null_encoding="encode")
            ids, _ = one.encode(pd.DataFrame({name: coded.dictionary.to_pandas()}), where)
            cat[:, j] = ids[:, 0][coded.indices.to_numpy(zero_copy_only=False)]
        _, dense = dense_spec.encode(table.select(dense_names).to_pandas(), where)
        return {"categorical": cat, "dense": dense}

    encode.reads_dictionaries = True  # type: ignore[attr-defined]  (the file gives text columns as dictionaries)
    return encode
