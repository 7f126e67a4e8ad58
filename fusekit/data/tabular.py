"""Encoded datasets (train/val/test Splits with their FeatureSpec) and the generic CSV/Parquet loader.

A CSV/Parquet source is one file, or a training file whose name contains ``train`` with sibling
files where ``train`` is replaced by ``val``/``validation`` and/or ``test`` (the AliExpress and
Ali-CCP sample layouts). With a test file but no validation file, the test file is split 50/50
like Census-Income; a lone file is split 80/10/10. Splits are seeded permutations of the rows that
read no label, so every task of a file (and every single-task model trained on it) gets the same rows. Feature columns are every column but the labels (and ``exclude``), unless named. Names
following the AliExpress/Ali-CCP/Criteo conventions decide first (``numerical_*``, ``dense_*``,
``D<n>``, ``I<n>``: dense; ``categorical_*``, ``C<n>``: categorical); otherwise a column is dense
when all its values are numbers and some have a fractional part or exponent, else categorical.
Id columns (named ``id`` or ``*_id``, e.g. AliExpress' search_id) are skipped unless named.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from fusekit.errors import FusekitError
from fusekit.data.dataset import Split, TabularDataset, holdout_dict, keep_split, split_record
from fusekit.data.features import FeatureSpec, fit_spec
from fusekit.data.splits import carve, seeded_halves
from fusekit.options import literal, quote

# The function whose arguments (labels, categorical, dense) these messages name.
OWNER = "load_dataset()"


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV (every column as text, "NA" kept as text) or Parquet file; FusekitError when unusable."""
    path = Path(path)
    if not path.is_file():
        raise FusekitError(f"data file {path} does not exist; check the path")
    if path.stat().st_size == 0:
        raise FusekitError(f"data file {path} is empty; give a file with a header and rows")
    suffixes = "".join(path.suffixes).lower()
    try:
        if suffixes.endswith((".parquet", ".pq")):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    except pd.errors.EmptyDataError:
        raise FusekitError(f"data file {path} is empty; give a file with a header and rows") from None
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FusekitError(f"cannot read {path} as CSV/Parquet ({first}); check the file format") from None
    if len(frame) == 0:
        raise FusekitError(f"data file {path} has a header but no rows; give a file with rows")
    return frame


def column_labels(frame: pd.DataFrame, column: str, where: str, kind="binary") -> np.ndarray:
    """One task's labels from ``column``, parsed by the task's kind (default binary: 0/1, true/false)."""
    from fusekit.data.labels import parse_labels

    if column not in frame.columns:
        shown = ", ".join(map(str, list(frame.columns)[:8])) + (", ..." if frame.shape[1] > 8 else "")
        raise FusekitError(f"{literal(where)} has no label column {quote(column)} (columns: {literal(shown)}); "
                           "name the task's label column in {labels}", owner=OWNER)
    return parse_labels(frame[column].to_numpy(), kind, where=f"{where}: label column {column!r}")


def _sibling(path: Path, names: tuple[str, ...]) -> Path | None:
    stem = path.name
    hits = [m for m in re.finditer("train", stem)]
    if not hits:
        return None
    m = hits[-1]
    for name in names:
        candidate = path.with_name(stem[: m.start()] + name + stem[m.end():])
        if candidate.is_file():
            return candidate
    return None


_DENSE_NAME = re.compile(r"(numerical|numeric|dense)[_\d].*|[DI]\d.*")
_CATEGORICAL_NAME = re.compile(r"(categorical|cat)[_\d].*|C\d+")


def _name_hint(name: str) -> str | None:
    """Layout conventions: numerical_*/dense_*/D<n>/I<n> are dense, categorical_*/C<n> categorical."""
    if _DENSE_NAME.fullmatch(name):
        return "dense"
    if _CATEGORICAL_NAME.fullmatch(name):
        return "categorical"
    return None


def infer_columns(frame: pd.DataFrame, skip: set[str]) -> tuple[list[str], list[str]]:
    """(categorical, dense) feature columns of a frame, by the rule in the module docstring."""
    return _decide(_traits(frame, skip))


