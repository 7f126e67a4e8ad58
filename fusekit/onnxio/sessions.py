"""The one onnxruntime session factory: providers always explicit, the one that runs reported."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fusekit.errors import FusekitError
from fusekit.threads import thread_count

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")
_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
           "tensor(double)": np.float64, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}


def session(model: Path | str | bytes | Any, device: str = "auto", threads: int | None = None, *,
            optimize: bool = True, quiet: bool = False):
    """Open ``model`` (a path, serialized bytes or a ModelProto) in onnxruntime.

    Returns ``(InferenceSession, provider that runs it)``. ``device``: ``auto`` (CUDA when
    onnxruntime has it, else CPU), ``cuda`` or ``cpu``. The providers are always passed
    explicitly, and the one onnxruntime actually registered first is reported (a CUDA provider
    that fails to load falls back to CPU, and we say so). ``optimize=False`` runs the graph op by
    op as the file says (and loads faster); ``quiet`` hides onnxruntime's warnings. ``threads``:
    onnxruntime's intra-op threads (inter-op 1); None takes the process's count
    (:func:`fusekit.threads.thread_count`: the one applied, else the default rule).
    """
    import onnxruntime as ort

    if device not in DEVICES:
        raise FusekitError(f"unknown device {device!r}; use auto, cpu or cuda")
    if isinstance(model, (str, Path)):
        path = Path(model)
        if not path.is_file():
            raise FusekitError(f"model file {path} does not exist; check the path")
        source: str | bytes = str(path)
        where = str(path)
    elif isinstance(model, bytes):
        source, where = model, "the model"
    else:
        source, where = model.SerializeToString(), "the model"
    available = ort.get_available_providers()
    if device == "cuda" and CUDA not in available:
        raise FusekitError("device cuda was asked for but this onnxruntime has no CUDA provider; "
                           "install onnxruntime-gpu (see the README) or use device cpu")
    providers = [CUDA, CPU] if device in ("auto", "cuda") and CUDA in available else [CPU]
    options = ort.SessionOptions()
    options.intra_op_num_threads = thread_count(threads)
    options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if quiet:
        options.log_severity_level = 3
    try:
        sess = ort.InferenceSession(source, sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own exception types for a bad file
        raise FusekitError(f"onnxruntime cannot load {where}: {str(exc).splitlines()[0]}") from exc
    used = sess.get_providers()[0]
    if device == "cuda" and used != CUDA:
        raise FusekitError(f"onnxruntime could not start CUDA for {where} (it fell back to {used}); "
                           "check the CUDA/cuDNN installation or use device cpu")
    return sess, used


def run(sess, data: Mapping[str, np.ndarray] | Any, batch_size: int = 65536) -> dict[str, np.ndarray]:
    """Run ``sess`` over every row of ``data`` (arrays by input name, or anything with ``arrays()``)
    in batches; outputs by name, concatenated."""
    arrays = dict(data) if isinstance(data, Mapping) else dict(data.arrays())
    feeds_meta = sess.get_inputs()
    missing = [i.name for i in feeds_meta if i.name not in arrays]
    if missing:
        raise FusekitError(f"the model needs input(s) {', '.join(missing)} that the data does not provide")
    feeds = {i.name: np.ascontiguousarray(arrays[i.name], dtype=_DTYPES.get(i.type, None)) for i in feeds_meta}
    n = len(next(iter(feeds.values())))
    names = [o.name for o in sess.get_outputs()]
    chunks: dict[str, list[np.ndarray]] = {name: [] for name in names}
    for start in range(0, max(n, 1), batch_size):
        batch = {k: v[start:start + batch_size] for k, v in feeds.items()}
        for name, out in zip(names, sess.run(names, batch)):
            chunks[name].append(out)
    return {name: np.concatenate(v) for name, v in chunks.items()}
