"""Fused torch model -> one ONNX file (dynamo exporter), checked against torch in onnxruntime."""
from __future__ import annotations

import contextlib
import json
import logging
import warnings
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from . import __version__
from .errors import FusekitError
from .io import atomic_file
from .model import FusedModel, ProbabilityOutputs, deployable_copy
from .optimize import optimize_for_serving

OPSET = 18


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the dynamo exporter's progress lines and its warnings about absent torchvision ops."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)

def export_fused(model: FusedModel, path: Path, example: tuple[torch.Tensor, ...],
                 metadata: dict[str, str] | None = None) -> Path:
    """Write ``model`` as ONNX: inputs named as the sources', one probability output per task.

    The batch dimension is dynamic (named ``batch``). ``metadata`` entries are added to the
    file's metadata_props next to ``fusekit.tasks`` and ``fusekit.version``.
    """
    import onnx

    model = deployable_copy(model.cpu().eval()).eval()
    wrapper = ProbabilityOutputs(model).eval()
    example = tuple(t[:2].cpu() if t.shape[0] >= 2 else torch.cat([t, t]).cpu() for t in example)
    batch = torch.export.Dim("batch")
    # forward(*inputs): torch.export sees the varargs as one argument named "inputs".
    dynamic = {"inputs": tuple({0: batch} for _ in example)}
    try:
        with quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(wrapper, example, dynamo=True, opset_version=OPSET,
                                        input_names=list(model.input_names), output_names=list(model.task_names),
                                        dynamic_shapes=dynamic, verbose=False, optimize=True)
    except Exception as exc:
        raise FusekitError(f"exporting the fused model to ONNX failed: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0] if str(exc) else ''}") from exc
    proto = program.model_proto
    optimize_for_serving(proto)
    props = {"fusekit.tasks": json.dumps(model.task_names), "fusekit.version": __version__}
    props.update(metadata or {})
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "fusekit"
    proto.producer_version = __version__
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:
        raise FusekitError(f"the exported fused model fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    path = Path(path)
    with atomic_file(path) as tmp:
        onnx.save_model(proto, str(tmp))
    return path


def check_parity(model: FusedModel, onnx_path: Path, arrays: dict[str, np.ndarray], tol: float = 1e-5,
                 batch_size: int = 8192) -> float:
    """Max abs difference of probabilities between torch and onnxruntime on ``arrays``.

    Raises FusekitError above ``tol``.
    """
    return parity_and_outputs(model, onnx_path, arrays, tol, batch_size)[0]


def parity_and_outputs(model: FusedModel, onnx_path: Path, arrays: dict[str, np.ndarray], tol: float = 1e-5,
                       batch_size: int = 8192) -> tuple[float, dict[str, np.ndarray]]:
    """:func:`check_parity`, also returning onnxruntime's probabilities per task (what deployment sees)."""
    from .runtime import run, session

    sess, _ = session(onnx_path, device="cpu")
    got = run(sess, arrays, batch_size)
    model = model.cpu().eval()
    wrapper = ProbabilityOutputs(model)
    inputs = [torch.as_tensor(arrays[name]) for name in model.input_names]
    n = len(inputs[0])
    worst = 0.0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            outs = wrapper(*[t[start:start + batch_size] for t in inputs])
            for task, out in zip(model.task_names, outs):
                diff = np.abs(out.numpy() - got[task][start:start + batch_size]).max(initial=0.0)
                worst = max(worst, float(diff))
    if not worst <= tol:
        raise FusekitError(f"fused.onnx differs from the torch model by {worst:.2e} (> {tol:.0e}) on the test data; "
                           "this is a fusekit bug, please report it")
    return worst, {task: got[task] for task in model.task_names}