def _traits(frame: pd.DataFrame, skip: set[str]) -> dict:
    """What decides each feature column's kind: ``"categorical"``/``"dense"`` when its name or dtype
    does, else its text's (every present value a number, any value present, any with a fraction);
    the traits of a file's record batches combine (:func:`_combine`) into those of all its rows."""
    traits: dict = {}
    for name in frame.columns:
        if name in skip or re.fullmatch(r"(.*_)?id", str(name).lower()):
            continue
        values = frame[name]
        hint = _name_hint(str(name))
        if hint is not None:
            traits[name] = hint
        elif pd.api.types.is_float_dtype(values):
            traits[name] = "dense"
        elif pd.api.types.is_bool_dtype(values) or pd.api.types.is_integer_dtype(values):
            traits[name] = "categorical"
        else:
            text = values.astype(str).str.strip()
            numeric = pd.to_numeric(text.replace("", np.nan), errors="coerce")
            present = text != ""
            traits[name] = (bool(numeric[present].notna().all()), bool(present.any()),
                            bool(text.str.contains(r"[.eE]|^nan$|^inf$", regex=True).any()))
    return traits


def _combine(a: dict, b: dict) -> dict:
    """The traits of two record batches' rows together (a dtype that decides is the same in both)."""
    out = dict(a)
    for name, t in b.items():
        mine = out.get(name, t)
        if isinstance(mine, tuple) and isinstance(t, tuple):
            out[name] = (mine[0] and t[0], mine[1] or t[1], mine[2] or t[2])
        elif isinstance(mine, tuple) or isinstance(t, tuple):  # a Parquet column typed in one file only
            out[name] = "categorical"
        else:
            out[name] = mine
    return out


def _decide(traits: dict) -> tuple[list[str], list[str]]:
    categorical, dense = [], []
    for name, t in traits.items():
        is_dense = t == "dense" if isinstance(t, str) else t[0] and t[1] and t[2]
        (dense if is_dense else categorical).append(name)
    return categorical, dense


