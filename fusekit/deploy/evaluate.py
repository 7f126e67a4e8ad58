"""Evaluate or apply any fusekit ONNX model (a source model or a fused one) with onnxruntime."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import json

import numpy as np
import pandas as pd

from fusekit.errors import FusekitError
from fusekit.io import atomic_file, check_output_paths
from fusekit.locks import holds_output
from fusekit.options import literal
from fusekit.data.labels import parse_labels
from fusekit.task_kinds import TaskKind, kind_from_ending

if TYPE_CHECKING:
    from fusekit.data.features import EncodingReport


@dataclass
class ModelInfo:
    """What a model file says about itself."""

    path: Path
    inputs: list[str]
    outputs: list[str]
    spec_json: str | None
    metadata: dict[str, str]
    endings: dict = None  # output -> fusekit.onnxio.endings.Ending
    input_specs: list = None  # fusekit.decompose.manifest.InputSpec per input (shape with 'batch')

    def kinds(self, labels: dict[str, np.ndarray] | None = None,
              overrides: dict[str, str] | None = None) -> dict[str, TaskKind]:
        """Each output's task kind: the fused file's record, else detected from how the output
        ends (with the labels for an output without activation), ``overrides`` first."""
        from fusekit.decompose.manifest import KINDS_KEY

        recorded = json.loads(self.metadata[KINDS_KEY]) if KINDS_KEY in self.metadata else {}
        kinds = {}
        for name in self.outputs:
            if name in recorded and not (overrides and name in overrides):
                kinds[name] = TaskKind.from_dict(recorded[name])
                continue
            ending = self.endings[name]
            kinds[name] = kind_from_ending(ending.activation, ending.shape,
                                           labels=None if labels is None else labels.get(name),
                                           override=(overrides or {}).get(name), where=f"{self.path} (output {name})")
        return kinds


def model_info(path: Path) -> ModelInfo:
    """Inputs, outputs and fusekit metadata of an ONNX file (weights not loaded)."""
    import onnx

    from fusekit.onnxio.endings import output_endings

    path = Path(path)
    if not path.is_file():
        raise FusekitError(f"model file {path} does not exist; check the path")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise FusekitError(f"{path} is not a readable ONNX model ({type(exc).__name__}); check the file") from None
    inits = {i.name for i in proto.graph.initializer}
    meta = {p.key: p.value for p in proto.metadata_props}
    specs = [_input_spec(v) for v in proto.graph.input if v.name not in inits]
    return ModelInfo(path, [i.name for i in proto.graph.input if i.name not in inits],
                     [o.name for o in proto.graph.output], meta.get("fusekit.feature_spec"), meta,
                     output_endings(proto), specs)


def _input_spec(value):
    """An ONNX graph input as decompose records one: the first dim ``batch``, others as given."""
    from fusekit.decompose.graph import dtype_name
    from fusekit.decompose.manifest import InputSpec

    tensor = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
    return InputSpec(value.name, ["batch", *dims[1:]] if dims else [], dtype_name(tensor.elem_type))


def _check_batch_size(batch_size: object, owner: str) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FusekitError(f"{{batch_size}} must be a whole number of at least 1, got {batch_size!r}", owner=owner)


@dataclass
class EvalResult:
    """Per-task metrics of one model on one split, and which execution provider ran it.

    ``scores``: per task its kind's score (AUC, accuracy, R²); ``metrics``: every metric of the kind."""

    scores: dict[str, float]
    metrics: dict[str, dict[str, float]]
    kinds: dict[str, TaskKind]
    provider: str
    rows: int
    split: str
    reading: dict | None = None  # how each split was read (held or streamed, and why); None for a loaded dataset


def _spec(info: ModelInfo):
    from fusekit.data.features import FeatureSpec

    return FeatureSpec.from_json(info.spec_json) if info.spec_json else None


