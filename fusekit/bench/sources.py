"""The source (single-task) models of a benchmark: find them, read their specification, score them."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusekit.data.dataset import Split
from fusekit.errors import FusekitError


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
        raise FusekitError(f"source model folder {models_dir} does not exist; make the sample models "
                           "(see sample_models/README.md) or pass --models DIR")
    found: list[SourceModel] = []
    for path in sorted(models_dir.glob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in model.metadata_props}
        task = meta.get("fusekit.task")
        if task in tasks:
            found.append(SourceModel(path.stem, task, path.resolve(), _onnx_parameters(model),
                                     meta.get("fusekit.feature_spec")))
    found.sort(key=lambda s: (tasks.index(s.task), s.name))
    lacking = [t for t in tasks if not any(s.task == t for s in found)]
    if lacking:
        raise FusekitError(f"{models_dir} has no single-task model for task(s) {', '.join(lacking)} "
                           "(models carry their task in the fusekit.task metadata); pass --models DIR")
    return found


def shared_spec(sources: list[SourceModel]):
    """The feature specification all sources carry (None when none does); FusekitError on a mismatch."""
    from fusekit.data.features import FeatureSpec

    specs = [(s.name, FeatureSpec.from_json(s.spec_json)) for s in sources if s.spec_json]
    if not specs:
        return None
    if len(specs) != len(sources):
        raise FusekitError("some source models carry no feature specification; benchmark models exported by fusekit")
    first_name, first = specs[0]
    for name, spec in specs[1:]:
        if spec.fingerprint() != first.fingerprint():
            raise FusekitError(f"source models {first_name} and {name} encode their inputs differently; "
                               "benchmark models trained on one encoding")
    return first


def onnx_probabilities(path: Path, split: Split, tasks: list[str]) -> dict[str, np.ndarray]:
    """Probabilities per task (outputs named after tasks) of the ONNX model at ``path`` on ``split``."""
    from fusekit.onnxio.sessions import run, session

    sess, _ = session(path, device="cpu", threads=1)
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
    """JSON-ready list of the sources."""
    return [{"name": s.name, "task": s.task, "path": str(s.path), "parameters": s.parameters} for s in sources]


__all__ = ["SourceModel", "find_sources", "shared_spec", "onnx_probabilities",
           "spec_summary", "describe"]
