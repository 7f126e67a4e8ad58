"""fused.onnx: the fused torch model through fusekit's one export path, checked on the test data."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from fusekit.decompose.manifest import KINDS_KEY, TASKS_KEY
from fusekit.errors import FusekitError
from fusekit.fusion.finetune import deployable_copy
from fusekit.fusion.model import FusedModel, DeployedOutputs
from fusekit.onnxio.export import export_onnx, max_abs_diff, torch_outputs


def export_fused(model: FusedModel, path: Path, example: tuple[torch.Tensor, ...],
                 metadata: dict[str, str] | None = None,
                 dynamic_axes: list[dict[int, str]] | None = None) -> Path:
    """Write ``model`` as ONNX: inputs named as the sources', one output per task of the kind and
    shape its sources give.

    The batch dimension is dynamic (named ``batch``), and so is every other axis of
    ``dynamic_axes`` (per input, as :meth:`InputSpec.dynamic_axes` gives them). ``metadata`` entries are added to the
    file's metadata_props next to ``fusekit.tasks``, ``fusekit.task_kinds`` and ``fusekit.version``.
    """
    model = deployable_copy(model.cpu().eval()).eval()
    meta = {TASKS_KEY: json.dumps(model.task_names), KINDS_KEY: json.dumps(
        {t: k.to_dict() for t, k in model.task_kinds.items()}), **(metadata or {})}
    inputs = ", ".join(model.input_names)
    outputs = ", ".join(f"{t}: {k.describe()}" for t, k in model.task_kinds.items())
    doc = (f"fusekit fused multi-task model (EMM, {model.options.mode} mode) over source models "
           f"{', '.join(model.model_names)}: inputs {inputs}; one output per task ({outputs}).")
    return export_onnx(DeployedOutputs(model).eval(), Path(path), example, model.input_names, model.task_names,
                       meta, doc, serving=True, compare_as=[model.task_kinds[t].probabilities for t in model.task_names],
                       dynamic_axes=dynamic_axes)


def check_parity(model: FusedModel, onnx_path: Path, data, tol: float = 1e-5, batch_size: int = 8192) -> float:
    """Max abs difference of the outputs between torch and onnxruntime on ``data`` (arrays by input
    name, or a split, held or streamed). Raises FusekitError above ``tol``.
    """
    return parity_and_outputs(model, onnx_path, data, tol, batch_size)[0]


def parity_and_outputs(model: FusedModel, onnx_path: Path, data, tol: float = 1e-5,
                       batch_size: int = 8192) -> tuple[float, dict[str, np.ndarray]]:
    """:func:`check_parity`, also returning onnxruntime's outputs per task (what deployment sees).

    Compared batch by batch, so a split read from its file is never held whole; only the outputs are."""
    from fusekit.onnxio.sessions import run, session

    sess, _ = session(onnx_path, device="cpu", quiet=True)
    model = model.cpu().eval()
    deployed = DeployedOutputs(model)
    kinds = [model.task_kinds[t] for t in model.task_names]
    batches = ({n: a[start:start + batch_size] for n, a in data.items()} for start in range(0, max(_rows(data), 1), batch_size)) \
        if isinstance(data, dict) else data.input_batches(batch_size)
    worst, got = 0.0, {t: [] for t in model.task_names}
    for batch in batches:
        ran = run(sess, batch, batch_size)
        expected = torch_outputs(deployed, [batch[n] for n in model.input_names], batch_size)
        # Compared in mix space (probabilities, values): see export_onnx's ``compare_as``.
        worst = max(worst, max_abs_diff([k.probabilities(e) for k, e in zip(kinds, expected)],
                                        [k.probabilities(ran[t]) for k, t in zip(kinds, model.task_names)]))
        for t in model.task_names:
            got[t].append(ran[t])
    if not worst <= tol:
        raise FusekitError(f"fused.onnx differs from the torch model by {worst:.2e} (> {tol:.0e}) on the test data; "
                           "this is a fusekit bug, please report it")
    return worst, {t: np.concatenate(v) for t, v in got.items()}


def _rows(arrays: dict[str, np.ndarray]) -> int:
    return len(next(iter(arrays.values()))) if arrays else 0