def evaluate_onnx(model_path: Path, data, *, labels: dict[str, str] | None = None, split: str = "test",
                  device: str = "auto", batch_size: int = 65536, data_dir: Path | None = None,
                  seed: int = 0, max_rows: int | None = None,
                  task_kinds: dict[str, str] | None = None, val: Path | None = None,
                  test: Path | None = None, threads: int | None = None, streaming=None) -> EvalResult:
    """Metrics per output of ``model_path`` on ``split`` of ``data`` (``census-income``, a CSV/Parquet
    path or a loaded TabularDataset): encoded with the model's own feature specification when it
    carries one, else read from columns/arrays named after its inputs and fed as they are
    (``val``/``test`` files, or one seeded split of ``data``, as fuse makes it).

    Each output's kind is the fused file's record or detected from how it ends (``task_kinds``
    overrides: output -> kind). ``threads``: onnxruntime's threads (None: :func:`fusekit.threads.thread_count`).
    ``streaming`` (``fusekit.stream_config.StreamOptions``): whether data files are held in memory or
    read in batches (default: by the memory budget), as fuse reads them."""
    from fusekit.data.registry import load_for_models
    from fusekit.onnxio.sessions import run, session
    from fusekit.threads import thread_count

    threads = thread_count(threads)  # a bad count is refused before the data is read

    _check_batch_size(batch_size, "evaluate_onnx()")
    info = model_info(model_path)
    spec = _spec(info)
    tasks = list(info.outputs)
    if isinstance(data, (str, Path)):
        early = info.kinds(None, task_kinds)  # how to read the labels (see fusion/fuse.py prepare)
        ds = load_for_models(data, early, inputs=info.input_specs, spec=spec, labels=labels, val=val, test=test,
                             data_dir=data_dir, seed=seed, streaming=streaming)
    else:
        ds = data
    if split not in ("train", "val", "test"):
        raise FusekitError(f"unknown split {split!r}; use train, val or test")
    rows = getattr(ds, split)
    if max_rows is not None and len(rows) > max_rows:
        rows = rows.sample(max_rows, seed)
    missing = [t for t in tasks if t not in rows.labels]
    if missing:
        raise FusekitError(f"the data has no label for output(s) {literal(', '.join(missing))}; name the label "
                           "column of each in {labels}", owner="evaluate_onnx()")
    kinds = info.kinds(rows.labels, task_kinds)
    sess, provider = session(model_path, device, threads)
    if hasattr(rows, "batches"):  # a training file read in batches (fusekit.data.batches.StreamedSplit)
        parts = [run(sess, inputs, batch_size) for inputs, _ in rows.batches(batch_size)]
        outputs = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
    else:
        outputs = run(sess, rows, batch_size)
    metrics = {t: kinds[t].metrics(parse_labels(rows.labels[t], kinds[t], where=f"the labels of {t}"), outputs[t])
               for t in tasks}
    return EvalResult({t: m[kinds[t].score_name] for t, m in metrics.items()}, metrics, kinds, provider, len(rows),
                      split, dict(getattr(ds, "reading", None) or {}) or None)


def read_inputs(info: ModelInfo, input_path: Path) -> tuple[dict[str, np.ndarray], int, "EncodingReport | None"]:
    """Model inputs from a raw CSV/Parquet file encoded with the model's spec, or, for a model
    without one (and for any ``.npz``), the columns/arrays named after its inputs, fed as they are;
    with the encoding's report of unseen values per column (None when nothing was encoded)."""
    input_path = Path(input_path)
    spec = _spec(info)
    if spec is None or input_path.suffix.lower() == ".npz":
        from fusekit.data.named import read_named

        read = read_named(input_path, info.input_specs)
        return read.inputs, read.rows, None
    from fusekit.data.tabular import read_table

    frame = read_table(input_path)
    cat, dense, report = spec.encode_with_report(frame, str(input_path))
    return {"categorical": cat, "dense": dense}, len(frame), report


@dataclass
class Prediction:
    """What ``predict_onnx`` wrote: rows, the execution provider, and how raw values were encoded
    (``EncodingReport``: unseen values per column; None for already encoded inputs)."""

    rows: int
    provider: str
    encoding: "EncodingReport | None"