def load_tabular(
    path: Path,
    tasks: list[str],
    *,
    labels: dict[str, str] | None = None,
    spec: FeatureSpec | None = None,
    seed: int = 0,
    holdout: float = 0.0,
    holdout_seed: int = 0,
    categorical: list[str] | None = None,
    dense: list[str] | None = None,
    exclude: list[str] | None = None,
    val: Path | None = None,
    test: Path | None = None,
    kinds: dict | None = None,
    streaming=None,
) -> TabularDataset:
    """Load a CSV/Parquet dataset (see the module docstring for the layout rules); ``val`` and
    ``test`` name the other splits' files instead of the siblings found by name; ``kinds``
    (task -> kind name or TaskKind, default binary) says how to read each task's labels.

    ``streaming`` (a :class:`fusekit.data.batches.StreamOptions`, default auto) decides whether the
    training file is held in memory or read in batches (with ``spec`` given: the models' encoding);
    the validation and test files are decided the same way, and so are the rows carved from a streamed
    training file (together); those that stream stay :class:`fusekit.data.batches.StreamedSplit` s,
    read in batches whenever they are evaluated. ``reading`` on the result says which and why."""
    from fusekit.data.batches import eval_record, keep_carved

    kinds = dict(kinds or {})
    labels = dict(labels or {})
    unknown = sorted(set(labels) - set(tasks))
    if unknown:
        raise FusekitError(f"{{labels}} names task(s) {literal(', '.join(unknown))} that are not among the tasks "
                           f"{quote(tasks)}; map only those tasks", owner=OWNER)
    columns = {t: labels.get(t, t) for t in tasks}
    path = Path(path)
    file, streamed, reading = _choose_reading(path, spec, streaming)
    train_df = None if streamed else read_table(path) if file is None or path.is_file() else _whole(file)
    val_path = Path(val) if val is not None else _sibling(path, ("val", "valid", "validation"))
    test_path = Path(test) if test is not None else _sibling(path, ("test",))

    if streamed:
        train_labels = _streamed_labels(file, columns, str(path), kinds)
    else:
        train_labels = {t: column_labels(train_df, c, str(path), kinds.get(t, "binary")) for t, c in columns.items()}
    fitted = spec is None
    if spec is None:
        skip = set(columns.values()) | set(exclude or [])
        if categorical is None and dense is None:
            categorical, dense = infer_columns(train_df, skip) if not streamed else _infer_streamed(file, skip)
        else:
            categorical, dense = list(categorical or []), list(dense or [])
        for name in categorical + dense:
            if name not in (file.columns if streamed else train_df.columns):
                raise FusekitError(f"{literal(path)} has no feature column {quote(name)}; check {{categorical}} and "
                                   "{dense}", owner=OWNER)
            if name in columns.values():
                raise FusekitError(f"column {name!r} is a label and cannot also be a feature")
        if not categorical and not dense:
            raise FusekitError(f"{literal(path)} has no feature columns besides the labels; name them in "
                               "{categorical} or {dense}", owner=OWNER)
        fit = _fit_streamed if streamed else fit_spec
        spec = fit(
            file if streamed else train_df, categorical, dense, dataset=path.name,
            excluded=sorted(skip), holdout=holdout_dict(holdout, holdout_seed), source=str(path),
        )
    else:
        leaked = [c for c in columns.values() if c in spec.columns]
        if leaked:
            raise FusekitError(f"label column(s) {', '.join(leaked)} are inputs of the feature specification; use other labels")
    if streamed:
        train = _streamed_split(file, spec, columns, train_labels, str(path), streaming)
    else:
        cat, dns = spec.encode(train_df, str(path))
        train = Split.tabular(cat, dns, train_labels)

    if test_path is None and val_path is not None:
        raise FusekitError(f"{val_path} exists but no test file beside it; add the test file")
    eval_reading = {}
    if val_path is not None:
        val, eval_reading["val"] = _eval_split(val_path, spec, columns, kinds, streaming)
        test, eval_reading["test"] = _eval_split(test_path, spec, columns, kinds, streaming)
        val_idx, test_idx = np.arange(len(val)), np.arange(len(test))
    elif test_path is not None:
        rest, eval_reading["test"] = _eval_split(test_path, spec, columns, kinds, streaming)
        val_idx, test_idx = seeded_halves(len(rest), seed)
        val, test = rest.subset(val_idx), rest.subset(test_idx)
    else:
        idx = carve(len(train), ["val", "test"], seed, owner="load_dataset()")
        val_idx, test_idx = idx["val"], idx["test"]
        train, val, test = train.subset(idx["train"]), train.subset(val_idx), train.subset(test_idx)
        if streamed:
            (val, test), eval_reading["carved validation and test rows"] = keep_carved([val, test], len(file.columns),
                                                                                       streaming)
    reading = {**reading, **eval_record(eval_reading)}
    # Every model of a pool and every later step must see the same split: recorded, then checked.
    keep_split(spec, split_record(seed, {"train": len(train), "val": len(val), "test": len(test)}, val_idx, test_idx),
               fitted, literal(path))
    return TabularDataset(spec, list(tasks), train, val, test, kinds=_task_kinds(kinds, train), reading=reading)


def _choose_reading(path: Path, spec: FeatureSpec | None, streaming) -> tuple[object, bool, dict]:
    """(the training file opened for reading in batches or None, whether it streams, the ``reading``
    record saying which and why); a Parquet folder is always opened so."""
    from fusekit.data.batches import RowFile, choose_reading

    file, stream, reading = choose_reading(path, streaming)
    if stream and spec is None:
        reading = {"train": reading["train"][:-1] + "; the feature specification fitted in passes over the file)",
                   "streamed": True}
    if file is None and path.is_dir():
        file = RowFile(path)
    return file, stream, reading


def _frames(file, columns: list[str]):
    """Each record batch of ``columns`` as a pandas frame indexed by its rows in the file."""
    for offset, table in file.chunks(columns):
        frame = table.to_pandas()
        frame.index = pd.RangeIndex(offset, offset + len(frame))
        yield frame


def _infer_streamed(file, skip: set[str]) -> tuple[list[str], list[str]]:
    """:func:`infer_columns` over every row of a streamed file, one record batch at a time."""
    traits: dict = {}
    file.require(file.columns, "the first file has")
    for frame in _frames(file, file.columns):
        traits = _combine(traits, _traits(frame, skip))
    return _decide(traits)


