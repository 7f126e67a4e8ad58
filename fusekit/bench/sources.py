"""The source (single-task) models of a benchmark: find them, read their specification, score them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusekit.data.dataset import Split
from fusekit.decompose.manifest import SPEC_KEY, group_by_task, shared_feature_spec, task_of
from fusekit.errors import FusekitError
from fusekit.options import literal


@dataclass
class SourceModel:
    """One trained single-task ONNX model: its name (file stem), task, path and parameter count."""

    name: str
    task: str
    path: Path
    parameters: int
    spec_json: str | None


def _onnx_parameters(model) -> int:
    """Elements of all initializers: the weights an ONNX model carries."""
    return int(sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer))


def find_sources(models_dir: Path, tasks: list[str]) -> list[SourceModel]:
    """Every ``*.onnx`` in ``models_dir`` whose ``fusekit.task`` is one of ``tasks``, in task order then by name.

    FusekitError when the folder is missing or a task has no model.
    """
    import onnx

    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise FusekitError(f"source model folder {literal(models_dir)} does not exist; make the sample models "
                           "(see sample_models/README.md) or give a folder of models in {models_dir}",
                           owner="run_bench()")
    found: dict[str, SourceModel] = {}
    for path in sorted(models_dir.glob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in model.metadata_props}
        found[path.stem] = SourceModel(path.stem, task_of(meta) or "", path.resolve(), _onnx_parameters(model),
                                       meta.get(SPEC_KEY))
    groups = group_by_task(((s.name, s.task) for s in found.values()), tasks, where=str(models_dir))
    return [found[name] for names in groups.values() for name in names]


def shared_spec(sources: list[SourceModel]):
    """The feature specification all sources carry (None when none does); FusekitError on a mismatch."""
    return shared_feature_spec([(s.name, s.spec_json) for s in sources])


def onnx_probabilities(path: Path, split: Split, tasks: list[str]) -> dict[str, np.ndarray]:
    """Probabilities per task (outputs named after tasks) of the ONNX model at ``path`` on ``split``."""
    from fusekit.onnxio.sessions import run, session

    sess, _ = session(path, device="cpu")
    outputs = run(sess, split)
    missing = [t for t in tasks if t not in outputs]
    if missing:
        raise FusekitError(f"{path} has no output named {', '.join(missing)}; its outputs are {', '.join(outputs)}")
    return {t: np.asarray(outputs[t], dtype=np.float64).reshape(-1) for t in tasks}


def spec_summary(spec) -> dict | None:
    """Small JSON-ready description of a feature specification (for the results file)."""
    if spec is None:
        return None
    return {"categorical": len(spec.categorical), "dense": len(spec.dense),
            "excluded": list(spec.excluded), "holdout": spec.holdout, "fingerprint": spec.fingerprint()}


def describe(sources: list[SourceModel]) -> list[dict]:
    """JSON-ready list of the sources (paths relative to the working directory)."""
    from fusekit.io import portable_path

    return [{"name": s.name, "task": s.task, "path": portable_path(s.path), "parameters": s.parameters}
            for s in sources]


__all__ = ["SourceModel", "find_sources", "shared_spec", "onnx_probabilities",
           "spec_summary", "describe"]