@holds_output("out_csv")
def predict_onnx(model_path: Path, input_path: Path, out_csv: Path, *, device: str = "auto",
                 batch_size: int = 65536, force: bool = False, threads: int | None = None) -> Prediction:
    """Write every model output for every input row: a ``.parquet`` file (an output of several
    values per row, such as class probabilities, as a list column) or a CSV (such an output as
    columns ``name[0]..name[K-1]``, the convention fusekit reads inputs by). CSV and Parquet inputs
    are read, encoded, predicted and written one record batch at a time (``input_chunks``), so
    memory does not grow with the rows.
    ``threads``: onnxruntime's threads (None: :func:`fusekit.threads.thread_count`)."""
    from fusekit.onnxio.sessions import run, session
    from fusekit.threads import thread_count

    threads = thread_count(threads)

    _check_batch_size(batch_size, "predict_onnx()")
    out_csv = Path(out_csv)
    check_output_paths(out_csv, [model_path, input_path], owner="predict_onnx()", argument="out_csv")
    if out_csv.exists() and not force:
        raise FusekitError(f"{literal(out_csv)} exists; choose another {{out_csv}} or pass {{force=True}}",
                           owner="predict_onnx()")
    info = model_info(model_path)
    chunks = input_chunks(info, input_path)
    first = next(chunks)  # the input is read (and refused if bad) before a session is made
    sess, provider = session(model_path, device, threads)
    parquet = out_csv.suffix.lower() in (".parquet", ".pq")
    rows, reports, writer = 0, [], None
    with atomic_file(out_csv) as tmp:
        try:
            for arrays, n, report in _chained(first, chunks):
                frame = _output_frame(run(sess, arrays, batch_size), n, parquet)
                if parquet:
                    import pyarrow as pa
                    import pyarrow.parquet as pq

                    table = pa.Table.from_pandas(frame, preserve_index=False)
                    writer = writer or pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
                else:
                    frame.to_csv(tmp, index=False, float_format="%.8g", mode="w" if rows == 0 else "a",
                                 header=rows == 0)
                rows += n
                reports.append(report)
        finally:
            if writer is not None:
                writer.close()
    return Prediction(rows, provider, _merged(reports))


def _chained(first, rest):
    yield first
    yield from rest


def _output_frame(outputs: dict[str, np.ndarray], n: int, parquet: bool) -> pd.DataFrame:
    """One batch of predictions as the output file's columns (see :func:`predict_onnx`)."""
    columns: dict[str, object] = {}
    for name, value in outputs.items():
        rows = np.asarray(value).reshape(n, -1)
        if rows.shape[1] == 1:
            columns[name] = rows[:, 0]
        elif parquet:
            columns[name] = list(rows)
        else:
            columns.update({f"{name}[{k}]": rows[:, k] for k in range(rows.shape[1])})
    return pd.DataFrame(columns)


def input_chunks(info: ModelInfo, input_path: Path):
    """(model inputs, rows, encoding report or None) of each record batch of a CSV/Parquet file (or
    Parquet folder), read and encoded batch by batch as :func:`read_inputs` reads a whole file; a
    ``.npz`` archive, or a file the batch reader cannot open, in one piece through :func:`read_inputs`
    (which names what is wrong)."""
    from fusekit.data.batches import RowFile

    input_path = Path(input_path)
    spec = _spec(info)
    file = None
    if input_path.suffix.lower() != ".npz" and input_path.exists():
        try:
            file = RowFile(input_path)
            first = next(iter(file.chunks(file.columns)), None)
        except FusekitError:
            file = None
        if file is not None and (first is None or first[1].num_rows == 0):
            file = None  # no rows: the whole-file reader says so
    if file is None:
        yield read_inputs(info, input_path)
        return
    if spec is None:
        from fusekit.data.named import batch_table, read_table_named

        for _, table in file.chunks(file.columns):
            read = read_table_named(batch_table(table, file.path, file.kind), info.input_specs)
            yield read.inputs, read.rows, None
        return
    file.require(spec.columns, "the model's feature specification needs")
    for _, table in file.chunks(spec.columns):
        cat, dense, report = spec.encode_with_report(table.to_pandas(), str(input_path))
        yield {"categorical": cat, "dense": dense}, table.num_rows, report


def _merged(reports: list) -> "EncodingReport | None":
    """One report of every batch's (None when nothing was encoded)."""
    if not reports or reports[0] is None:
        return None
    from fusekit.data.features import EncodingReport

    return EncodingReport(sum(r.rows for r in reports),
                          {k: sum(r.unseen[k] for r in reports) for k in reports[0].unseen},
                          {k: sum(r.normalised[k] for r in reports) for k in reports[0].normalised})


def tasks_of(info: ModelInfo) -> list[str]:
    """The tasks a model serves (metadata when present, else its output names)."""
    from fusekit.decompose.manifest import tasks_in_metadata

    return tasks_in_metadata(info.metadata) or list(info.outputs)
