"""Data for models fusekit did not train: columns and arrays named after the model inputs, fed as they are.

The other path of the data floor. Models that carry a FeatureSpec (``fusekit.feature_spec``)
get data encoded with it (``tabular.py``); models from elsewhere were trained on their own
values, so here nothing is re-encoded: no vocabulary, no scaling. The models' inputs are known
as ``(name, shape, dtype)`` (``decompose.manifest.InputSpec`` or anything with those three
attributes), and each is found in the data by its name:

- CSV or Parquet: a column named after the input (a scalar column for a ``[B]`` or ``[B, 1]``
  input; a list or fixed-size-list Parquet column for ``[B, k]``, nested lists or a flat list
  reshaped for higher ranks whose trailing dims are fixed), or the columns ``name[0]`` ..
  ``name[k-1]`` for ``[B, k]``. CSV is read as text and each column parsed by the dtype of the
  input it feeds (never through a vocabulary, never string-sorted).
- ``.npz`` (``np.savez``): one array per input and per label, all of one length; the shape per
  row must be the input's (fixed dims checked, a trailing 1 added or dropped); pickled object
  arrays are refused.

Values are cast to the input's dtype only when nothing is lost: a fractional value, a missing
value or NaN into an integer input, an integer beyond the target's range, text that is not a
number, or a bool input given anything but 0/1/true/false is refused with a one-line
:class:`FusekitError` naming the file, the column, the input and the first offending value.
Whether a negative integer is wrong depends on the model (an embedding index must not be
negative, a feature value may be): the caller names the inputs that are indices
(``index_inputs``, e.g. the inputs that feed a Gather) and only those refuse negative values.

Labels are found by task name (or ``labels={task: column}``) and parsed by the task's kind
(``labels.py``). :func:`read_splits` reads explicit train/val/test files (or Parquet folders)
or makes one seeded split of the training file that is the same for every task, and says in a
:class:`DataReport` what it read and how.
"""
from __future__ import annotations

import difflib
import hashlib
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Mapping, Protocol, Sequence

import numpy as np

from fusekit.data.dataset import Split
from fusekit.data.labels import class_count, kind_name, label_columns, parse_labels
from fusekit.data.splits import CARVED_FRACTION, carve
from fusekit.errors import FusekitError
from fusekit.io import portable_path, sha256_file
from fusekit.options import literal, quote
from fusekit.task_kinds import KINDS

# The function whose arguments (labels, index_inputs, val, test) these messages name.
OWNER = "read_splits()"
PARQUET = (".parquet", ".pq")
NPZ = ".npz"
# The dtypes an input can be fed as (numpy names, as decompose writes them into the manifest).
DTYPES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64")
_INDEXED = re.compile(r"(.+)\[(\d+)\]")


class InputLike(Protocol):
    """What a model input is known by (``decompose.manifest.InputSpec`` has these)."""

    name: str
    shape: Sequence[Any]
    dtype: str


# -- reading files into named columns --------------------------------------------------------------
class _Column:
    """One column: numpy values ``[N, ...]`` (text as a str array, made on first use from ``text``,
    an Arrow string array, when the file is a CSV), the dtype as read for the report ("text",
    "int64", "list<float32>[8]"), and ``flat``: a 1-level list, which may be reshaped."""

    def __init__(self, values: np.ndarray | None, read: str, flat: bool = False, text: Any = None):
        self._values, self.read, self.flat, self.text = values, read, flat, text

    @property
    def values(self) -> np.ndarray:
        if self._values is None:
            self._values = np.asarray(self.text.to_numpy(zero_copy_only=False), dtype=str)
        return self._values


class _Table:
    """The named columns (or arrays) of one file or Parquet folder, converted on first use."""

    def __init__(self, path: Path, kind: str, names: list[str], rows: int, getter):
        self.path, self.kind, self.names, self.rows = path, kind, names, rows
        self._get = getter
        self._cache: dict[str, _Column] = {}

    @property
    def where(self) -> str:
        return portable_path(self.path)

    def column(self, name: str) -> _Column:
        if name not in self._cache:
            self._cache[name] = self._get(name)
        return self._cache[name]


def _check_file(path: Path) -> None:
    if not path.exists():
        raise FusekitError(f"data file {literal(path)} does not exist; check the path")
    if path.is_file() and path.stat().st_size == 0:
        raise FusekitError(f"data file {literal(path)} is empty (0 bytes); give a file with rows")


def _open_table(path: Path | str) -> _Table:
    """The named columns of a CSV, Parquet or ``.npz`` file, or of a folder of Parquet files."""
    path = Path(path)
    _check_file(path)
    if path.is_dir():
        return _read_parquet(path)
    suffix = path.suffix.lower()
    if suffix == NPZ:
        return _read_npz(path)
    if suffix in PARQUET:
        return _read_parquet(path)
    return _read_csv(path)


