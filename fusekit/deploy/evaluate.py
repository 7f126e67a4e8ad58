"""Evaluate or apply any fusekit ONNX model (a source model or a fused one) with onnxruntime."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fusekit.errors import FusekitError
from fusekit.io import atomic_file, check_output_paths
from fusekit.locks import holds_output
from fusekit.metrics import roc_auc
from fusekit.options import literal


@dataclass
class ModelInfo:
    """What a model file says about itself."""

    path: Path
    inputs: list[str]
    outputs: list[str]
    spec_json: str | None
    metadata: dict[str, str]


def model_info(path: Path) -> ModelInfo:
    """Inputs, outputs and fusekit metadata of an ONNX file (weights not loaded)."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FusekitError(f"model file {path} does not exist; check the path")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise FusekitError(f"{path} is not a readable ONNX model ({type(exc).__name__}); check the file") from None
    inits = {i.name for i in proto.graph.initializer}
    meta = {p.key: p.value for p in proto.metadata_props}
    return ModelInfo(path, [i.name for i in proto.graph.input if i.name not in inits],
                     [o.name for o in proto.graph.output], meta.get("fusekit.feature_spec"), meta)


def _check_batch_size(batch_size: object, owner: str) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise FusekitError(f"{{batch_size}} must be a whole number of at least 1, got {batch_size!r}", owner=owner)


@dataclass
class EvalResult:
    """Per-task AUC of one model on one split, and which execution provider ran it."""

    auc: dict[str, float]
    provider: str
    rows: int
    split: str


def _spec(info: ModelInfo):
    from fusekit.data.features import FeatureSpec

    return FeatureSpec.from_json(info.spec_json) if info.spec_json else None


def evaluate_onnx(model_path: Path, data, *, labels: dict[str, str] | None = None, split: str = "test",
                  device: str = "auto", batch_size: int = 65536, data_dir: Path | None = None,
                  seed: int = 0, max_rows: int | None = None) -> EvalResult:
    """AUC per output of ``model_path`` on ``split`` of ``data`` (``census-income``, a CSV/Parquet
    path or a loaded TabularDataset), encoded with the model's own feature specification."""
    from fusekit.data import load_dataset
    from fusekit.onnxio.sessions import run, session

    _check_batch_size(batch_size, "evaluate_onnx()")
    info = model_info(model_path)
    spec = _spec(info)
    tasks = list(info.outputs)
    if isinstance(data, (str, Path)):
        if spec is None:
            raise FusekitError(f"{model_path} carries no fusekit feature specification, so fusekit cannot encode "
                               f"{data} for it; evaluate models exported by fusekit")
        ds = load_dataset(data, tasks, labels=labels, spec=spec, data_dir=data_dir, seed=seed)
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
    sess, provider = session(model_path, device)
    probs = run(sess, rows, batch_size)
    return EvalResult({t: roc_auc(rows.labels[t], probs[t].reshape(-1)) for t in tasks}, provider, len(rows), split)


def read_inputs(info: ModelInfo, input_path: Path) -> tuple[dict[str, np.ndarray], int]:
    """Model inputs from a raw CSV/Parquet file (encoded with the model's spec) or an .npz of encoded arrays."""
    input_path = Path(input_path)
    if input_path.suffix.lower() == ".npz":
        if not input_path.is_file():
            raise FusekitError(f"input file {input_path} does not exist; check the path")
        with np.load(input_path) as npz:
            arrays = {k: npz[k] for k in npz.files}
        missing = [i for i in info.inputs if i not in arrays]
        if missing:
            raise FusekitError(f"{input_path} lacks array(s) {', '.join(missing)} that the model takes")
        return arrays, len(arrays[info.inputs[0]])
    from fusekit.data.tabular import read_table

    spec = _spec(info)
    if spec is None:
        raise FusekitError(f"{info.path} carries no feature specification; pass already encoded inputs as an .npz "
                           f"with arrays named {', '.join(info.inputs)}")
    frame = read_table(input_path)
    cat, dense = spec.encode(frame, str(input_path))
    return {"categorical": cat, "dense": dense}, len(frame)


@holds_output("out_csv")
def predict_onnx(model_path: Path, input_path: Path, out_csv: Path, *, device: str = "auto",
                 batch_size: int = 65536, force: bool = False) -> tuple[int, str]:
    """Write one column per model output (probabilities) for every input row; returns (rows, provider)."""
    from fusekit.onnxio.sessions import run, session

    _check_batch_size(batch_size, "predict_onnx()")
    out_csv = Path(out_csv)
    check_output_paths(out_csv, [model_path, input_path], owner="predict_onnx()", argument="out_csv")
    if out_csv.exists() and not force:
        raise FusekitError(f"{literal(out_csv)} exists; choose another {{out_csv}} or pass {{force=True}}",
                           owner="predict_onnx()")
    info = model_info(model_path)
    arrays, n = read_inputs(info, input_path)
    sess, provider = session(model_path, device)
    outputs = run(sess, arrays, batch_size)
    frame = pd.DataFrame({name: np.asarray(v).reshape(n, -1)[:, 0] if np.asarray(v).size == n else
                          list(np.asarray(v).reshape(n, -1)) for name, v in outputs.items()})
    with atomic_file(out_csv) as tmp:
        frame.to_csv(tmp, index=False, float_format="%.8g")
    return n, provider


def tasks_of(info: ModelInfo) -> list[str]:
    """The tasks a model serves (metadata when present, else its output names)."""
    from fusekit.decompose.manifest import tasks_in_metadata

    return tasks_in_metadata(info.metadata) or list(info.outputs)