def _fit_streamed(file, categorical: list[str], dense: list[str], dataset: str, excluded: list[str],
                  holdout: dict | None, source: str) -> FeatureSpec:
    """The specification :func:`fit_spec` fits on the rows in memory, fitted on a streamed file: one
    pass keeps each categorical column's distinct values (its vocabulary), then one pass per dense
    column keeps that column's float64 values (8 bytes a row, one column at a time) for its mean and
    std, so that both are computed as in memory, to the bit."""
    from fusekit.data.features import as_float, scaling_of, vocabulary_of

    file.require(categorical + dense, "the feature columns need")
    distinct: dict[str, list[pd.Series]] = {name: [] for name in categorical}
    if categorical:
        for frame in _frames(file, categorical):
            for name in categorical:
                distinct[name].append(pd.Series(pd.unique(frame[name])))
    cats = [vocabulary_of(name, pd.concat(parts, ignore_index=True) if parts else pd.Series([], dtype=object))
            for name, parts in distinct.items()]
    dens = []
    for name in dense:
        values = [as_float(frame[name], name, source) for frame in _frames(file, [name])]
        dens.append(scaling_of(name, np.concatenate(values) if values else np.zeros(0)))
    return FeatureSpec(cats, dens, dataset, list(excluded or []), holdout)


def _whole(file) -> pd.DataFrame:
    """Every row of a file opened for batches (a Parquet folder held in memory)."""
    file.require(file.columns, "the first file has")
    frame = file.read_columns(file.columns).to_pandas()
    if len(frame) == 0:
        raise FusekitError(f"data file {file.path} has no rows; give a file with rows")
    return frame


def _streamed_labels(file, columns: dict[str, str], where: str, kinds: dict) -> dict[str, np.ndarray]:
    """Every task's labels of a streamed file (only the label columns are read)."""
    file.require(list(dict.fromkeys(columns.values())), "the tasks' labels need")
    frame = file.read_columns(list(dict.fromkeys(columns.values()))).to_pandas()
    return {t: column_labels(frame, c, where, kinds.get(t, "binary")) for t, c in columns.items()}


def _streamed_split(file, spec: FeatureSpec, columns: dict[str, str], labels: dict, where: str, streaming):
    from fusekit.data.batches import StreamedSplit, spec_encoder
    from fusekit.stream_config import StreamOptions

    leaked = [c for c in columns.values() if c in spec.columns]
    if leaked:
        raise FusekitError(f"label column(s) {', '.join(leaked)} are inputs of the feature specification; use other labels")
    file.require(spec.columns, "the feature specification needs")
    return StreamedSplit(file, spec.columns, spec_encoder(spec, where), {"categorical": "int64", "dense": "float32"},
                         labels, buffer_rows=(streaming or StreamOptions()).shuffle_buffer)


def _eval_split(path: Path, spec: FeatureSpec, columns: dict[str, str], kinds: dict, streaming):
    """A validation or test file, encoded with ``spec``, and how it was read: in batches when its rows
    would not fit the memory budget (as a training file is decided), else held in memory."""
    file, streamed, reading = _choose_reading(Path(path), spec, streaming)
    if streamed:
        labels = _streamed_labels(file, columns, str(path), kinds)
        return _streamed_split(file, spec, columns, labels, str(path), streaming), reading["train"]
    frame = _whole(file) if file is not None and Path(path).is_dir() else read_table(path)
    return _encoded(frame, spec, columns, str(path), kinds), reading["train"]


def _task_kinds(kinds: dict, train: Split) -> dict:
    """TaskKinds of the named tasks (a name, or a TaskKind kept as it is); a multiclass task has one
    class more than its largest training label."""
    from fusekit.task_kinds import TaskKind

    out = {}
    for task, kind in kinds.items():
        if isinstance(kind, TaskKind):
            out[task] = kind
        elif kind == "multiclass":
            k = int(train.labels[task].max()) + 1
            out[task] = TaskKind("multiclass", k, "probability", (k,))
        else:
            out[task] = TaskKind(kind, None, "probability" if kind == "binary" else "value")
    return out


def _encoded(frame: pd.DataFrame, spec: FeatureSpec, columns: dict[str, str], where: str, kinds: dict) -> Split:
    cat, dense = spec.encode(frame, where)
    return Split.tabular(cat, dense, {t: column_labels(frame, c, where, kinds.get(t, "binary"))
                                      for t, c in columns.items()})