def _read_csv(path: Path) -> _Table:
    """Every column as text (Arrow's reader: several times faster than pandas' for this), nothing
    taken as missing: an empty cell stays "" and each input's dtype decides what it means."""
    import csv

    import pyarrow as pa
    import pyarrow.csv as pacsv

    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            header = next(csv.reader(handle, delimiter=delimiter), None)
        if not header:
            raise FusekitError(f"data file {literal(path)} is empty; give a file with a header and rows")
        table = pacsv.read_csv(
            path, parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={name: pa.string() for name in header},
                                                 strings_can_be_null=False, quoted_strings_can_be_null=False,
                                                 null_values=[]))
    except (pa.ArrowException, OSError, UnicodeDecodeError, csv.Error) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FusekitError(f"cannot read {literal(path)} as CSV ({literal(first)}); check the file format") from None
    if table.num_rows == 0:
        raise FusekitError(f"data file {literal(path)} has a header but no rows; give a file with rows")
    names = [str(c) for c in table.column_names]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise FusekitError(f"{literal(path)} has two columns named {quote(twice)}; give each column its own name")
    return _Table(path, "csv", names, table.num_rows,
                  lambda name: _Column(None, "text", text=table.column(name).combine_chunks()))


def _read_parquet(path: Path) -> _Table:
    import pyarrow as pa
    import pyarrow.dataset as pads

    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PARQUET)
        if not files:
            raise FusekitError(f"folder {literal(path)} holds no Parquet files (*.parquet, *.pq); give a file "
                               "or a folder of Parquet files")
        source: Any = [str(p) for p in files]
    else:
        source = str(path)
    try:
        table = pads.dataset(source, format="parquet").to_table()
    except (pa.ArrowException, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FusekitError(f"cannot read {literal(path)} as Parquet ({literal(first)}); check the file format") from None
    if table.num_rows == 0:
        raise FusekitError(f"data file {literal(path)} has no rows; give a file with rows")
    where = portable_path(path)
    return _Table(path, "parquet", [str(n) for n in table.column_names], table.num_rows,
                  lambda name: _arrow_column(table.column(name), f"{where}: column {name!r}"))


def _arrow_column(chunked: Any, where: str) -> _Column:
    """A Parquet column as numpy: scalars ``[N]``, (nested) lists of one length per level ``[N, k, ...]``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = chunked.combine_chunks()
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    n = len(arr)
    dims: list[int] = []
    kinds: list[str] = []
    while pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or pa.types.is_fixed_size_list(arr.type):
        if arr.null_count:
            row = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
            raise FusekitError(f"{literal(where)} has no list at row {row} (null); give every row a list")
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            bad = int(np.flatnonzero(lengths != lengths[0])[0])
            raise FusekitError(f"{literal(where)} holds lists of different lengths ({int(lengths[bad])} at item "
                               f"{bad}, {int(lengths[0])} at item 0); a model input needs one length per row")
        kinds.append("fixed_size_list" if pa.types.is_fixed_size_list(arr.type) else "list")
        dims.append(int(lengths[0]) if len(lengths) else 0)
        arr = arr.flatten()
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        values = arr.fill_null("").to_numpy(zero_copy_only=False).astype(str)
        leaf = "text"
    elif pa.types.is_boolean(arr.type) or pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type):
        if arr.null_count and not pa.types.is_floating(arr.type):
            # Nulls become NaN, which an integer or bool input then refuses by row.
            values = arr.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False) \
                if pa.types.is_boolean(arr.type) else arr.to_numpy(zero_copy_only=False)
        else:
            values = arr.fill_null(np.nan).to_numpy(zero_copy_only=False) if arr.null_count else \
                arr.to_numpy(zero_copy_only=False)
        leaf = np.dtype(arr.type.to_pandas_dtype()).name
    else:
        raise FusekitError(f"{literal(where)} has type {literal(arr.type)}, which no model input takes; give "
                           "numbers, booleans, text or lists of them")
    values = values.reshape(n, *dims)
    read = leaf
    for kind, dim in zip(reversed(kinds), reversed(dims)):
        read = f"{kind}<{read}>[{dim}]"
    return _Column(values, read, flat=len(dims) == 1)


def batch_table(table: Any, path: Path, kind: str) -> _Table:
    """The named columns of one record batch of a streamed CSV (``kind="csv"``: every column text) or
    Parquet file, converted as :func:`read_named` converts a whole file's."""
    if kind == "csv":
        return _Table(path, "csv", [str(c) for c in table.column_names], table.num_rows,
                      lambda name: _Column(None, "text", text=table.column(name).combine_chunks()))
    where = portable_path(path)
    return _Table(path, "parquet", [str(n) for n in table.column_names], table.num_rows,
                  lambda name: _arrow_column(table.column(name), f"{where}: column {name!r}"))


def _read_npz(path: Path) -> _Table:
    if not zipfile.is_zipfile(path):  # np.load would try a pickle next
        raise FusekitError(f"{literal(path)} is not an .npz archive; save the arrays with numpy.savez")
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = {name: archive[name] for name in archive.files}
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise FusekitError(f"{literal(path)} holds a pickled object array, which fusekit never loads; save "
                               "numeric arrays (numpy.savez of int/float/bool arrays)") from None
        raise FusekitError(f"cannot read {literal(path)} as .npz ({literal(exc)}); save it with numpy.savez") from None
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise FusekitError(f"cannot read {literal(path)} as .npz ({literal(exc)}); save it with numpy.savez") from None
    if not arrays:
        raise FusekitError(f"{literal(path)} holds no arrays; save one array per model input and per label")
    where = portable_path(path)
    for name, arr in arrays.items():
        if arr.ndim == 0:
            raise FusekitError(f"{literal(where)}: array {name!r} is a scalar; every array holds one entry per row")
        if arr.dtype.kind not in "biufUS":
            raise FusekitError(f"{literal(where)}: array {name!r} has dtype {arr.dtype}, which no model input takes; "
                               "save numbers, booleans or text")
    lengths = {name: int(arr.shape[0]) for name, arr in arrays.items()}
    first = next(iter(lengths))
    for name, length in lengths.items():
        if length != lengths[first]:
            raise FusekitError(f"{literal(where)}: array {name!r} has {length} rows but {first!r} has "
                               f"{lengths[first]}; every array of an .npz holds one entry per row")
    if lengths[first] == 0:
        raise FusekitError(f"{literal(where)} holds arrays with no rows; give arrays with rows")
    return _Table(path, "npz", list(arrays), lengths[first],
                  lambda name: _Column(arrays[name], arrays[name].dtype.name))


# -- casting to the input's dtype -------------------------------------------------------------------
def _first(mask: np.ndarray, values: np.ndarray) -> tuple[int, Any]:
    """(row, value) of the first True of ``mask`` in row-major order."""
    flat = int(np.flatnonzero(mask.reshape(-1))[0])
    per_row = int(np.prod(mask.shape[1:])) if mask.ndim > 1 else 1
    value = values.reshape(-1)[flat]
    return flat // per_row, value.item() if isinstance(value, np.generic) else value


def _refuse(mask: np.ndarray, values: np.ndarray, where: str, why: str) -> None:
    if mask.any():
        row, value = _first(mask, values)
        raise FusekitError(f"{literal(where)}: value {quote(value)} at row {row} {literal(why)}")


def _text_to_int(text: np.ndarray, where: str) -> np.ndarray:
    """Integers from text, exactly (no float detour for ordinary integers); integral floats ("3.0") accepted."""
    try:
        return text.astype(np.int64)
    except (ValueError, OverflowError):
        pass
    per_row = _per_row(text)

    def refuse(pos: int, why: str) -> FusekitError:
        return FusekitError(f"{literal(where)}: value {quote(str(text.reshape(-1)[pos]))} at row {pos // per_row} "
                            f"{why}")

    out: list[int] = []
    for pos, item in enumerate(text.reshape(-1)):
        try:
            out.append(int(item))
            continue
        except ValueError:
            pass
        try:
            number = float(item)
        except ValueError:
            what = "is empty (a missing value)" if not item else "is not a number"
            raise refuse(pos, f"{what}; give an integer in every row") from None
        if not np.isfinite(number):
            raise refuse(pos, "is not a finite number; give an integer in every row")
        if number != int(number):
            raise refuse(pos, "is fractional; an integer input takes whole numbers only (fusekit never rounds)")
        out.append(int(number))
    lowest, highest = int(np.iinfo(np.int64).min), int(np.iinfo(np.uint64).max)
    beyond = next((pos for pos, v in enumerate(out) if v < lowest or v > highest), None)
    if beyond is not None:
        raise refuse(beyond, "is beyond the 64-bit integer range; give smaller integers")
    dtype = np.uint64 if max(out) > np.iinfo(np.int64).max else np.int64
    return np.array(out, dtype=dtype).reshape(text.shape)


def _per_row(values: np.ndarray) -> int:
    return int(np.prod(values.shape[1:])) if values.ndim > 1 else 1


def _text_to_float(text: np.ndarray, where: str) -> np.ndarray:
    """Floats from text; an empty cell is a missing value (NaN)."""
    text = np.where(text == "", "nan", text)
    try:
        return text.astype(np.float64)
    except ValueError:
        for row, item in enumerate(text.reshape(-1)):
            try:
                float(item)
            except ValueError:
                raise FusekitError(f"{literal(where)}: value {quote(str(item))} at row {row // _per_row(text)} is "
                                   "not a number; a numeric input takes numbers only") from None
        raise


def _cast_column(column: _Column, dtype: str, where: str, index: bool) -> np.ndarray:
    """:func:`cast_values` of a column, parsing CSV text with Arrow when every value parses cleanly
    (exact integers, floats; an empty cell is NaN for a float input) and by the checked numpy path
    otherwise, which then names the first value that does not fit."""
    if column.text is not None and dtype in DTYPES and np.dtype(dtype).kind in "iuf":
        import pyarrow as pa
        import pyarrow.compute as pc

        text = pc.utf8_trim_whitespace(column.text)
        try:
            if np.dtype(dtype).kind == "f":
                parsed = pc.cast(pc.if_else(pc.equal(text, ""), "nan", text), pa.float64())
            else:
                parsed = pc.cast(text, pa.int64())
        except pa.ArrowInvalid:
            parsed = None
        if parsed is not None:
            return cast_values(parsed.to_numpy(zero_copy_only=False), dtype, where, index)
    return cast_values(column.values, dtype, where, index)


def cast_values(values: np.ndarray, dtype: str, where: str, index: bool = False) -> np.ndarray:
    """``values`` (numbers, booleans or text) as ``dtype``, refusing any value the cast would change.

    ``index``: the input is an index (e.g. into an embedding table), so negative values are refused.
    ``where`` names the file, column and input in the messages.
    """
    if dtype not in DTYPES:
        raise FusekitError(f"{literal(where)}: the model input has dtype {quote(dtype)}, which fusekit cannot feed "
                           f"from data; supported: {', '.join(DTYPES)}")
    target = np.dtype(dtype)
    values = np.asarray(values)
    text = np.char.strip(values.astype(str)) if values.dtype.kind in "USO" else None
    if target.kind == "b":
        if text is not None:
            lowered = np.char.lower(text)
            ok = np.isin(lowered, ("0", "1", "true", "false"))
            _refuse(~ok, text, where, "is not 0/1/true/false; a bool input takes 0/1 or true/false only")
            return (lowered == "1") | (lowered == "true")
        if values.dtype.kind == "b":
            return values.astype(np.bool_)
        _refuse(~np.isin(values, (0, 1)), values, where, "is not 0 or 1; a bool input takes 0/1 or true/false only")
        return values.astype(np.bool_)
    if target.kind in "iu":
        if text is not None:
            values = _text_to_int(text, where)
        if values.dtype.kind == "f":
            _refuse(~np.isfinite(values), values, where,
                    "is missing or not finite (NaN/inf); an integer input needs a whole number in every row")
            _refuse(values != np.floor(values), values, where,
                    "is fractional; an integer input takes whole numbers only (fusekit never rounds)")
        info = np.iinfo(target)
        if values.dtype.kind in "iuf" and values.size:
            if values.dtype.kind == "f":
                beyond = (values < float(info.min)) | (values >= float(info.max) + 1.0)
            else:
                # Compared as Python ints: numpy would mix int64 and uint64 through float64.
                low, high = int(values.min()), int(values.max())
                beyond = np.zeros(values.shape, dtype=bool)
                if low < info.min or high > info.max:
                    beyond = np.array([int(v) < info.min or int(v) > info.max for v in values.reshape(-1)],
                                      dtype=bool).reshape(values.shape)
            _refuse(beyond, values, where, f"is beyond the {target.name} range [{info.min}, {info.max}] of the "
                                           "model input; give values the model can take")
        if index and values.size:
            _refuse(values < 0, values, where, "is negative, and this input is an index (it selects an embedding "
                                               "row); give ids >= 0")
        return values.astype(target)
    # floating target
    if text is not None:
        values = _text_to_float(text, where)
    if values.dtype.kind not in "biuf":
        raise FusekitError(f"{literal(where)}: values of type {values.dtype} cannot feed a {target.name} input")
    with np.errstate(over="ignore"):
        out = values.astype(target)
    if values.dtype.kind == "f" and target.itemsize < values.dtype.itemsize:
        _refuse(np.isfinite(values) & ~np.isfinite(out), values, where,
                f"is beyond the {target.name} range of the model input; rescale the column")
    return out


# -- fitting a column to the input's shape ----------------------------------------------------------
def _dims_match(have: Sequence[int], want: Sequence[Any]) -> bool:
    return len(have) == len(want) and all(not isinstance(w, int) or h == w for h, w in zip(have, want))


def _show(dims: Sequence[Any]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _fit_shape(values: np.ndarray, spec: InputLike, flat: bool, where: str) -> np.ndarray:
    """``values`` ``[N, ...]`` shaped as the input: fixed dims must agree; a trailing 1 may be added or
    dropped; a flat list (or ``name[i]`` columns) is reshaped when the input's trailing dims are all fixed."""
    want = list(spec.shape[1:])
    have = values.shape[1:]
    if _dims_match(have, want):
        return values
    fixed = all(isinstance(w, int) for w in want)
    if fixed:
        size = int(np.prod(want)) if want else 1
        no_ones = [d for d in have if d != 1] == [w for w in want if w != 1]
        if int(np.prod(have)) == size and (flat or no_ones):
            return values.reshape(len(values), *want)
    per_row = "one value" if not have else f"{_show(have)}"
    raise FusekitError(f"{literal(where)} holds {per_row} per row, but the input takes {_show(want) if want else 'one value'} "
                       f"per row (shape {_show(spec.shape)}); give data of the input's shape")


# -- what was read ----------------------------------------------------------------------------------
@dataclass
class InputRead:
    """How one model input was read: from which columns/arrays, the dtype read and the dtype fed."""

    name: str
    sources: list[str]
    read: str
    fed: str
    shape: list


@dataclass
class LabelRead:
    """How one task's labels were read."""

    task: str
    source: str
    kind: str
    classes: int | None = None


@dataclass
class Partition:
    """Which rows of which files form train, val and test: enough to check later that a run used
    the same split. ``carved``: the parts cut from the training file by a seeded permutation
    (``seed``); ``rows_sha256``: sha256 of each part's row indices (int64, sorted) within its file;
    ``files_sha256``: sha256 of the file each part comes from."""

    seed: int
    rows: dict[str, int]
    rows_sha256: dict[str, str]
    files_sha256: dict[str, str]
    carved: list[str] = field(default_factory=list)

    @property
    def how(self) -> str:
        """A short sentence for the report."""
        if not self.carved:
            return "explicit files for train, val and test"
        parts = " and ".join(self.carved)
        share = int(round(CARVED_FRACTION * 100))
        return (f"{parts} carved from the training file ({share}% of its rows each) by a permutation seeded "
                f"with {self.seed}; the same rows for every task")

    def to_dict(self) -> dict:
        """The JSON form (recorded with a run)."""
        return {"how": self.how, "seed": self.seed, "carved": list(self.carved), "rows": dict(self.rows),
                "rows_sha256": dict(self.rows_sha256), "files_sha256": dict(self.files_sha256)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Partition":
        """Read :meth:`to_dict`'s form back."""
        return cls(int(data["seed"]), dict(data["rows"]), dict(data["rows_sha256"]), dict(data["files_sha256"]),
                   list(data.get("carved", [])))

    def check_same(self, recorded: "Partition | Mapping[str, Any]", where: str = "the recorded run") -> None:
        """FusekitError unless ``recorded`` names the same rows of the same files for each part."""
        other = recorded if isinstance(recorded, Partition) else Partition.from_dict(recorded)
        for part in ("train", "val", "test"):
            if other.files_sha256.get(part) != self.files_sha256.get(part):
                raise FusekitError(f"the {part} data is not the file {literal(where)} used (its sha256 differs); "
                                   "give the same data files")
            if other.rows_sha256.get(part) != self.rows_sha256.get(part):
                raise FusekitError(f"the {part} rows differ from those {literal(where)} used (seed {other.seed} vs "
                                   f"{self.seed}, {other.rows.get(part)} vs {self.rows.get(part)} rows); use the "
                                   "same split seed and data")


@dataclass
class DataReport:
    """What was read: inputs, labels, ignored columns, the rows of each split and how it was made."""

    files: dict[str, str]
    inputs: list[InputRead]
    labels: list[LabelRead]
    ignored: list[str]
    partition: Partition
    # How the training file was read (fusekit.data.batches.choose_reading): streamed or in memory, and why.
    reading: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        """The JSON form (``--json``)."""
        return {"files": dict(self.files), "reading": dict(self.reading),
                "inputs": [{"name": i.name, "sources": list(i.sources), "read": i.read, "fed": i.fed,
                            "shape": list(i.shape)} for i in self.inputs],
                "labels": [{"task": lb.task, "source": lb.source, "kind": lb.kind, "classes": lb.classes}
                           for lb in self.labels],
                "ignored": list(self.ignored), "split": self.partition.to_dict()}

    def lines(self) -> list[str]:
        """The text form, printed once by the commands."""
        out = ["data: " + ", ".join(f"{part} {path}" for part, path in self.files.items())]
        for i in self.inputs:
            sources = i.sources[0] if len(i.sources) == 1 else f"{i.sources[0]}..{i.sources[-1]}"
            fed = i.fed if i.read == i.fed else f"{i.read} -> {i.fed}"
            out.append(f"  input {i.name!r} {_show(i.shape)} {fed}  from {sources!r}")
        for lb in self.labels:
            classes = f", {lb.classes} classes" if lb.classes is not None else ""
            out.append(f"  label {lb.task!r} ({lb.kind}{classes})  from {lb.source!r}")
        if self.ignored:
            out.append("  ignored: " + ", ".join(repr(c) for c in self.ignored))
        out.append("  rows: " + ", ".join(f"{part} {n}" for part, n in self.partition.rows.items())
                   + f" ({self.partition.how})")
        if self.reading:
            out.append(f"  training rows: {self.reading['train']}")
        return out


# -- reading one file --------------------------------------------------------------------------------
@dataclass
class NamedRead:
    """One file read for the models: arrays by input name, labels by task, and how they were read."""

    inputs: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    read: list[InputRead]
    label_reads: list[LabelRead]
    ignored: list[str]
    rows: int

    def split(self, idx: np.ndarray | None = None) -> Split:
        """The rows at ``idx`` (all rows when None) as a :class:`Split`."""
        if idx is None:
            return Split(self.inputs, self.labels)
        return Split({k: v[idx] for k, v in self.inputs.items()}, {k: v[idx] for k, v in self.labels.items()})


def _check_inputs(inputs: Sequence[InputLike], index_inputs: Collection[str]) -> None:
    names = [i.name for i in inputs]
    if not names:
        raise FusekitError("the models declare no inputs; nothing to read")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise FusekitError(f"the models declare input {quote(twice[0])} twice; give each input once")
    for spec in inputs:
        if len(spec.shape) == 0:
            raise FusekitError(f"model input {quote(spec.name)} is a scalar without a batch dimension; fusekit feeds "
                               "rows along the first dimension")
    unknown = sorted(set(index_inputs) - set(names))
    if unknown:
        raise FusekitError(f"{{index_inputs}} names {literal(', '.join(unknown))}, which is not a model input "
                           f"(inputs: {literal(', '.join(names))})", owner=OWNER)


def _missing_input(spec: InputLike, table: _Table, taken: Collection[str]) -> FusekitError:
    candidates = [n for n in table.names if n not in taken]
    close = difflib.get_close_matches(spec.name, candidates, n=3, cutoff=0.5)
    hint = f"close names: {', '.join(repr(c) for c in close)}" if close else \
        "columns: " + ", ".join(repr(c) for c in candidates[:8]) + (", ..." if len(candidates) > 8 else "")
    what = "array" if table.kind == "npz" else "column"
    wide = "" if table.kind == "npz" or len(spec.shape) != 2 else f" (or {spec.name}[0]..)"
    return FusekitError(f"{literal(table.where)} has no {what} for model input {quote(spec.name)} "
                        f"{_show(spec.shape)} {literal(spec.dtype)} ({literal(hint)}); name a {what} "
                        f"{quote(spec.name)}{literal(wide)}")


def _read_input(spec: InputLike, table: _Table, indexed: Mapping[str, dict[int, str]],
                index: bool) -> tuple[np.ndarray, InputRead]:
    what = "array" if table.kind == "npz" else "column"
    direct = spec.name in table.names
    parts = indexed.get(spec.name) if table.kind != "npz" else None
    if direct and parts:
        raise FusekitError(f"{literal(table.where)} has both a column {quote(spec.name)} and columns "
                           f"{quote(spec.name + '[0]')}..; keep one source for model input {quote(spec.name)}")
    if direct:
        column = table.column(spec.name)
        where = f"{table.where}: {what} {spec.name!r} for input {spec.name!r} ({spec.dtype})"
        values = _cast_column(column, spec.dtype, where, index)
        values = _fit_shape(values, spec, column.flat, where)
        return values, InputRead(spec.name, [spec.name], column.read, spec.dtype, list(spec.shape))
    positions = sorted(parts)
    names = [parts[k] for k in positions]
    if positions != list(range(len(positions))):
        gap = next(k for k in range(len(positions) + 1) if k not in parts)
        raise FusekitError(f"{literal(table.where)} has columns {quote(names[0])}..{quote(names[-1])} for model input "
                           f"{quote(spec.name)} but no {quote(f'{spec.name}[{gap}]')}; number them 0..k-1 without gaps")
    stacked = []
    for name in names:
        column = table.column(name)
        where = f"{table.where}: column {name!r} for input {spec.name!r} ({spec.dtype})"
        if column.values.ndim != 1:
            raise FusekitError(f"{literal(where)} holds lists; a {spec.name}[i] column holds one value per row")
        stacked.append(_cast_column(column, spec.dtype, where, index))
    values = _fit_shape(np.stack(stacked, axis=1), spec, True,
                        f"{table.where}: columns {names[0]!r}..{names[-1]!r} for input {spec.name!r}")
    reads = sorted({table.column(n).read for n in names})
    return values, InputRead(spec.name, names, "/".join(reads), spec.dtype, list(spec.shape))


def read_named(path: Path | str, inputs: Sequence[InputLike], tasks: Mapping[str, Any] | None = None, *,
               labels: Mapping[str, str] | None = None, classes: Mapping[str, int] | None = None,
               index_inputs: Collection[str] = ()) -> NamedRead:
    """Read one file (CSV, Parquet, ``.npz``) or Parquet folder for models with ``inputs``.

    ``tasks``: ``{task: kind}`` (a name of ``task_kinds.KINDS`` or a ``TaskKind``) whose labels must
    be present (none: inputs only, as for predicting); ``labels``: task -> column when not named
    after the task; ``classes``: K of multiclass tasks (default: the TaskKind's, else one more
    than the largest index);
    ``index_inputs``: integer inputs that are indices and so refuse negative values.
    """
    return read_table_named(_open_table(path), inputs, tasks, labels=labels, classes=classes,
                            index_inputs=index_inputs)


def read_table_named(table: _Table, inputs: Sequence[InputLike], tasks: Mapping[str, Any] | None = None, *,
                     labels: Mapping[str, str] | None = None, classes: Mapping[str, int] | None = None,
                     index_inputs: Collection[str] = ()) -> NamedRead:
    """:func:`read_named` of an opened table (a whole file, or one record batch: :func:`batch_table`)."""
    _check_inputs(inputs, index_inputs)
    given = dict(tasks or {})
    tasks = {task: kind_name(kind)[0] for task, kind in given.items()}
    classes = {**{t: kind_name(k)[1] for t, k in given.items() if kind_name(k)[1] is not None}, **(classes or {})}
    for task, kind in tasks.items():
        if kind not in KINDS:
            raise FusekitError(f"unknown kind {quote(kind)} of task {quote(task)}; use one of {', '.join(KINDS)}")
    indexed: dict[str, dict[int, str]] = {}
    for name in table.names:
        match = _INDEXED.fullmatch(name)
        if match:
            indexed.setdefault(match.group(1), {})[int(match.group(2))] = name
    arrays: dict[str, np.ndarray] = {}
    reads: list[InputRead] = []
    used: list[str] = []
    for spec in inputs:
        if spec.name not in table.names and (table.kind == "npz" or spec.name not in indexed):
            raise _missing_input(spec, table, used)
        arrays[spec.name], read = _read_input(spec, table, indexed, spec.name in set(index_inputs))
        reads.append(read)
        used.extend(read.sources)
    found = label_columns(list(tasks), table.names, labels, inputs=set(used) | {i.name for i in inputs},
                          where=table.where)
    parsed: dict[str, np.ndarray] = {}
    label_reads: list[LabelRead] = []
    for task, column in found.items():
        kind = tasks[task]
        k = classes.get(task)
        where = f"{table.where}: label {'array' if table.kind == 'npz' else 'column'} {column!r} of task {task!r}"
        parsed[task] = parse_labels(table.column(column).values, kind, k, where)
        label_reads.append(LabelRead(task, column, kind, class_count(parsed[task], k) if kind == "multiclass" else None))
    taken = set(used) | set(found.values())
    ignored = [n for n in table.names if n not in taken]
    return NamedRead(arrays, parsed, reads, label_reads, ignored, table.rows)


# -- splits -------------------------------------------------------------------------------------------
def rows_digest(idx: np.ndarray) -> str:
    """sha256 of row indices (int64, little-endian, in the order given)."""
    return hashlib.sha256(np.ascontiguousarray(idx, dtype="<i8").tobytes()).hexdigest()


def _file_digest(path: Path) -> str:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in PARQUET)
        digest = hashlib.sha256()
        for p in files:
            digest.update(p.relative_to(path).as_posix().encode() + b"\0" + sha256_file(p).encode())
        return digest.hexdigest()
    return sha256_file(path)


@dataclass
class NamedSplits:
    """Train, val and test :class:`Split` s (inputs by name, labels by task), and the report of how
    they were read."""

    train: Split
    val: Split
    test: Split
    report: DataReport

    @property
    def partition(self) -> Partition:
        """Which rows form each split (see :class:`Partition`)."""
        return self.report.partition


def read_splits(train: Path | str, val: Path | str | None = None, test: Path | str | None = None, *,
                inputs: Sequence[InputLike], tasks: Mapping[str, Any] | None = None,
                labels: Mapping[str, str] | None = None, classes: Mapping[str, int] | None = None,
                index_inputs: Collection[str] = (), seed: int = 0, streaming: Any = None) -> NamedSplits:
    """Read train/val/test for models with ``inputs`` (arguments as in :func:`read_named`).

    Each of ``train``, ``val``, ``test`` is a CSV, Parquet or ``.npz`` file or a folder of Parquet
    files. A split not given as a file is carved from the training file (see :func:`carve`), the
    same rows for every task, and the partition recorded in the report. ``streaming``
    (``fusekit.stream_config.StreamOptions``): whether the training file's rows are read in batches
    (``fusekit.data.batches.StreamedSplit``, cast batch by batch as here), and so are validation and test
    files by the same rule; rows carved from a streamed file stream when together they would not fit.
    """
    from fusekit.data.batches import choose_reading, eval_record, keep_carved

    files = {"train": Path(train)}
    if val is not None:
        files["val"] = Path(val)
    if test is not None:
        files["test"] = Path(test)
    for path in files.values():
        _check_file(path)
    # Each file is read in batches or held in memory by the same rule (the budget of ``streaming``).
    chosen = {part: choose_reading(path, streaming) for part, path in files.items()}
    reading = chosen["train"][2]
    reads = {part: _streamed_read(chosen[part][0], inputs, tasks, labels, classes, index_inputs, streaming)
             if chosen[part][1] else
             read_named(path, inputs, tasks, labels=labels, classes=classes, index_inputs=index_inputs)
             for part, path in files.items()}
    eval_reading = {part: chosen[part][2]["train"] for part in ("val", "test") if part in files}
    base = reads["train"]
    carved = [p for p in ("val", "test") if p not in files]
    idx = carve(base.rows, carved, seed) if carved else {"train": np.arange(base.rows)}
    for part in ("val", "test"):
        if part in reads:
            idx[part] = np.arange(reads[part].rows)
            _check_alike(reads["train"], reads[part], files[part])
    origin = {part: (files.get(part) or files["train"]) for part in ("train", "val", "test")}
    digests = {path: _file_digest(path) for path in set(origin.values())}
    partition = Partition(seed=int(seed), rows={p: int(len(idx[p])) for p in ("train", "val", "test")},
                          rows_sha256={p: rows_digest(idx[p]) for p in ("train", "val", "test")},
                          files_sha256={p: digests[origin[p]] for p in ("train", "val", "test")}, carved=carved)
    parts = {p: (reads[p] if p in reads else base) for p in ("train", "val", "test")}
    ignored = list(dict.fromkeys(c for r in reads.values() for c in r.ignored))
    report = DataReport(files={p: portable_path(f) for p, f in files.items()}, inputs=base.read,
                        labels=_label_reads(reads), ignored=ignored, partition=partition, reading=reading)
    split = {p: parts[p].split(idx[p] if p in carved or (p == "train" and carved) else None)
             for p in ("train", "val", "test")}
    carved_streamed = [p for p in carved if hasattr(split[p], "load")]
    if carved_streamed:  # carved from a streamed file: kept streamed only when they would not fit the budget
        kept, eval_reading["carved " + " and ".join(carved_streamed)] = keep_carved(
            [split[p] for p in carved_streamed], len(chosen["train"][0].columns), streaming)
        split.update(zip(carved_streamed, kept))
    report.reading = {**report.reading, **eval_record(eval_reading)}
    return NamedSplits(split["train"], split["val"], split["test"], report)


class _StreamedRead(NamedRead):
    """A training file read in batches: ``inputs`` hold its first record batch (shapes), ``labels``
    every row; :meth:`split` gives a :class:`fusekit.data.batches.StreamedSplit`."""

    stream: Any = None

    def split(self, idx: np.ndarray | None = None):
        return self.stream if idx is None else self.stream.subset(np.asarray(idx))


def _streamed_read(file, inputs: Sequence[InputLike], tasks, labels, classes, index_inputs,
                   streaming) -> _StreamedRead:
    """The training file for a streamed split: its first record batch read as :func:`read_named`
    reads a file (what feeds each input, which columns hold labels), every row's labels (only their
    columns read), and per batch the same casts."""
    from fusekit.data.batches import StreamedSplit
    from fusekit.stream_config import StreamOptions

    file.require(file.columns, "the first file has")
    first = next(iter(file.chunks(file.columns)), (0, None))[1]
    if first is None or first.num_rows == 0:
        raise FusekitError(f"data file {literal(file.path)} has no rows; give a file with rows")
    head = read_table_named(batch_table(first, file.path, file.kind), inputs, tasks, labels=labels, classes=classes,
                            index_inputs=index_inputs)
    used = list(dict.fromkeys(c for r in head.read for c in r.sources))
    label_cols = {lb.task: lb.source for lb in head.label_reads}
    parsed, label_reads = {}, []
    if label_cols:
        whole = batch_table(file.read_columns(list(dict.fromkeys(label_cols.values()))), file.path, file.kind)
        for lb in head.label_reads:
            where = f"{portable_path(file.path)}: label column {lb.source!r} of task {lb.task!r}"
            k = (classes or {}).get(lb.task) or kind_name(dict(tasks or {})[lb.task])[1]
            parsed[lb.task] = parse_labels(whole.column(lb.source).values, lb.kind, k, where)
            label_reads.append(LabelRead(lb.task, lb.source, lb.kind,
                                         class_count(parsed[lb.task], k) if lb.kind == "multiclass" else None))
    index = set(index_inputs)

    def encode(table: Any) -> dict:
        return read_table_named(batch_table(table, file.path, file.kind), inputs, index_inputs=index).inputs

    fed = {i.name: head.inputs[i.name].dtype.name for i in inputs}
    stream = StreamedSplit(file, used, encode, fed, parsed, buffer_rows=(streaming or StreamOptions()).shuffle_buffer)
    read = _StreamedRead(head.inputs, parsed, head.read, label_reads, head.ignored, len(stream))
    read.stream = stream
    return read


def _label_reads(reads: Mapping[str, NamedRead]) -> list[LabelRead]:
    """The training file's label reads, with the largest class count any split showed."""
    out = []
    for lb in reads["train"].label_reads:
        counts = [r.classes for read in reads.values() for r in read.label_reads if r.task == lb.task]
        classes = max(counts) if lb.classes is not None else None
        out.append(LabelRead(lb.task, lb.source, lb.kind, classes))
    return out


def _check_alike(train: NamedRead, other: NamedRead, path: Path) -> None:
    """A val/test file must give every input the shape the training file gave it."""
    for name, arr in train.inputs.items():
        if other.inputs[name].shape[1:] != arr.shape[1:]:
            raise FusekitError(f"{literal(portable_path(path))} gives input {quote(name)} shape "
                               f"{_show(other.inputs[name].shape[1:])} per row but the training data "
                               f"{_show(arr.shape[1:])}; give every split the same shapes")
